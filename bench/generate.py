"""Generation speed: seconds per image through the studio's path and through a plain diffusers pipeline.

    python bench/generate.py [--model tiny-flux] [--size 64] [--steps 4] [--images 3]
    python bench/generate.py --model flux-dev --size 1024 --steps 28     (on a GPU workstation)

Both paths load the same local weights and run the same seeds. The plain path is what a script
would do: `FluxPipeline.from_pretrained(...).to(device)` (or the SDXL pipeline), then call it.
The studio's path is `blk.generate.sketch.Sketcher` — the pipeline stays loaded across calls and
LoRAs are swapped as adapters. After one untimed warm-up load (imports, file cache), it prints the
first call (load included), the mean of later calls,
the cost of switching LoRA strength (no reload: the load count stays 1), and the largest pixel
difference between the two paths' images at the same seed.
"""

from __future__ import annotations

import argparse
import statistics
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
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--images", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--workspace", default=None, help="workspace with the model (default: a fresh one)")
    parser.add_argument("--lora", default=None, help="a LoRA for the strength-switch row (tiny models: a random one)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from blk.generate.sketch import Lora, Sketcher, SketchRequest
    from blk.models.device import available_devices, describe, pick_dtype
    from blk.models.pipelines import _pipeline_class
    from blk.models.registry import resolve
    from blk.workspace import Workspace

    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-generate-"))
    workspace = Workspace(args.workspace or scratch / "workspace")
    model = resolve(args.model, workspace)
    device = available_devices()[0]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # warm-up, untimed: imports and the OS file cache, so neither path pays them in its first call
    _pipeline_class(model.family, "text2img").from_pretrained(str(model.path), local_files_only=True)

    # plain diffusers ---------------------------------------------------------
    start = time.perf_counter()
    plain = _pipeline_class(model.family, "text2img").from_pretrained(
        str(model.path), dtype=pick_dtype(device), local_files_only=True).to(device)
    plain.set_progress_bar_config(disable=True)
    plain_times, plain_images = [], []
    for index in range(args.images + 1):
        begin = time.perf_counter()
        image = plain(prompt="an ink cube", width=args.size, height=args.size, num_inference_steps=args.steps,
                      generator=torch.Generator("cpu").manual_seed(index),
                      guidance_scale=3.5 if model.family == "flux" else 6.0).images[0]
        sync()
        plain_times.append(time.perf_counter() - (start if index == 0 else begin))
        plain_images.append(np.asarray(image).astype(np.int16))
    del plain

    # the studio's path -------------------------------------------------------
    sketcher = Sketcher(workspace)
    ours_times, ours_images = [], []
    start = time.perf_counter()
    for index in range(args.images + 1):
        begin = time.perf_counter()
        result, = sketcher.run(SketchRequest(args.model, "an ink cube", seed=index, width=args.size, height=args.size,
                                             steps=args.steps, guidance=3.5 if model.family == "flux" else 6.0,
                                             out_dir=scratch / "out"))
        sync()
        ours_times.append(time.perf_counter() - (start if index == 0 else begin))
        from PIL import Image

        ours_images.append(np.asarray(Image.open(result.path).convert("RGB")).astype(np.int16))

    lora = Path(args.lora) if args.lora else _random_lora(model, scratch / "lora") if model.name.startswith("tiny") \
        else None
    switch_times = []
    for scale in (1.0, 0.5, 0.8) if lora else ():
        begin = time.perf_counter()
        sketcher.run(SketchRequest(args.model, "an ink cube", seed=0, width=args.size, height=args.size,
                                   steps=args.steps, loras=[Lora(lora, scale)], out_dir=scratch / "out"))
        sync()
        switch_times.append(time.perf_counter() - begin)

    difference = max(int(np.abs(a - b).max()) for a, b in zip(plain_images, ours_images))
    plain_next, ours_next = statistics.mean(plain_times[1:]), statistics.mean(ours_times[1:])
    print(f"device: {describe(device)}; model {args.model}, {args.size}×{args.size}, {args.steps} steps")
    print(f"{'path':<30} {'first call s':>12} {'next calls s':>12} {'ratio (plain/ours)':>19}")
    print(f"{'plain diffusers':<30} {plain_times[0]:>12.2f} {plain_next:>12.3f} {'1.00':>19}")
    print(f"{'studio (Sketcher)':<30} {ours_times[0]:>12.2f} {ours_next:>12.3f} {plain_next / ours_next:>19.2f}")
    if switch_times:
        print(f"{'studio, LoRA strength switch':<30} {switch_times[0]:>12.2f} "
              f"{statistics.mean(switch_times[1:]):>12.3f} {plain_next / statistics.mean(switch_times[1:]):>19.2f}")
    print(f"base loads in the studio path: {sketcher.cache.load_count} (target 1)")
    print(f"largest pixel difference, same seeds: {difference} levels (0 on CPU fp32; small in bf16)")


def _random_lora(model, folder: Path) -> Path:
    """Tiny models only: the test suite's random LoRA (loading a real model twice would be wasteful)."""
    from tests.support.loras import make_random_lora

    return make_random_lora(model.path, model.family, folder)


if __name__ == "__main__":
    main()
