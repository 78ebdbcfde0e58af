"""The Upscale path's last enlargement, side by side: the studio's centre-aligned Lanczos in bands of rows
(`blk.upscale.esrgan.resample`) against libvips' `resize` (what it used before: a bicubic affine when enlarging,
half an output pixel off centre). Per row: seconds, the child process's peak resident memory (VmHWM), and how far
the result is from flip-symmetric (max |resample(flip(x)) − flip(resample(x))| in 16-bit levels: 0 for a
centre-aligned resampler).

    python bench/resample.py                      # 2048² and 4096² inputs, RGB and RGBA, ×1.5
    python bench/resample.py --sizes 1024 --scale 3

Each measurement runs in a fresh process, so each peak is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.process_memory import peak_rss_mb  # noqa: E402


def one(method: str, side: int, channels: int, scale: float) -> dict:
    """Enlarge a noise canvas once (timed) and its mirror image once (for the symmetry figure)."""
    from blk.upscale.canvas import Canvas
    from blk.upscale.esrgan import _vips_shrink, resample

    enlarge = resample if method == "studio" else _vips_shrink
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (side, side, channels), dtype=np.uint16)
    width = height = int(side * scale + 0.5)
    with tempfile.TemporaryDirectory(prefix="blk-bench-resample-") as folder:
        folder = Path(folder)
        source = Canvas(folder / "in.canvas", side, side, channels)
        source.write_raw(0, 0, pixels)
        started = time.perf_counter()
        result = enlarge(source, width, height, folder / "out.canvas")
        seconds = time.perf_counter() - started
        mirrored = Canvas(folder / "flip.canvas", side, side, channels)
        mirrored.write_raw(0, 0, np.ascontiguousarray(pixels[:, ::-1]))
        flipped = enlarge(mirrored, width, height, folder / "flip-out.canvas")
        band = slice(0, min(height, 256))  # the first rows are enough to see a shift
        a = result.read_raw(0, band.start, width, band.stop).astype(np.int32)
        b = flipped.read_raw(0, band.start, width, band.stop)[:, ::-1].astype(np.int32)
        asymmetry = int(np.abs(a - b).max())
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "asymmetry": asymmetry}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--scale", type=float, default=1.5)
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "SIDE", "CHANNELS", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, side, channels, scale = args.one
        print(json.dumps(one(method, int(side), int(channels), float(scale))))
        return
    print(f"{'input':>12} {'ch':>3} | {'studio s':>9} {'libvips s':>9} {'time ×':>7} | {'studio MB':>9} "
          f"{'libvips MB':>10} | {'asym studio':>11} {'asym libvips':>12}")
    for side in args.sizes:
        for channels in (3, 4):
            rows = {}
            for method in ("studio", "libvips"):
                out = subprocess.run([sys.executable, __file__, "--one", method, str(side), str(channels),
                                      str(args.scale)], capture_output=True, text=True, check=True)
                rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
            s, v = rows["studio"], rows["libvips"]
            print(f"{side:>5}²×{args.scale:<5g} {channels:>3} | {s['seconds']:>9.2f} {v['seconds']:>9.2f} "
                  f"{s['seconds'] / v['seconds']:>7.2f} | {s['peak_mb']:>9.0f} {v['peak_mb']:>10.0f} | "
                  f"{s['asymmetry']:>11} {v['asymmetry']:>12}")


if __name__ == "__main__":
    main()
