"""Generation speed: seconds per image through the studio's path and through a plain diffusers pipeline,
with the speed options (compile, attention backends) side by side, in one run.

    python bench/generate.py                                        (CPU: tiny-flux, 64 px, 4 steps; ~2 min on 2 cores)
    python bench/generate.py --model flux-dev --size 1024 --steps 28   (on a GPU workstation)

On a GPU every row loads the model again (about ten loads of FLUX.1-dev) and two rows compile: several
minutes. `--attention _native_cudnn` (one backend instead of all that run) or `--images 2` shortens it.

Every row loads the same local weights and runs the same seeds (0, 1, …). The plain path is what a
script would do: `FluxPipeline.from_pretrained(...).to(device)` (or the SDXL pipeline), then call it.
The studio's path is `blk.generate.sketch.Sketcher`: the pipeline stays loaded across calls and LoRAs
are swapped as peft adapters. After one untimed warm-up load (imports, the OS file cache), each row
prints its first call (load, and compile where there is one, included), the mean of the next calls,
the ratio plain/ours of the next calls, and the largest and mean pixel difference from the plain
pipeline's images at the same seeds (LoRA rows: from the uncompiled studio's images at the same
strength). Rows:

- plain diffusers; plain diffusers with fused QKV projections (reference only: the studio does not fuse,
  because the fused projection bypasses LoRAs on to_q/to_k/to_v; see `blk/models/speed.py`);
- the studio with its defaults, then with each attention backend that runs on this device
  (`--attention`), then compiled (`MemoryOptions(compile=True)`: regional compilation of the repeated
  blocks), then compiled with the fastest backend of the uncompiled rows;
- with `--only …,tuned`: compiled with each of `speed.COMPILE_ALTERNATIVES` (flux-fast's Inductor flags;
  those plus `max-autotune-no-cudagraphs`), to decide the studio's `speed.COMPILE_SETTINGS` on a GPU;
- LoRA strength switches (1.0, 0.5, 0.8 on seed 0), uncompiled and compiled: no base reload, and under
  compile the first switch (a LoRA added) compiles again while strength changes do not.

Compiled rows start from an empty TorchDynamo cache, and the whole run uses a fresh Inductor cache
folder (TORCHINDUCTOR_CACHE_DIR, unless already set), so "first call" is the cold worst case; the app
keeps Inductor's cache between sessions, so later first calls compile faster. Random-weight LoRA
(rank 4 on to_q/to_k/to_v/to_out.0) unless --lora names one.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline environment first)
from blk.models.speed import COMPILE_ALTERNATIVES  # noqa: E402  (no torch at import)

COMPILE_ALTERNATIVE_NAMES = tuple(COMPILE_ALTERNATIVES)

PROMPT = "an ink cube"
SCALES = (1.0, 0.5, 0.8)


@dataclass
class Row:
    name: str
    times: list[float] = field(default_factory=list)  # first call, then next calls
    images: list = field(default_factory=list)
    reference: list | None = None  # images to compare with (None: the plain pipeline's)
    note: str = ""

    @property
    def next(self) -> float:
        return statistics.mean(self.times[1:]) if len(self.times) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--images", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--workspace", default=None, help="workspace with the model (default: a fresh one)")
    parser.add_argument("--lora", default=None, help="a LoRA for the strength-switch rows (default: a random one)")
    parser.add_argument("--attention", default="auto",
                        help="attention backends to try, comma-separated; 'auto': every one that runs here; 'none'")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    parser.add_argument("--only", default=None,
                        help="comma-separated row groups to run (plain,fused,studio,attention,compiled,batch,tuned); "
                             "default: all but tuned. A short GPU run: --only plain,compiled,batch")
    parser.add_argument("--alternatives", default=",".join(COMPILE_ALTERNATIVE_NAMES),
                        help="which compile settings the tuned rows try, comma-separated (default: all: "
                             + ", ".join(COMPILE_ALTERNATIVE_NAMES) + ")")
    args = parser.parse_args()
    groups = {"plain", "fused", "studio", "attention", "compiled", "batch", "tuned"}
    wanted = groups - {"tuned"} if args.only is None else {g.strip() for g in args.only.split(",")}
    if wanted - groups:
        raise SystemExit(f"--only takes {', '.join(sorted(groups))}; got {', '.join(sorted(wanted - groups))}")
    wanted.add("plain")  # every ratio is against it

    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-generate-"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(scratch / "inductor"))

    import diffusers
    import numpy as np
    import torch

    from blk.generate.sketch import Lora, Sketcher, SketchRequest
    from blk.models import speed
    from blk.models.device import MemoryOptions, available_devices, describe, pick_dtype
    from blk.models.pipelines import _pipeline_class
    from blk.models.registry import resolve
    from blk.workspace import Workspace

    workspace = Workspace(args.workspace or scratch / "workspace")
    model = resolve(args.model, workspace)
    device = available_devices()[0]
    dtype = pick_dtype(device)
    guidance = 3.5 if model.family == "flux" else 6.0
    cls = _pipeline_class(model.family, "text2img")

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def free():
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    def as_array(image):
        return np.asarray(image.convert("RGB")).astype(np.int16)

    # warm-up, untimed: imports and the OS file cache, so no row pays them in its first call
    cls.from_pretrained(str(model.path), dtype=dtype, local_files_only=True)
    free()

    rows: list[Row] = []
    print(f"device: {describe(device)}, {str(dtype).replace('torch.', '')}; torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")
    print(f"model {args.model}, {args.size}×{args.size}, {args.steps} steps, "
          f"{args.images} timed calls after the first")
    # "identical within the dtype's tolerance" (issue #5): 8-bit levels; a half-precision model's kernels may
    # round differently (a compiled block fuses ops), a float32 one only in the last bits
    most, mean_most = (2, 0.05) if dtype == torch.float32 else (16, 1.0)
    print(f"{'path':<34} {'first call s':>12} {'next calls s':>12} {'plain/ours':>10} {'max diff':>8} "
          f"{'mean diff':>9} {'same':>5}   (same: max ≤ {most} and mean ≤ {mean_most} levels)", flush=True)

    def add(row: Row) -> Row:
        """Keep the row and print its line at once: a long GPU run shows each figure as it comes."""
        rows.append(row)
        plain = rows[0]
        reference = row.reference if row.reference is not None else plain.images
        pairs = [(a, b) for a, b in zip(reference, row.images) if b is not None]
        largest = max(int(np.abs(a - b).max()) for a, b in pairs)
        mean = statistics.mean(float(np.abs(a - b).mean()) for a, b in pairs)
        print(f"{row.name:<34} {row.times[0]:>12.2f} {row.next:>12.3f} {plain.next / row.next:>10.2f} "
              f"{largest:>8d} {mean:>9.3f} {'yes' if largest <= most and mean <= mean_most else 'NO':>5}"
              + (f"  ({row.note})" if row.note else ""), flush=True)
        return row

    def plain_row(name: str, fuse: bool) -> Row:
        row, start = Row(name), time.perf_counter()
        pipe = cls.from_pretrained(str(model.path), dtype=dtype, local_files_only=True).to(device)
        pipe.set_progress_bar_config(disable=True)
        if fuse:  # the model-level call: diffusers 0.42's FluxPipeline has no pipeline-level one
            (pipe.transformer if model.family == "flux" else pipe.unet).fuse_qkv_projections()
        saves = []
        for index in range(args.images + 1):
            begin = time.perf_counter()
            image = pipe(prompt=PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps,
                         generator=torch.Generator("cpu").manual_seed(index), guidance_scale=guidance).images[0]
            sync()
            row.times.append(time.perf_counter() - (start if index == 0 else begin))
            row.images.append(as_array(image))
            begin = time.perf_counter()
            image.save(scratch / "plain.png")  # what a script does next (PIL's PNG; the studio adds metadata)
            saves.append(time.perf_counter() - begin)
        row.note = f"+ {statistics.mean(saves[1:] or saves):.3f} s to save each image as a script would"
        del pipe
        free()
        return row

    def studio_row(name: str, sketcher: Sketcher, memory: MemoryOptions) -> Row:
        row, start = Row(name), time.perf_counter()
        for index in range(args.images + 1):
            begin = time.perf_counter()
            result, = sketcher.run(SketchRequest(args.model, PROMPT, seed=index, width=args.size, height=args.size,
                                                 steps=args.steps, guidance=guidance, memory=memory,
                                                 out_dir=scratch / "out"))
            sync()
            row.times.append(time.perf_counter() - (start if index == 0 else begin))
            row.images.append(as_array(_open(result.path)))
            row.note = row.note or result.notice
        return row

    def batch_row(name: str, sketcher: Sketcher, memory: MemoryOptions) -> Row:
        """One request for `--images` images, as the Sketch tab's count asks: each PNG is saved while the
        next image generates. times = [the request / images] (the model is already loaded and compiled)."""
        row, begin = Row(name), time.perf_counter()
        results = sketcher.run(SketchRequest(args.model, PROMPT, seed=1, count=args.images, width=args.size,
                                             height=args.size, steps=args.steps, guidance=guidance, memory=memory,
                                             out_dir=scratch / "out"))
        sync()
        seconds = (time.perf_counter() - begin) / len(results)
        row.times = [seconds, seconds]
        row.images = [None] + [as_array(_open(r.path)) for r in results]  # seeds 1…: the plain row's next calls
        return row

    def switch_row(name: str, sketcher: Sketcher, memory: MemoryOptions, lora: Path, reference) -> Row:
        row = Row(name, reference=reference)
        for scale in SCALES:
            begin = time.perf_counter()
            result, = sketcher.run(SketchRequest(args.model, PROMPT, seed=0, width=args.size, height=args.size,
                                                 steps=args.steps, guidance=guidance, loras=[Lora(lora, scale)],
                                                 memory=memory, out_dir=scratch / "out"))
            sync()
            row.times.append(time.perf_counter() - begin)
            row.images.append(as_array(_open(result.path)))
        return row

    def new_sketcher() -> Sketcher:
        torch._dynamo.reset()  # a compiled row pays its own compile (and no cache entry keeps a model alive)
        free()
        return Sketcher(workspace)

    # plain diffusers -------------------------------------------------------------------------------
    add(plain_row("plain diffusers", fuse=False))
    if "fused" in wanted:
        try:
            add(plain_row("plain + fused QKV (reference)", fuse=True))
        except Exception as exc:  # noqa: BLE001  (a model whose attention cannot fuse)
            print(f"fused QKV: not measured ({str(exc).splitlines()[0]})")

    # the studio, uncompiled ----------------------------------------------------------------------------
    default, lora, eager_switch, loads = None, Path(args.lora) if args.lora else None, None, []
    if wanted & {"studio", "attention"}:
        sketcher = new_sketcher()
        default = add(studio_row("studio (Sketcher)", sketcher, MemoryOptions()))
        lora = lora or _random_lora(sketcher.cache._loaded.denoiser, model.family, scratch / "lora")
        eager_switch = switch_row("studio, LoRA strength switch", sketcher, MemoryOptions(), lora, None)
        eager_switch.reference = eager_switch.images
        add(eager_switch)
        loads = [sketcher.cache.load_count]
        del sketcher

    if model.family != "flux" or args.attention == "none" or "attention" not in wanted:
        backends = []
    elif args.attention == "auto":
        backends = [name for name in speed.usable_attention_backends(device, dtype) if name != "native"]
    else:
        backends = [name.strip() for name in args.attention.split(",") if name.strip()]
    attention_rows = [default] if default else []
    for name in backends:
        problem = speed.attention_problem(name, device, dtype)
        if problem:
            print(f"attention {name}: not measured ({problem})")
            continue
        attention_rows.append(add(studio_row(f"studio, attention {name}", new_sketcher(),
                                             MemoryOptions(attention=name))))

    # the studio, compiled ------------------------------------------------------------------------------
    if not args.no_compile and wanted & {"compiled", "batch"}:
        problem = speed.compile_problem(device)
        if problem:
            print(f"compiled rows: not measured ({problem})")
        else:
            sketcher = new_sketcher()
            compiled = MemoryOptions(compile=True)
            add(studio_row("studio, compiled", sketcher, compiled))
            if "batch" in wanted:
                add(batch_row(f"studio, compiled, {args.images} in one request", sketcher, compiled))
            if eager_switch is not None:
                add(switch_row("studio, compiled, LoRA switch", sketcher, compiled, lora, eager_switch.images))
                loads.append(sketcher.cache.load_count)
            del sketcher
            best = min(attention_rows, key=lambda row: row.next) if attention_rows else default
            if best is not default:
                name = best.name.rsplit(" ", 1)[-1]
                add(studio_row(f"studio, compiled + {name}", new_sketcher(),
                               MemoryOptions(compile=True, attention=name)))

    # the studio, compiled with other Inductor settings (speed.COMPILE_ALTERNATIVES) ------------------------
    if not args.no_compile and "tuned" in wanted and not speed.compile_problem(device):
        for label in [name.strip() for name in args.alternatives.split(",") if name.strip()]:
            if label not in speed.COMPILE_ALTERNATIVES:
                print(f"compile settings {label}: unknown (known: {', '.join(speed.COMPILE_ALTERNATIVES)})")
                continue
            speed.COMPILE_SETTINGS = speed.COMPILE_ALTERNATIVES[label]
            try:
                add(studio_row(f"studio, compiled, {label}", new_sketcher(), MemoryOptions(compile=True)))
            finally:
                speed.COMPILE_SETTINGS = {}

    if loads:
        print(f"base loads through the LoRA switches, uncompiled then compiled: {', '.join(map(str, loads))} "
              "(target: 1 each)")
    print("first call: load (+ compile) + one image; LoRA rows: first switch (LoRA load, + compile) then the "
          "strength switches. Pixel differences in levels of 255: 0 on a CPU in fp32 uncompiled, a few in bf16 "
          "or compiled; LoRA rows compare with the uncompiled studio at the same strength.")


def _open(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _random_lora(denoiser, family: str, folder: Path, rank: int = 4) -> Path:
    """A random LoRA in diffusers' format for every to_q/to_k/to_v/to_out.0 of the loaded denoiser,
    strong enough to change the image; made from the loaded model, so nothing loads twice."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    prefix = "transformer" if family == "flux" else "unet"
    tensors = {}
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features ** 0.5
            up = torch.randn(module.out_features, rank, generator=generator) * 0.2 / rank ** 0.5
            tensors[f"{prefix}.{name}.lora_A.weight"] = down.to(torch.bfloat16).contiguous()
            tensors[f"{prefix}.{name}.lora_B.weight"] = up.to(torch.bfloat16).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "random_lora.safetensors"
    save_file(tensors, str(path))
    return path


if __name__ == "__main__":
    main()
