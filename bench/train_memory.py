"""Issue #4's memory target: the paper's Conceptor recipe (FLUX.1-dev, LoRA rank 32, int8 base, gradient
checkpointing) at 1024 px, through the trainer's own probe, with and without token shuffling.

    python bench/shaped_models.py flux-dev W          # full FLUX.1-dev shapes, random weights (a GPU machine)
    python bench/train_memory.py --workspace W        # then this: two probes, about a minute or two each

Each row is `python -m blk train presets/conceptor-flux-dev.yaml --probe` in a process of its own, on a
dataset of 1024² noise images with captions (so every step is in the 1024 bucket). The probe runs the real
recipe for a few steps and reports s/step and the peak of `torch.cuda.max_memory_allocated` over loading,
caching and the steps. Rows: the preset as written (token shuffling on: the text encoders stay on the device,
T5 in int8 beside the int8 transformer) and the same with shuffling off (every text cached, the encoders freed
before the transformer is placed). Target: under 24 GB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TARGET_GB = 24


def make_dataset(folder: Path, count: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"blkstyle, a drawing number {i}, ink on paper, a figure in a landscape")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True, help="workspace with models/flux-dev (shaped_models.py)")
    parser.add_argument("--model", default="flux-dev")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-train-memory-"))
    dataset = make_dataset(scratch / "dataset", args.images, args.size)
    preset = yaml.safe_load((ROOT / "presets" / "conceptor-flux-dev.yaml").read_text())
    print(f"preset conceptor-flux-dev: rank {preset['adapter']['rank']}, int8 base {preset['model']['int8_base']}, "
          f"gradient checkpointing {preset['model']['gradient_checkpointing']}, {args.images} images {args.size}², "
          f"model {args.model}", flush=True)
    for label, shuffle in (("token shuffling on (the preset)", True), ("token shuffling off", False)):
        config = {**preset, "data": {**preset["data"], "shuffle_tokens": shuffle, "resolutions": [args.size]}}
        path = scratch / f"shuffle-{shuffle}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "blk", "--workspace", args.workspace, "train", str(path), "--probe",
                   "--model", args.model, "--dataset", str(dataset)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        lines = (done.stdout.strip() or done.stderr.strip() or "(no output)").splitlines()
        print(f"{label}: {lines[-1]}  [exit {done.returncode}]", flush=True)
        if done.returncode not in (0, 1):
            print(done.stderr[-3000:], flush=True)
    print(f"target: peak under {TARGET_GB} GB (torch.cuda.max_memory_allocated)")


if __name__ == "__main__":
    main()
