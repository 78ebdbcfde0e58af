"""`python -m blk upscale …` (registered by `blk.cli`).

    python -m blk upscale INPUT --path diffusion --model BASE [--lora TEXTURE[:SCALE]] [--enlarge-model FILE]
                          (--scale 2 | --size WxH) [--denoise 0.3,0.2[,0.15]] [--prompt P] [--seed S]
                          [--steps N] [--step-scale 4] [--no-final-pass] [--tile 1024] [--overlap 96] [--16bit]
                          [--dpi N] [--icc FILE] [--print-dpi N [--print-background COLOUR]] [--compile]
                          [--out OUT.tif|OUT.png]
    python -m blk upscale INPUT --path esrgan --model FILE (--scale 4 | --size WxH)
                          [--tile N] [--overlap N] [--batch N] [--16bit] [--dpi N] [--icc FILE]
                          [--alpha model|lanczos] [--device D] [--precision auto|fp32|fp16|bf16] [--compile]
                          [--print-dpi N [--print-background white|#rrggbb|r,g,b]] [--out OUT.tif|OUT.png]

esrgan: tile and overlap are in input pixels; the tile comes from free memory when not given.
diffusion: tile and overlap are in pixels of the enlarged image each pass refines (the size the model
draws at; default 1024 and 96; the paper's range is 512–1536 and 64–128).
Without --out the result goes to workspace/outputs/upscale/NAME-xSCALE.tif.
--preset NAME|FILE takes the settings of an upscale preset (`presets/upscale-esrgan.yaml`, the paper's
recipes; any YAML of `blk.upscale.preset`'s schema); the flags given beside it win.
A run that was killed (or stopped with Ctrl+C) resumes from its last finished row of tiles
when the same command is run again.

BLK_TEST_KILL_AFTER_TILES=N (tests only): the process kills itself (SIGKILL) after N tiles,
as a crash or a power cut would, so that tests can prove a resume.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from blk.cli_types import number, whole
from blk.errors import UserError
from blk.generate.cli import _size


def _default_output(workspace, name: str) -> Path:
    """workspace/outputs/upscale/NAME, or NAME-2… when it (or its print copy) exists: a second run of the same
    command kept no earlier result. (An `--out` given is the user's to replace.)"""
    from blk.upscale.canvas import print_path
    from blk.workspace import free_path

    return free_path(workspace.outputs("upscale") / name, companions=(print_path,))


def add_commands(commands) -> None:
    from blk.generate.sketch import MAX_SEED, MAX_STEPS
    from blk.upscale.diffusion import STEP, STEP_RANGE

    upscale = commands.add_parser("upscale", help="make an image larger (Real-ESRGAN and other spandrel models)")
    upscale.add_argument("input", help="the image to upscale (PNG, JPEG, WebP, TIFF; any size)")
    upscale.add_argument("--preset", default=None, metavar="NAME|FILE",
                         help="an upscale preset's settings (upscale-esrgan, upscale-diffusion-flux: the paper's "
                              "recipes; or a YAML file); the flags given beside it win")
    # flags a preset can set default to None here: given, they win over it (`apply_preset`)
    upscale.add_argument("--path", choices=["esrgan", "diffusion"], default=None,
                         help="esrgan: faithful, to about 8k (default); diffusion: texture LoRA passes, mural sizes")
    upscale.add_argument("--model", default=None,
                         help="esrgan: the model file (.pth, .safetensors, .ckpt, .pt; a bare name is looked up in "
                              "workspace/models/upscalers/); diffusion: the base model name")
    diffusion = upscale.add_argument_group("diffusion path")
    diffusion.add_argument("--lora", default=None, metavar="FILE[:SCALE]", help="texture LoRA")
    diffusion.add_argument("--enlarge-model", default=None, help="ESRGAN-family file for the first enlargement, "
                                                                   "like --model; lanczos: none (the default)")
    diffusion.add_argument("--denoise", default=None, help="how much each refinement pass may change (0 to 1), one number per pass: "
                                                             "the default 0.3,0.2 runs pass A at 0.3, then pass B at 0.2")
    diffusion.add_argument("--prompt", default=None, help="what the passes are asked to draw (default: none, as the paper)")
    diffusion.add_argument("--seed", type=whole(0, MAX_SEED), default=None, help="the noise seed, the same for every tile")
    diffusion.add_argument("--steps", type=whole(1, MAX_STEPS), default=None, help="denoising steps of a full pass (default: the "
                                                                   "model's); a pass at denoise 0.3 runs about 30%% of them")
    diffusion.add_argument("--step-scale", type=number(STEP_RANGE[0], STEP_RANGE[1]), default=None,
                           help="the most one step enlarges before its passes refine it, from 1.5 to 4; more steps "
                                f"until the size is reached (default {STEP:g})")
    diffusion.add_argument("--no-final-pass", action="store_const", const=True, default=None,
                           help="skip the full-frame pass")
    size = upscale.add_mutually_exclusive_group()
    size.add_argument("--scale", type=number(above=0), default=None, help="overall scale, e.g. 4 or 3 (default 4 for esrgan, 2 for diffusion)")
    size.add_argument("--size", default=None, help="exact result size WxH, e.g. 8000x6000")
    upscale.add_argument("--stretch", action="store_true",
                         help="allow a --size of another shape than the input's (the image is stretched)")
    upscale.add_argument("--tile", type=whole(16), default=None,
                         help="tile side; esrgan: in input px (default: from free memory); diffusion: in px of "
                              "the enlarged image each pass refines (default 1024)")
    upscale.add_argument("--overlap", type=whole(0), default=None,
                         help="tile overlap, in the same px as --tile (default 32 for esrgan, 96 for diffusion)")
    upscale.add_argument("--batch", type=whole(1, 256), default=4, help="tiles the model upscales at once (default 4; fewer "
                                                                                 "use less memory)")
    upscale.add_argument("--16bit", dest="keep_16bit", action="store_true",
                         help="keep 16 bits per channel when the input has them (the result must be a .tif)")
    upscale.add_argument("--dpi", type=number(above=0), default=None, help="resolution to record (default: the input's)")
    upscale.add_argument("--icc", default=None, help="ICC profile file to embed (default: the input's)")
    upscale.add_argument("--alpha", choices=["model", "lanczos"], default="model",
                         help="how transparency is upscaled (default: through the model)")
    upscale.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: a GPU when there is one)")
    upscale.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                         help="number format of the upscaler on a GPU (default: half precision where the model "
                              "supports it)")
    upscale.add_argument("--compile", action="store_true",
                         help="compile the models for this machine (the upscaler; on the diffusion path the "
                              "denoiser too): the first tiles wait for the compiler, the rest run faster")
    upscale.add_argument("--print-dpi", type=number(above=0), default=None,
                         help="also write OUT.print.tif for a print lab: 8-bit RGB, flattened, at this DPI, "
                              "with the ICC profile")
    upscale.add_argument("--print-background", default="white",
                         help="colour transparency is flattened over in the print copy: white, black, "
                              "#rrggbb or r,g,b (default white)")
    upscale.add_argument("--out", default=None,
                         help="OUT.tif (tiled TIFF; BigTIFF past 4 GB) or OUT.png, replaced if it exists "
                              "(default: a new name in workspace/outputs/upscale/)")
    upscale.set_defaults(run=cmd_upscale)


