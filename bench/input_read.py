"""Reading a large PNG input as the tiler does (rows of 512 px tiles, 32 px overlap), side by side: the studio's
stream (`blk.upscale.row_stream`: one sequential decode, nothing on disk) against libvips' region reader
(`source.VipsSource`, what every large PNG, JPEG and WebP used before; still used for a JPEG turned by its
EXIF). Per row: seconds, the child process's peak resident memory (VmHWM), and the most room the temporary
folder lost meanwhile (libvips' whole decode there, sampled every 20 ms).

    python bench/input_read.py                       # a 16000×12000 RGB PNG (192 MP, 576 MB decoded)
    python bench/input_read.py --size 8000x6000 --channels 4

Each measurement runs in a fresh process, so each peak is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.process_memory import peak_rss_mb  # noqa: E402


def make_png(path: Path, width: int, height: int, channels: int) -> None:
    """A PNG with structure (a coordinate pattern), saved fast: the read is measured, not the file."""
    from blk.vips import pyvips

    xyz = pyvips.Image.xyz(width, height)
    bands = [(xyz[0] * (3 + k) + xyz[1] * (5 + 2 * k)) % 251 for k in range(channels)]
    image = bands[0].bandjoin(bands[1:]).cast("uchar").copy(interpretation="srgb")
    image.pngsave(str(path), compression=1)


def one(method: str, path: str, tile: int, overlap: int) -> dict:
    from blk.upscale.source import VipsSource, open_input
    from blk.upscale.tiler import spans
    from blk.vips import pyvips

    temp = Path(os.environ.get("TMPDIR") or "/tmp")
    lowest, done = [shutil.disk_usage(temp).free], threading.Event()

    def sample() -> None:
        while not done.is_set():
            lowest[0] = min(lowest[0], shutil.disk_usage(temp).free)
            time.sleep(0.02)

    start_free = lowest[0]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    image = open_input(path, max_pixels=1000)
    if method == "region":
        image.source = VipsSource(pyvips.Image.new_from_file(path), Path(path).name)
    checksum = 0.0
    for row in spans(image.height, tile, overlap):
        for column in spans(image.width, tile, overlap):
            checksum += float(image.source.read(column.start, row.start, column.length, row.length)[0, 0, 0])
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "temp_mb": max(0, start_free - lowest[0]) / 2**20,
            "source": type(image.source).__name__, "checksum": round(checksum, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="16000x12000")
    parser.add_argument("--channels", type=int, default=3, choices=(3, 4))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: METHOD PATH in a fresh process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.tile, args.overlap)))
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="blk-bench-input-") as folder:
        path = Path(folder) / "wall.png"
        make_png(path, width, height, args.channels)
        print(f"{width}×{height} {'RGBA' if args.channels == 4 else 'RGB'} PNG, {path.stat().st_size / 2**20:.0f} MB "
              f"on disk, {width * height * args.channels / 2**20:.0f} MB decoded; tiles {args.tile} px, overlap "
              f"{args.overlap}")
        rows = {}
        for method in ("stream", "region"):
            done = subprocess.run([sys.executable, __file__, "--tile", str(args.tile), "--overlap", str(args.overlap),
                                   "--one", method, str(path)], capture_output=True, text=True, check=True)
            rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'reader':<22}{'s':>8}{'peak RSS MB':>14}{'temp MB':>10}")
    for method, row in rows.items():
        label = f"{method} ({row['source']})"
        print(f"{label:<22}{row['seconds']:>8.2f}{row['peak_mb']:>14.0f}{row['temp_mb']:>10.0f}")
    stream, region = rows["stream"], rows["region"]
    print(f"stream / region: time {stream['seconds'] / region['seconds']:.2f}×, peak RSS "
          f"{stream['peak_mb'] / region['peak_mb']:.2f}×; same pixels read: {stream['checksum'] == region['checksum']}")


if __name__ == "__main__":
    main()
