"""Saving a result as PNG: Pillow on one core against the studio's encoder on every core, side by side.

    python bench/png_save.py                 # 1 MP and 16 MP, a photograph and noise (what random weights draw)
    python bench/png_save.py --threads 1     # the studio's encoder on one core

Both at the studio's zlib level (`metadata.PNG_COMPRESS_LEVEL`), pixels only (no text chunks), in memory;
median of `--repeats` after one untimed call. Every output is decoded by Pillow and compared pixel for pixel.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline environment first)


def median_ms(make, repeats: int) -> tuple[float, bytes]:
    data = make()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = make()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, data


def main() -> None:
    import numpy as np
    from PIL import Image
    from skimage import data as samples

    from blk.generate.metadata import PNG_COMPRESS_LEVEL
    from blk.png_encoder import encode_png

    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="the studio's encoder threads (default: every core)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    rng = np.random.default_rng(0)
    print(f"zlib level {PNG_COMPRESS_LEVEL}; the studio's encoder on {threads} thread(s) of {os.cpu_count()} cores; "
          f"median of {args.repeats}")
    print(f"{'image':<24}{'Pillow ms':>10}{'MB':>8}{'ours ms':>9}{'MB':>8}{'Pillow/ours':>13}")
    for side in (1024, 4096):
        photo = np.asarray(Image.fromarray(samples.astronaut()).resize((side, side), Image.LANCZOS))
        noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        for name, pixels in (("photograph", photo), ("noise", noise)):
            def pillow(pixels=pixels):
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
                return buffer.getvalue()

            theirs, their_png = median_ms(pillow, args.repeats)
            ours, our_png = median_ms(lambda pixels=pixels: encode_png(pixels, "RGB", level=PNG_COMPRESS_LEVEL,
                                                                       threads=threads), args.repeats)
            with Image.open(io.BytesIO(our_png)) as back:
                assert np.array_equal(np.asarray(back), pixels), "the studio's PNG decodes to other pixels"
            print(f"{f'{name} {side}²':<24}{theirs:>10.0f}{len(their_png) / 1e6:>8.2f}{ours:>9.0f}"
                  f"{len(our_png) / 1e6:>8.2f}{theirs / ours:>12.2f}×")


if __name__ == "__main__":
    main()
