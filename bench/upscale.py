"""Upscale (Real-ESRGAN path) throughput and memory, side by side in one run.

    python bench/upscale.py                       (CPU: a tiny random RRDBNet, small sizes)
    python bench/upscale.py --model RealESRGAN_x4plus.pth --tiles 256 512 --sizes 4096 16384   (GPU)

Prints, through `blk.upscale.esrgan.run` (the whole job: read, tiles, canvas, TIFF write):
- output megapixels/s at two tile sizes, with batch 1 and batch 4 (same image, same weights);
- on a GPU, fp16 vs fp32 at the larger tile;
- peak RSS of a fresh process for two output sizes (each job in its own child process, so one
  peak does not hide the other): memory should stay flat as the output grows, because tiles
  stream into a canvas on disk.
Without --model, a random-weight RRDBNet with Real-ESRGAN's key names (16 features, 1 block, ×4)
stands in for the real one; the card (or "CPU") is printed beside every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline environment first)


def tiny_rrdb(path: Path, nf: int = 16, nb: int = 1, gc: int = 32) -> Path:
    import torch

    g = torch.Generator().manual_seed(0)
    state = {}

    def conv(name, cin, cout, gain=1.0):
        state[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (gain / (cin * 9) ** 0.5)
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.01

    conv("conv_first", 3, nf)
    for b in range(nb):
        for r in (1, 2, 3):
            for j in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{j}", nf + (j - 1) * gc, gc if j < 5 else nf)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", nf, 3, gain=0.5)
    torch.save({"params_ema": state}, path)
    return path


def make_input(path: Path, side: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = (rng.random((side // 8 + 1, side // 8 + 1, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(path)
    return path


def one_job(model: str, image: str, out: str, tile: int, batch: int, precision: str, device: str) -> dict:
    """Run one job in this process; return seconds, output pixels and this process's peak RSS."""
    import torch

    from blk.upscale.esrgan import EsrganJob, run

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    job = EsrganJob(Path(image), Path(out), Path(model), tile=tile, overlap=16, batch=batch, device=device,
                    precision=precision)
    result = run(job)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    Path(out).unlink(missing_ok=True)
    return {"seconds": result.seconds, "pixels": result.width * result.height, "tile": result.tile,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_child(**job) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="an upscaler file (default: a tiny random RRDBNet)")
    parser.add_argument("--input", type=int, default=None, help="input side for the speed rows (px)")
    parser.add_argument("--tiles", type=int, nargs=2, default=None, help="two tile sizes (input px)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[2048, 4096], help="two output sides for peak RSS")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_job(**json.loads(args.child))))
        return

    from blk.models.device import pick_device

    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    if gpu:
        import torch

        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({os.cpu_count()} cores)"
    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-upscale-"))
    model = Path(args.model) if args.model else tiny_rrdb(scratch / "tiny_rrdb_x4.pth")
    tiles = args.tiles or ([256, 512] if gpu else [64, 128])
    side = args.input or (1024 if gpu else 256)
    image = make_input(scratch / f"in{side}.png", side)
    out = str(scratch / "out.tif")
    base = {"model": str(model), "image": str(image), "out": out, "device": device}
    print(f"device: {card}; model: {model.name}; input {side}×{side} → ×4; overlap 16")

    one_job(**base, tile=tiles[0], batch=1, precision="fp32")  # untimed warm-up: imports, file cache, kernels
    print(f"\n{'tile':>5} {'batch':>5} {'precision':>9} {'MP/s':>8} {'s':>7}   ({card})")
    rows = [(t, b, "fp32") for t in tiles for b in (1, 4)]
    if gpu:
        rows += [(tiles[1], 4, "fp16")]
    for tile, batch, precision in rows:
        r = one_job(**base, tile=tile, batch=batch, precision=precision)
        print(f"{tile:>5} {batch:>5} {precision:>9} {r['pixels'] / 1e6 / r['seconds']:>8.2f} {r['seconds']:>7.2f}")

    print(f"\n{'output':>11} {'MP':>7} {'peak RSS MB':>12} {'s':>7}   (fresh process each; tile {tiles[1]}, batch 4; {card})")
    for size in args.sizes:
        big = make_input(scratch / f"in{size // 4}.png", size // 4)
        r = in_child(**(base | {"image": str(big)}), tile=tiles[1], batch=4, precision="auto" if gpu else "fp32")
        print(f"{size:>5}×{size:<5} {r['pixels'] / 1e6:>7.1f} {r['rss_mb']:>12.0f} {r['seconds']:>7.2f}")


if __name__ == "__main__":
    main()
