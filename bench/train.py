"""Training speed and memory, ours against a plain diffusers loop: seconds per step and peak memory.

    python bench/train.py [--model tiny-flux] [--steps 20] [--size 64] [--batch-size 1]
    python bench/train.py --model flux-dev --size 512 --steps 50        (on a GPU)
    python bench/train.py --baseline-text once                          (the baseline encoding text once)

Run it with the app's environment (`.venv/bin/python bench/train.py`). Both trainers train the same
model on the same 8 noise images (a caption each), at the same size, batch size, step count, LoRA
(rank 16, alpha 16, on to_q, to_k, to_v, to_out.0) and learning rate, in the same dtype (bf16 on a
GPU, fp32 on a CPU). The baseline is `bench/plain_flux_lora.py`, a loop written after diffusers'
examples/dreambooth/train_dreambooth_lora_flux.py with that script's defaults (its docstring says what
it mirrors and what differs). Rows, each in a fresh process so that its peak memory is its own:

    ours, no latent cache      `data.cache_latents: false` on cleared caches: the VAE encodes every step
                               (captions are text-encoded once each, then read from the text cache)
    diffusers example          the script without --cache_latents: VAE- and text-encodes every step, as
                               its code does (--baseline-text once: one prompt, encoded once before
                               training and the text encoders freed, as the script's comment promises)
    ours, warm caches          our default, on the caches that an untimed one-epoch run filled: no encoding
    diffusers --cache_latents  latents encoded in one pass before training; text as above

s/step is the mean (and the median) over the steps after the first --warmup steps; "run s" is the whole
run, loading included (imports not). Peak memory: torch.cuda.max_memory_allocated on a GPU, the process's peak
resident memory (ru_maxrss) on a CPU. The ratios are baseline / ours: above 1, ours is faster or
smaller. On a CPU that other work shares, torch's threads wait on each other and the figures scatter:
compare the medians, or run with --threads 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401

IMAGES = 8
RANK = ALPHA = 16
LEARNING_RATE = 1e-4
MARK = "BENCH-ROW "  # a child's result: this, then one line of JSON
# key, label; each in a process of its own, in this order: comparable rows one after the other. The
# "ours, no latent cache" process then fills the caches (untimed) for "ours, warm caches".
ROWS = [
    ("ours-nocache", "ours, no latent cache"),
    ("plain", "diffusers example"),
    ("ours-warm", "ours, warm caches"),
    ("plain-cache", "diffusers --cache_latents"),
]
PAIRS = [("latents encoded every step", "plain", "ours-nocache"), ("latents cached", "plain-cache", "ours-warm")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of s/step")
    parser.add_argument("--baseline-text", choices=("every-step", "once"), default="every-step",
                        help="the baseline's text: each image's caption, encoded every step (what the script's "
                             "code does), or one prompt for all, encoded once, the encoders freed")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads in every row (0: torch's default); 1 steadies figures on a busy CPU")
    parser.add_argument("--workspace", default=None, help="workspace with the model (default: a fresh one)")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row in this process
    parser.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(MARK + json.dumps(run_row(args)), flush=True)
        return

    import numpy as np
    from PIL import Image

    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-train-"))
    try:  # this process only orchestrates (no torch here): each row runs in a child process
        workspace = Path(args.workspace) if args.workspace else scratch / "workspace"
        folder = scratch / "dataset"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(IMAGES):
            Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(f"blkstyle, an ink study number {i}")
        results = {}
        for key, label in ROWS:
            if key == "ours-nocache":
                shutil.rmtree(folder / ".blk" / "cache", ignore_errors=True)
            print(f"running: {label} …", file=sys.stderr, flush=True)
            results[key] = child(args, key, workspace, folder, scratch / key)
            ends = results[key]["ends"]  # the raw figures at once: a long GPU run shows each as it comes
            print(f"  {label}: {len(ends)} steps, last {ends[-1] - ends[0]:.2f} s after the first, "
                  f"{json.dumps({k: v for k, v in results[key].items() if k != 'ends'})}", file=sys.stderr, flush=True)
        report(args, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def child(args, key: str, workspace: Path, folder: Path, run_dir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--row", key, "--model", args.model,
               "--steps", str(args.steps), "--size", str(args.size), "--batch-size", str(args.batch_size),
               "--baseline-text", args.baseline_text, "--threads", str(args.threads), "--workspace", str(workspace),
               "--dataset", str(folder), "--run-dir", str(run_dir)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"bench row {key} failed (exit status {done.returncode})")
    return json.loads(lines[-1][len(MARK):])


def run_row(args) -> dict:
    """One row, in this (fresh) process: train, then say when each step ended and the peak memory."""
    # everything either trainer imports, loaded before any timer, so that "run s" is loading and training
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import torch
    import torchvision  # noqa: F401
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel  # noqa: F401
    from transformers import CLIPTextModel, T5EncoderModel  # noqa: F401

    from blk.models.device import available_devices, describe, pick_dtype
    from blk.models.registry import resolve
    from blk.workspace import Workspace

    if args.threads:
        torch.set_num_threads(args.threads)
    device = available_devices()[0]
    args.resolved = resolve(args.model, Workspace(args.workspace))  # the first row builds a tiny model
    if args.row.startswith("plain"):
        result = _plain_row(args, cache_latents=args.row == "plain-cache")
    else:
        result = _our_row(args)
    result["device"] = describe(device)
    result["dtype"] = str(pick_dtype(device)).removeprefix("torch.")
    return result


def _peak() -> dict:
    """This process's peak memory so far: allocated GPU memory on CUDA, else resident memory."""
    import torch

    if torch.cuda.is_available():
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "peak_kind": "GPU"}
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "peak_kind": "RSS"}


