"""`python -m blk sketch …` and `python -m blk review …` (registered by `blk.cli`).

    python -m blk sketch --model M [--lora FILE[:SCALE] …] --prompt P [--negative N] [--seed S]
                         [--size WxH | --megapixels MP --aspect A] [--steps N] [--guidance G] [--count N]
                         [--cpu-offload] [--int8] [--vae-tiling] [--compile] [--attention BACKEND] [--out DIR]
    python -m blk review RUN_OR_LORAS… [--model M] [--prompts FILE] [--seeds 1,2,3] [--scales 0.6,0.8,1.0]
                         [--base] [--size WxH] [--steps N] [--guidance G] [--cpu-offload] [--int8]
                         [--vae-tiling] [--compile] [--attention BACKEND] [--device D] --out grid.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from blk.cli_types import number, whole
from blk.errors import UserError


def add_commands(commands) -> None:
    from blk.generate.sizes import ASPECTS
    from blk.generate.sketch import GUIDANCE_RANGE, MAX_COUNT, MAX_SEED, MAX_STEPS

    sketch = commands.add_parser("sketch", help="text to image with a base model and LoRAs")
    sketch.add_argument("--model", required=True)
    sketch.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]")
    sketch.add_argument("--prompt", default="")
    sketch.add_argument("--negative", default="", help="negative prompt (SDXL)")
    sketch.add_argument("--seed", type=whole(0, MAX_SEED), default=None, help="default: random (printed)")
    size = sketch.add_mutually_exclusive_group()
    size.add_argument("--size", default=None, help="WxH, rounded to the model's grid with a notice")
    size.add_argument("--megapixels", type=number(above=0, high=16), default=None, help="size budget, with --aspect")
    sketch.add_argument("--aspect", default="1:1 square", choices=list(ASPECTS))
    sketch.add_argument("--steps", type=whole(1, MAX_STEPS), default=None,
                        help="default: the model's (FLUX.1-dev 28, schnell 4)")
    sketch.add_argument("--guidance", type=number(*GUIDANCE_RANGE), default=None)
    sketch.add_argument("--count", type=whole(1, MAX_COUNT), default=1)
    _memory_arguments(sketch)
    _speed_arguments(sketch)
    sketch.add_argument("--device", default="auto")
    sketch.add_argument("--out", default=None, help="folder (default: workspace/outputs/sketch/DATE)")
    sketch.set_defaults(run=cmd_sketch)

    review = commands.add_parser("review", help="a grid of checkpoints × prompts × seeds × LoRA strengths")
    review.add_argument("sources", nargs="+", metavar="RUN_OR_LORA",
                        help="a run folder (all its checkpoints) or LoRA files")
    review.add_argument("--model", default=None, help="default: the run's model")
    review.add_argument("--prompts", default=None, help="text file, one prompt per line (default: the run's)")
    review.add_argument("--seeds", default=None, help="e.g. 1,2,3 (default: the run's sample seed)")
    review.add_argument("--scales", default="1.0", help="LoRA strengths, e.g. 0.6,0.8,1.0")
    review.add_argument("--base", action="store_true", help="add a row without any LoRA")
    review.add_argument("--size", default=None, help="WxH (default: the run's sample size, else 1024x1024)")
    review.add_argument("--steps", type=whole(1, MAX_STEPS), default=None)
    review.add_argument("--guidance", type=number(*GUIDANCE_RANGE), default=None)
    review.add_argument("--out", required=True, help="the grid PNG")
    _memory_arguments(review)
    _speed_arguments(review)
    review.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps, as for sketch")
    review.set_defaults(run=cmd_review)


def _memory_arguments(parser) -> None:
    parser.add_argument("--cpu-offload", action="store_true")
    parser.add_argument("--int8", action="store_true", help="int8 weights (changes the images a little)")
    parser.add_argument("--vae-tiling", action="store_true")


def _memory_options(args):
    from blk.models.device import MemoryOptions

    return MemoryOptions(cpu_offload=args.cpu_offload, vae_tiling=args.vae_tiling, int8=args.int8,
                         compile=args.compile, attention=args.attention)


def _speed_arguments(parser) -> None:
    from blk.models.speed import ATTENTION_BACKENDS

    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the denoiser's repeated blocks: first image slower, later ones faster")
    parser.add_argument("--attention", default="", metavar="BACKEND",
                        help=f"attention backend for Flux, e.g. {', '.join(ATTENTION_BACKENDS)} (default: diffusers'); "
                             "checked on the device before the model loads")


def _size(text: str) -> tuple[int, int]:
    from blk.generate.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise UserError(str(exc) + ".") from None


def cmd_sketch(args, workspace) -> int:
    from blk.generate.sizes import size_for_budget
    from blk.generate.sketch import Lora, Sketcher, SketchRequest

    if args.megapixels:
        width, height = size_for_budget(args.megapixels, args.aspect)
    else:
        width, height = _size(args.size or "1024x1024")
    request = SketchRequest(
        model=args.model, prompt=args.prompt, negative_prompt=args.negative,
        loras=[Lora.parse(text) for text in args.lora], seed=args.seed, width=width, height=height,
        steps=args.steps, guidance=args.guidance, count=args.count, device=args.device,
        memory=_memory_options(args), out_dir=Path(args.out) if args.out else None)

    def progress(done, total):
        print(f"\rstep {done}/{total}   ", end="", file=sys.stderr, flush=True)

    print_results(Sketcher(workspace).run(request, progress=progress))
    return 0


def print_results(results) -> None:
    """After a progress line: the size notice (if any) on stderr, then one `seed S: PATH` line per image."""
    print(file=sys.stderr)
    if results[0].notice:
        print(results[0].notice, file=sys.stderr)
    for result in results:
        print(f"seed {result.seed}: {result.path}")


def cmd_review(args, workspace) -> int:
    from blk.generate.review import (DEFAULT_SEED, GridSpec, Reviewer, parse_seeds, parse_strengths, review_folder,
                                     run_review_defaults, save_grid)
    from blk.generate.sketch import Sketcher
    from blk.workspace import check_writable_folder

    run_dir, loras, defaults = None, [], {}
    for source in map(Path, args.sources):
        if source.is_dir():
            if not (source / "config.yaml").exists():
                raise UserError(f"{source} is not a training run (it has no config.yaml).")
            run_dir, defaults = source, run_review_defaults(source)
            loras += defaults["checkpoints"]
        elif source.is_file():
            loras.append(source)
        else:
            raise UserError(f"{source} is neither a run folder nor a LoRA file.")
    model = args.model or defaults.get("model")
    if not model:
        raise UserError("Name the base model with --model (loose LoRA files do not say which one they need).")
    prompts = defaults.get("prompts", [])
    if args.prompts:
        try:
            prompts = [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines()
                       if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"Could not read the prompts file {args.prompts} ({exc}).") from None
    seeds = parse_seeds(args.seeds, "--seeds") or [defaults.get("seed", DEFAULT_SEED)]
    side = defaults.get("size", 1024)
    width, height = _size(args.size) if args.size else (side, side)
    spec = GridSpec(model=model, checkpoints=loras, prompts=prompts, seeds=seeds,
                    scales=parse_strengths(args.scales, "--scales") or [1.0], include_base=args.base,
                    width=width, height=height, steps=args.steps or defaults.get("steps"),
                    guidance=args.guidance if args.guidance is not None else defaults.get("guidance"),
                    memory=_memory_options(args), device=args.device)

    def progress(done, total):
        print(f"\rcell {done:.1f}/{total}   ", end="", file=sys.stderr, flush=True)

    out = Path(args.out)
    if out.suffix.lower() != ".png" or out.is_dir():
        raise UserError(f"The grid is a PNG file: give --out a name ending in .png; {out} is not one.")
    check_writable_folder(out.parent)  # before the grid is drawn, not after
    result = Reviewer(Sketcher(workspace)).grid(spec, review_folder(workspace, run_dir), progress=progress)
    print(file=sys.stderr)
    path = save_grid(result, spec, out)
    print(f"{len(result.row_labels)}×{len(result.column_labels)} grid ({result.generated} generated, "
          f"{result.cached} from the cache): {path}")
    return 0
