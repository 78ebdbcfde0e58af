"""Issue #4's memory target: the paper's Conceptor recipe (FLUX.1-dev, LoRA rank 32, int8 base, gradient
checkpointing) at 1024 px, through the trainer's own probe, with and without token shuffling.

    python bench/shaped_models.py flux-dev W          # full FLUX.1-dev shapes, random weights (a GPU machine)
    python bench/train_memory.py --workspace W        # then this: three probes, about a minute or two each

Each row is `python -m blk train presets/conceptor-flux-dev.yaml --probe` in a process of its own, on a
dataset of 1024² noise images with captions (so every step is in the 1024 bucket). The probe runs the real
recipe for a few steps and reports s/step and the peak of `torch.cuda.max_memory_allocated` over loading,
caching and the steps. Rows: the preset as written (token shuffling on: the text encoders stay on the device,
T5 in int8 beside the int8 transformer), with 8 fixed orders per caption (`data.shuffle_orders`: encoded
before the steps, the encoders freed) and with shuffling off (every text cached, the encoders freed before
the transformer is placed). Target: under 24 GB. Last, in this process: how long one step's text
takes with shuffling (CLIP + T5 on a new caption), T5 as loaded and T5 in int8.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline environment first)

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
    parser.add_argument("--repeats", type=int, default=10, help="timed text encodes after two warm-up ones")
    parser.add_argument("--no-encode-timing", action="store_true", help="leave out the text-encode row")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-train-memory-"))
    dataset = make_dataset(scratch / "dataset", args.images, args.size)
    preset = yaml.safe_load((ROOT / "presets" / "conceptor-flux-dev.yaml").read_text())
    print(f"preset conceptor-flux-dev: rank {preset['adapter']['rank']}, int8 base {preset['model']['int8_base']}, "
          f"gradient checkpointing {preset['model']['gradient_checkpointing']}, {args.images} images {args.size}², "
          f"model {args.model}", flush=True)
    rows = (("token shuffling on (the preset)", True, 0), ("token shuffling, 8 fixed orders per caption", True, 8),
            ("token shuffling off", False, 0))
    for label, shuffle, orders in rows:
        config = {**preset, "data": {**preset["data"], "shuffle_tokens": shuffle, "shuffle_orders": orders,
                                     "resolutions": [args.size]}}
        path = scratch / f"shuffle-{shuffle}-{orders}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "blk", "--workspace", args.workspace, "train", str(path), "--probe",
                   "--model", args.model, "--dataset", str(dataset)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        lines = (done.stdout.strip() or done.stderr.strip() or "(no output)").splitlines()
        print(f"{label}: {lines[-1]}  [exit {done.returncode}]", flush=True)
        if done.returncode not in (0, 1):
            print(done.stderr[-3000:], flush=True)
    print(f"target: peak under {TARGET_GB} GB (torch.cuda.max_memory_allocated)", flush=True)
    if not args.no_encode_timing:
        time_encodes(args.workspace, args.model, args.repeats)


def time_encodes(workspace: str, model_name: str, repeats: int) -> None:
    """What one step's text costs with token shuffling: `FluxFamily.encode_text` (CLIP + T5, 512 tokens) of a new
    caption each call, T5 as loaded (bf16 on a GPU) and then quantized in place as the trainer does."""
    import time

    import torch

    from blk.models.device import MemoryOptions, pick_device
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.config import TrainConfig
    from blk.train.families import FluxFamily
    from blk.train.runner import _quantize_resident_text_encoder
    from blk.workspace import Workspace

    device = pick_device("auto")
    pipe = load_pipeline(resolve(model_name, Workspace(workspace)), "text2img", device, MemoryOptions(), place=False)
    pipe.transformer = None  # only the text encoders are timed
    pipe.text_encoder.to(device)
    pipe.text_encoder_2.to(device)
    family = FluxFamily(pipe)

    def per_encode() -> float:
        def sync():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        with torch.no_grad():
            for i in range(2):  # warm-up: kernels chosen, allocator filled
                family.encode_text(f"blkstyle, warm-up {i}")
            sync()
            start = time.perf_counter()
            for i in range(repeats):
                family.encode_text(f"blkstyle, ink, a figure number {i} in a landscape, dusk")
            sync()
        return (time.perf_counter() - start) / repeats

    as_loaded = per_encode()
    shuffling = TrainConfig.model_validate({"model": {"int8_base": True}, "data": {"shuffle_tokens": True}})
    _quantize_resident_text_encoder(family, shuffling)
    int8 = per_encode()
    dtype = str(pipe.text_encoder_2.dtype).replace("torch.", "")
    print(f"one caption's text (CLIP + T5, 512 tokens), mean of {repeats}: T5 as loaded ({dtype}) "
          f"{as_loaded * 1000:.1f} ms, T5 int8 (quanto, as shuffling on an int8 base trains) {int8 * 1000:.1f} ms",
          flush=True)


if __name__ == "__main__":
    main()
