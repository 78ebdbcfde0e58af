"""Training speed and memory: seconds per step and peak memory, with and without cached latents.

    python bench/train.py [--model tiny-flux] [--steps 20] [--size 64]

Run it with the app's environment (`.venv/bin/python bench/train.py`). "Without caching" clears
the dataset's latent and text caches before the run, so every step encodes; "with" runs again
on the warm caches. On a GPU it reports peak GPU memory; on a CPU, peak resident memory. The GPU
comparison against diffusers' train_dreambooth_lora_flux.py (same model, data, settings) is to
be run on a GPU machine.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workspace", default=None, help="workspace with the model (default: a fresh one)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from blk.models.device import available_devices, describe
    from blk.train.config import TrainConfig
    from blk.train.runner import EventLog, run
    from blk.workspace import Workspace

    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-train-"))
    workspace = Workspace(args.workspace or scratch / "workspace")
    folder = scratch / "dataset"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"blkstyle, an ink study number {i}")
    config = TrainConfig.model_validate({
        "name": "bench", "model": {"name": args.model}, "data": {"dataset": str(folder), "resolutions": [args.size]},
        "adapter": {"rank": 16, "alpha": 16}, "optimizer": {"name": "adamw", "lr": 1e-4},
        "schedule": {"steps": args.steps}, "checkpoints": {"every": args.steps, "keep": 1}})
    device = available_devices()[0]
    rows = []
    for label in ("without cache", "with cache"):
        if label == "without cache":
            shutil.rmtree(folder / ".blk" / "cache", ignore_errors=True)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        run_dir = scratch / label.replace(" ", "-")
        start = time.perf_counter()
        result = run(config, workspace, run_dir)
        wall = time.perf_counter() - start
        losses = [e for e in EventLog(run_dir / "events.jsonl").read() if e["kind"] == "loss"]
        per_step = (losses[-1]["t"] - losses[0]["t"]) / max(len(losses) - 1, 1)
        if device.startswith("cuda"):
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GB GPU"
        else:
            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB RSS (process max)"
        rows.append((label, per_step, wall, result.latent_encodes, peak))
    print(f"{args.model} at {args.size} px, {args.steps} steps, on {describe(device)}")
    print(f"{'':<14} {'s/step':>8} {'run s':>7} {'VAE encodes':>12}  peak memory")
    for label, per_step, wall, encodes, peak in rows:
        print(f"{label:<14} {per_step:>8.3f} {wall:>7.1f} {encodes:>12}  {peak}")
    print(f"ratio s/step without / with cache: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