def _config(args, steps: int, cache_latents: bool):
    from blk.train.config import TrainConfig

    return TrainConfig.model_validate({
        "name": "bench", "model": {"name": args.model},
        "data": {"dataset": args.dataset, "resolutions": [args.size], "cache_latents": cache_latents},
        "adapter": {"rank": RANK, "alpha": ALPHA}, "optimizer": {"name": "adamw", "lr": LEARNING_RATE},
        "schedule": {"steps": steps, "batch_size": args.batch_size}, "checkpoints": {"every": steps, "keep": 1}})


def _our_row(args) -> dict:
    import gc

    import torch

    from blk.train.runner import EventLog, run
    from blk.workspace import Workspace

    workspace, run_dir = Workspace(args.workspace), Path(args.run_dir)
    start = time.perf_counter()
    result = run(_config(args, args.steps, cache_latents=args.row != "ours-nocache"), workspace, run_dir)
    wall = time.perf_counter() - start
    if result.status != "finished":
        raise SystemExit(f"our run ended {result.status}: see {run_dir}/events.jsonl")
    ends = [e["t"] for e in EventLog(run_dir / "events.jsonl").read() if e["kind"] == "loss"]
    row = {"ends": ends, "run_s": wall, "vae_encodes": result.latent_encodes, "text_encodes": result.text_encodes,
           **_peak()}
    if args.row == "ours-nocache":  # then, untimed, one epoch with the caches on fills them for "ours, warm caches"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        run(_config(args, -(-IMAGES // args.batch_size), cache_latents=True), workspace, run_dir.with_name("fill"))
    return row


def _plain_row(args, cache_latents: bool) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plain_flux_lora import train

    model = args.resolved
    if model.family != "flux" or model.single_file:
        raise SystemExit(f"the baseline, like diffusers' Flux example, needs a Flux diffusers folder; {args.model} "
                         f"is {'a single file' if model.single_file else model.family}")
    targets = _config(args, args.steps, True).adapter.target_modules  # exactly our adapter's targets
    start = time.perf_counter()
    result = train(model.path, args.dataset, size=args.size, steps=args.steps, batch_size=args.batch_size,
                   rank=RANK, alpha=ALPHA, target_modules=targets, learning_rate=LEARNING_RATE,
                   text=args.baseline_text, cache_latents=cache_latents)
    wall = time.perf_counter() - start
    return {"ends": result["step_ends"], "run_s": wall, "vae_encodes": result["vae_encodes"],
            "text_encodes": result["text_encodes"], **_peak()}


def step_times(ends: list[float], warmup: int) -> tuple[float, float, int]:
    """(mean, median) seconds per step over the steps after the first `warmup`, and that warm-up."""
    warmup = max(1, min(warmup, len(ends) - 1))  # the first step has no start time of its own here
    durations = [b - a for a, b in zip(ends, ends[1:])][warmup - 1:]
    return (ends[-1] - ends[warmup - 1]) / len(durations), statistics.median(durations), warmup


def report(args, results: dict) -> None:
    first = results["ours-nocache"]
    warm_up = step_times(first["ends"], args.warmup)[2]
    print(f"{args.model} at {args.size} px, batch {args.batch_size}, {args.steps} steps, LoRA rank {RANK} / alpha "
          f"{ALPHA}, {first['dtype']}, on {first['device']}")
    print(f"s/step: steps {warm_up + 1}–{args.steps}; baseline text: "
          f"{'each caption, encoded every step' if args.baseline_text == 'every-step' else 'one prompt, encoded once'}")
    print(f"{'':<26} {'s/step':>7} {'median':>7} {'run s':>6} {'VAE enc':>8} {'text enc':>8}  peak memory")
    peaks = {}
    for key, label in ROWS:
        row = results[key]
        mean, median, _ = step_times(row["ends"], args.warmup)
        peaks[key] = row["peak_bytes"]
        print(f"{label:<26} {mean:>7.3f} {median:>7.3f} {row['run_s']:>6.1f} {row['vae_encodes']:>8} "
              f"{row['text_encodes']:>8}  {row['peak_bytes'] / 2**30:.2f} GB {row['peak_kind']}")
    print("baseline / ours (above 1: ours is faster / smaller):")
    for label, plain, ours in PAIRS:
        a, b = (step_times(results[k]["ends"], args.warmup) for k in (plain, ours))
        print(f"  {label:<27} s/step {a[0] / b[0]:.2f} (median {a[1] / b[1]:.2f}), peak memory "
              f"{peaks[plain] / peaks[ours]:.2f}")


if __name__ == "__main__":
    main()
