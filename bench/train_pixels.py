"""A large picture to its training bucket, side by side: the studio's path (`blk.train.pixels.bucket_pixels`: a
whole-factor box reduction first, then Lanczos) against the whole picture in float, then Lanczos (what it did
before). Per row: seconds, the child process's peak resident memory over the picture's own (VmHWM), and the
mean and 99.9th-percentile difference in 8-bit levels (premultiplied, what the VAE sees).

    python bench/train_pixels.py                          # 24 and 48 MP photograph-like pictures, 1152×896 bucket
    python bench/train_pixels.py --sizes 8000x6000 --bucket 1024x1024

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


def picture(width: int, height: int):
    """Smooth shapes with grain, as a scan has (built row by row: the picture is the only large thing held)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    x = np.arange(width) / max(width, height)
    rows = np.empty((height, width, 3), np.uint8)
    for y0 in range(0, height, 512):
        y = (np.arange(y0, min(height, y0 + 512)) / max(width, height))[:, None]
        planes = [np.sin(x * (5 + c) + y * (3 - c)) * 0.35 + 0.5 for c in range(3)]
        grain = rng.normal(0, 0.05, (len(y), width))
        rows[y0:y0 + len(y)] = (np.clip(np.stack(planes, -1) + grain[..., None], 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(rows)


def one(method: str, width: int, height: int, bucket_w: int, bucket_h: int, result: str) -> dict:
    from blk.stencil import ops
    from blk.train.pixels import _centred_box, bucket_pixels

    image = picture(width, height)
    before = peak_rss_mb()
    started = time.perf_counter()
    if method == "studio":
        out = bucket_pixels(image, bucket_w, bucket_h)
    else:
        box = _centred_box(image.size, bucket_w, bucket_h)
        out = ops.resize(ops.image_to_array(image), bucket_w, bucket_h, box=box)
    seconds = time.perf_counter() - started
    np.save(result, ops.premultiply(out))
    return {"seconds": seconds, "peak_mb": peak_rss_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["6000x4000", "8000x6000"])
    parser.add_argument("--bucket", default="1152x896")
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, *numbers, result = args.one
        print(json.dumps(one(method, *map(int, numbers), result)))
        return
    bucket = [int(n) for n in args.bucket.split("x")]
    print(f"{'picture':>11} → {args.bucket} | {'studio s':>8} {'float s':>8} {'time ×':>6} | {'studio MB':>9} "
          f"{'float MB':>8} {'memory ×':>8} | {'mean Δ':>7} {'p99.9 Δ':>8} (8-bit levels)")
    for size in args.sizes:
        width, height = (int(n) for n in size.split("x"))
        rows, results = {}, {}
        with tempfile.TemporaryDirectory(prefix="blk-bench-train-pixels-") as folder:
            for method in ("studio", "float"):
                result = str(Path(folder) / f"{method}.npy")
                command = [sys.executable, __file__, "--one", method, str(width), str(height), *map(str, bucket),
                           result]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                rows[method], results[method] = json.loads(out.stdout.strip().splitlines()[-1]), np.load(result)
        difference = np.abs(results["studio"] - results["float"])[..., :3] * 255
        s, f = rows["studio"], rows["float"]
        print(f"{size:>11} → {args.bucket} | {s['seconds']:>8.2f} {f['seconds']:>8.2f} "
              f"{f['seconds'] / s['seconds']:>6.1f} | "
              f"{s['peak_mb']:>9.0f} {f['peak_mb']:>8.0f} {f['peak_mb'] / max(s['peak_mb'], 1):>8.1f} | "
              f"{difference.mean():>7.2f} {np.percentile(difference, 99.9):>8.2f}")


if __name__ == "__main__":
    main()