def _exact_size(args) -> tuple[int, int] | None:
    """--size, refused in one sentence when it would stretch the input (unless --stretch)."""
    from blk.upscale.esrgan import check_shape
    from blk.upscale.source import input_size

    if not args.size:
        return None
    size = _size(args.size)
    if not args.stretch:
        check_shape(*input_size(args.input), size, hint=" (--stretch to stretch it anyway)")
    return size


# options only one path reads, with their defaults: given to the other path, they would be ignored without a word
DIFFUSION_ONLY = {"lora": None, "enlarge_model": None, "denoise": None, "prompt": None, "seed": None, "steps": None,
                  "step_scale": None, "no_final_pass": None}
ESRGAN_ONLY = {"alpha": "model", "batch": 4, "precision": "auto"}
# what the diffusion path takes when neither a flag nor a preset says
LANCZOS = ("lanczos", "none")  # --enlarge-model words for no model (over a preset's upscaler)
DIFFUSION_DEFAULTS = {"denoise": "0.3,0.2", "prompt": "", "seed": 0, "no_final_pass": False}  # and step_scale: STEP


def apply_preset(args, workspace) -> None:
    """Fill in what the command line left out: from --preset where one is given, then the path's defaults. The
    preset's path is the job's; a --path of the other one is refused (its tile and scale mean other things)."""
    from blk.upscale.models import find_upscaler
    from blk.upscale.preset import find_texture_lora, load_preset

    preset = load_preset(args.preset) if args.preset else None
    if preset and args.path and args.path != preset.path:
        raise UserError(f"{args.preset} is a preset of the {preset.path} path; leave out --path {args.path}, or "
                        f"choose a preset of the {args.path} path.")
    args.path = args.path or (preset.path if preset else "esrgan")
    refuse_other_paths_options(args)  # the flags the user gave, before the preset's fill the rest
    if preset:
        chosen = {"scale": preset.scale if not args.size else None, "tile": preset.tile, "overlap": preset.overlap}
        if preset.path == "esrgan":
            chosen["model"] = str(find_upscaler(workspace, preset.upscaler)) if preset.upscaler else None
        else:
            lora = find_texture_lora(workspace, preset.texture_lora) if preset.texture_lora else None
            enlarge = find_upscaler(workspace, preset.upscaler) if preset.upscaler else None
            if enlarge is not None and not enlarge.is_file() and args.enlarge_model is None:  # as the tab does
                _say(f"{preset.upscaler} is not in workspace/models/upscalers, so each step enlarges with Lanczos.")
                enlarge = None
            chosen |= {"model": preset.model, "denoise": ",".join(f"{d:g}" for d in preset.denoise),
                       "prompt": preset.prompt, "seed": preset.seed, "steps": preset.steps,
                       "step_scale": preset.step_scale, "no_final_pass": not preset.final_pass,
                       "enlarge_model": str(enlarge) if enlarge else None,
                       "lora": f"{lora}:{preset.lora_strength:g}" if lora else None}
        for name, value in chosen.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if (args.enlarge_model or "").lower() in LANCZOS:
        args.enlarge_model = None
    if args.path == "diffusion":
        from blk.upscale.diffusion import STEP

        for name, value in (DIFFUSION_DEFAULTS | {"step_scale": STEP}).items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if not args.model:
        raise UserError("--model is needed: the upscaler file for --path esrgan, the base model for --path "
                        "diffusion (or a --preset that names it).")


def refuse_other_paths_options(args) -> None:
    """One sentence naming an option the chosen path does not use (a --lora on the ESRGAN path did nothing)."""
    other, options = ("esrgan", ESRGAN_ONLY) if args.path == "diffusion" else ("diffusion", DIFFUSION_ONLY)
    given = [name for name, default in options.items() if getattr(args, name) != default]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"{flags} {'is' if len(given) == 1 else 'are'} for the {other} path and would do nothing "
                        f"with --path {args.path}.")


def cmd_upscale(args, workspace) -> int:
    apply_preset(args, workspace)
    if args.path == "diffusion":
        return cmd_upscale_diffusion(args, workspace)
    from blk.upscale.canvas import parse_colour
    from blk.upscale.esrgan import EsrganJob, run
    from blk.upscale.models import find_upscaler
    from blk.upscale.tiler import check_tile

    if args.tile:  # before the model loads and a gigapixel input is hashed
        check_tile(args.tile, 32 if args.overlap is None else args.overlap)
    size = _exact_size(args)
    scale = None if size else (args.scale if args.scale is not None else 4.0)
    if args.out:
        out = Path(args.out)
    else:
        label = f"{size[0]}x{size[1]}" if size else f"x{scale:g}"
        out = _default_output(workspace, f"{Path(args.input).stem}-{label}.tif")
    job = EsrganJob(input=Path(args.input), output=out, model=find_upscaler(workspace, args.model), scale=scale,
                    size=size,
                    tile=args.tile, overlap=32 if args.overlap is None else args.overlap, batch=args.batch,
                    keep_16bit=args.keep_16bit,
                    dpi=args.dpi, icc=Path(args.icc) if args.icc else None, alpha=args.alpha,
                    device=args.device, precision=args.precision, compile=args.compile, print_dpi=args.print_dpi,
                    print_background=parse_colour(args.print_background))

    def show(the_plan) -> None:  # the size, passes and tiles, and the time when a job has timed them: as the app
        from blk.upscale.rates import rate_key, time_sentence

        key = rate_key("esrgan", str(job.model), job.tile, job.compile)
        _say(f"{the_plan.sentence()} {time_sentence(workspace, key, the_plan.tiles_left)}")

    result = _run_interruptible(lambda **hooks: run(job, on_plan=show, **hooks))
    if result is None:
        return 130
    print(file=sys.stderr)
    print(f"{result.width}×{result.height}, {result.bits}-bit, {result.passes} pass(es), "
          f"{result.tile} px tiles, {result.seconds:.1f} s: {result.path}")
    if result.resumed_from_tile:
        print(f"resumed after tile {result.resumed_from_tile} of an interrupted run")
    if result.print_path:
        print(f"print copy: {result.print_path}")
    return 0


def _progress_printer():
    """Tile progress with time left on stderr (from this session's pace: `rates.Pace`; the diffusion
    path's step and stage too); honours BLK_TEST_KILL_AFTER_TILES (tests only)."""
    from blk.upscale.rates import Pace

    pace = Pace(clock=time.monotonic)
    die_after = int(os.environ.get("BLK_TEST_KILL_AFTER_TILES") or 0)
    width = [0]  # of the longest line so far: a shorter one overwrites all of it

    def progress(done: int, total: int, stage=None) -> None:
        if die_after and done >= die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        line = pace.line(done, total, stage)
        width[0] = max(width[0], len(line) + 3)
        print(f"\r{line:<{width[0]}}", end="", file=sys.stderr, flush=True)
        progress.on_line = True

    progress.on_line = False  # a progress line is open: what is printed next starts a line of its own
    return progress


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_interruptible(call, log=_say):
    """Run a job with progress and notes on stderr; Ctrl+C keeps its files and says how to go on (None)."""
    progress = _progress_printer()
    try:
        return call(progress=progress, log=log)
    except KeyboardInterrupt:
        print("\nInterrupted; run the same command again to continue from the last finished row.",
              file=sys.stderr)
        return None
    except BaseException:
        if progress.on_line:  # the error's sentence was printed at the end of the last progress line
            print(file=sys.stderr)
        raise


def cmd_upscale_diffusion(args, workspace) -> int:
    from blk.generate.sketch import Lora
    from blk.models.device import MemoryOptions
    from blk.upscale.canvas import parse_colour
    from blk.upscale.diffusion import DiffusionJob, Pass, run
    from blk.upscale.models import find_upscaler
    from blk.upscale.rates import record

    size = _exact_size(args)
    scale = None if size else (args.scale if args.scale is not None else 2.0)
    try:
        denoise = [float(part) for part in args.denoise.replace(" ", "").split(",") if part]
    except ValueError:
        raise UserError(f"--denoise takes numbers like 0.3,0.2; got {args.denoise!r}.") from None
    lora = Lora.parse(args.lora) if args.lora else None
    if args.out:
        out = Path(args.out)
    else:
        label = f"{size[0]}x{size[1]}" if size else f"x{scale:g}"
        out = _default_output(workspace, f"{Path(args.input).stem}-diffusion-{label}.tif")
    job = DiffusionJob(input=Path(args.input), output=out, model=args.model, texture_lora=lora.path if lora else None,
                       scale=scale, size=size,
                       enlarge_model=find_upscaler(workspace, args.enlarge_model) if args.enlarge_model else None,
                       passes=tuple(Pass(d, lora.scale if lora else 1.0) for d in denoise),
                       step=args.step_scale, tile=args.tile or 1024,
                       overlap=96 if args.overlap is None else args.overlap, seed=args.seed, steps=args.steps,
                       prompt=args.prompt,
                       final_denoise=None if args.no_final_pass else 0.1, dpi=args.dpi, keep_16bit=args.keep_16bit,
                       icc=args.icc, print_dpi=args.print_dpi, print_background=parse_colour(args.print_background),
                       device=args.device, memory=MemoryOptions(compile=args.compile))
    on_plan, log = _plan_printer(job, workspace)
    result = _run_interruptible(lambda **hooks: run(job, workspace, on_plan=on_plan, **hooks), log)
    if result is None:
        return 130
    record(workspace, result.denoising_key, *result.denoising)  # the next job's estimate, here and in the app
    record(workspace, result.enlarging_key, *result.enlarging)
    print(file=sys.stderr)
    print(f"{result.width}×{result.height}, {result.bits}-bit, {len(result.sizes)} step(s) of {len(job.passes)} "
          f"pass(es), {result.tiles} tiles, {result.seconds:.1f} s: {result.path}")
    if result.print_path:
        print(f"print copy: {result.print_path}")
    return 0


def _plan_printer(job, workspace):
    """(`run`'s `on_plan`, its `log`): the plan (steps, passes, tiles, denoising steps) and the time it will
    take, on stderr before the first tile, as the app shows them, so that a mural's hours are known before
    they start; the notes the plan's sentence already gave are not said twice."""
    from blk.upscale.diffusion import denoising_rate_key, enlarge_rate_key
    from blk.upscale.rates import time_sentence

    shown: list[str] = []

    def show(the_plan) -> None:
        key = denoising_rate_key(job)
        enlarging = (enlarge_rate_key(job), the_plan.enlarge_left) if the_plan.enlarge_work else None
        shown.append(f"{the_plan.sentence()} {time_sentence(workspace, key, the_plan.work_left, enlarging)}")
        _say(shown[-1])

    def log(text: str) -> None:
        if not any(text in line for line in shown):
            _say(text)

    return show, log
