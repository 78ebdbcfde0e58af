"""Upscale tab: Real-ESRGAN (faithful, to about 8k) or diffusion + texture LoRA (mural sizes).

The form fills the engine's job objects (`blk.upscale.esrgan.EsrganJob`,
`blk.upscale.diffusion.DiffusionJob`); results are tiled TIFF (or PNG) in
`outputs/upscale/DATE/`, with a before/after slider on one region at full
resolution.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from ui.busy import click_while_busy
from ui.cancels import SessionCancels
from ui.context import StudioContext
from ui.tabs.sketch import model_names

ESRGAN, DIFFUSION = "Real-ESRGAN (faithful, to about 8k)", "Diffusion + texture LoRA (mural sizes)"
NO_LORA = ("(none)", "")  # the Texture LoRA's first choice and default: no LoRA unless the artist picks one
UPSCALER_SUFFIXES = (".pth", ".safetensors", ".ckpt", ".pt")
INPUT_TYPES = [".png", ".jpg", ".jpeg", ".jfif", ".webp", ".tif", ".tiff", ".bmp"]  # what the Upscale input takes


def upscaler_files(context: StudioContext) -> list[Path]:
    folder = context.workspace.models / "upscalers"
    return [p for p in sorted(folder.glob("*")) if p.suffix.lower() in UPSCALER_SUFFIXES]


def upscaler_choices(context: StudioContext) -> list[tuple[str, str]]:
    """The upscalers that load: a damaged file is neither offered, nor chosen by default, nor counted as installed
    (the banner and the Path's default); `unusable_upscalers` says why. Each file is read once per process
    (`upscale.models.FACTS`, by path, mtime and size), as the Models tab does."""
    return [(p.name, str(p)) for p in upscaler_files(context) if _unusable_reason(p) is None]


def unusable_upscalers(context: StudioContext) -> list[str]:
    """The sentence of each file in upscalers/ that cannot be used ("x.pth is damaged or not a model file …")."""
    return [reason for reason in map(_unusable_reason, upscaler_files(context)) if reason]


def _unusable_reason(path: Path) -> str | None:
    from blk.errors import UserError
    from blk.upscale.models import upscaler_facts

    try:
        upscaler_facts(path)
    except UserError as exc:
        return str(exc)
    return None


def no_upscaler(context: StudioContext) -> str:
    """Why the Real-ESRGAN path cannot run: nothing installed, or only files that cannot be used."""
    unusable = unusable_upscalers(context)
    return NO_UPSCALER + (f" Found but unusable: {' '.join(unusable)}" if unusable else "")


def default_upscaler(context: StudioContext) -> str | None:
    """The first installed ×4 model (Scale's default, the paper's RealESRGAN_x4plus), else the first installed:
    an x2 model first in the alphabet made a ×4 job two ×2 passes."""
    from blk.upscale.models import upscaler_facts

    values = [value for _, value in upscaler_choices(context)]
    fours = [value for value in values if upscaler_facts(value).scale == 4]
    return (fours or values or [None])[0]


def upscaler_kept_or_default(context: StudioContext, current):
    """The Upscaler list on opening the tab: the one chosen if it is still there, else `default_upscaler` (one
    put in upscalers/ while the app ran, or sent from Sketch to the Real-ESRGAN path, was left blank)."""
    choices = upscaler_choices(context)
    values = [value for _, value in choices]
    return gr.Dropdown(choices=choices, value=current if current in values else default_upscaler(context))


def lora_choices(context: StudioContext) -> list[tuple[str, str]]:
    """"(none)" first, then every LoRA found (run checkpoints, models/loras)."""
    from blk.generate.library import available_loras

    return [NO_LORA] + [(label, str(path)) for label, path in available_loras(context.workspace)]


def lora_line(lora, strength: float = 1.0) -> str:
    """Which texture LoRA the diffusion path uses, and at what strength, in the plan and the status."""
    if not lora:
        return "Texture LoRA: none (the base model alone)."
    path = Path(lora)
    name = f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name
    strength = 1.0 if strength in (None, "") else float(strength)
    return f"Texture LoRA: `{name}`" + (f" at strength {strength:g}." if strength != 1.0 else ".")


def target(image_path, scale, size_text, path_kind: str | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """((input width, height), (result width, height)) from the file's header alone: this runs on every keystroke
    in Scale and Size, and decoding a 12 MP input took 0.44 s each time. An empty Scale is the path's default
    (`PATH_DEFAULTS`; ESRGAN's ×4 without a path), as the job takes it."""
    from blk.generate.sizes import parse_size
    from blk.upscale.esrgan import check_shape, target_size
    from blk.upscale.source import input_size

    width, height = input_size(image_path)
    size = parse_size(size_text) if (size_text or "").strip() else None
    check_shape(width, height, size)
    default = PATH_DEFAULTS[path_kind or ESRGAN]["scale"]
    chosen = None if size else float(default if scale in (None, "") else scale)  # 0 is a value, said to be wrong
    return (width, height), target_size(width, height, chosen, size)


def esrgan_job(context: StudioContext, image_path, output, width, height, upscaler_path, tile, overlap,
               keep_16bit=False, dpi=None, print_dpi=None, compile_models=False):
    from blk.upscale.esrgan import EsrganJob

    return EsrganJob(input=Path(image_path), output=output, model=upscaler_path, scale=None, size=(width, height),
                     tile=int(tile) if tile else None, overlap=32 if overlap in (None, "") else int(overlap),
                     keep_16bit=bool(keep_16bit),
                     dpi=float(dpi) if dpi else None, print_dpi=float(print_dpi) if print_dpi else None,
                     device=context.workspace.settings.device, compile=bool(compile_models))


def enlarge_line(enlarge_first, upscaler) -> str:
    """How each step of the diffusion path enlarges before its passes, said in the plan and the status."""
    if enlarge_first and upscaler:
        return f"Each step enlarges with `{Path(upscaler).name}` before its passes."
    if enlarge_first:
        return "No upscaler chosen, so each step enlarges with Lanczos before its passes."
    return "Each step enlarges with Lanczos before its passes."


def time_line(context: StudioContext, key: str, units: int, enlarging: tuple[str, int] | None = None) -> str:
    """`units`: the ESRGAN plan's tiles, the diffusion plan's tile-steps (`DiffusionPlan.work`); `enlarging`: the
    diffusion plan's enlargements (their rate key, the pixels they make)."""
    from blk.upscale.rates import time_sentence

    return time_sentence(context.workspace, key, units, enlarging)


def estimate(context: StudioContext, image_path, path_kind, scale, size_text, upscaler, model, tile, overlap, steps,
             denoise_a, denoise_b, use_c, denoise_c, final_pass, step_scale=None, lora=None, enlarge_first=False,
             compile_models=False, fmt="TIFF", seed=0, prompt="", lora_strength=1.0):
    """What the job will do, before it starts: size, suggested path, tiles of every pass (with the texture
    LoRA, or none), and time when known; where Start resumes an interrupted run of the job, and the time left
    (at the output Start would write, `fmt` naming its kind; `seed` and `prompt` are of the diffusion job too)."""
    from blk.errors import UserError
    from blk.upscale import diffusion, esrgan
    from blk.upscale.compare import suggested_path
    from blk.upscale.rates import rate_key

    if not image_path:
        return "Choose an image first."
    try:
        (input_width, input_height), (width, height) = target(image_path, scale, size_text, path_kind)
    except (UserError, ValueError) as exc:
        return f"**{exc}**"
    if not upscaler_choices(context):
        hint = "the diffusion path (no upscaler is installed)"
    else:
        hint = "Real-ESRGAN" if suggested_path(width, height) == "esrgan" else "the diffusion path"
    lines = [f"{input_width}×{input_height} → **{width}×{height}** ({megapixels(width * height)}); "
             f"suggested for this size: {hint}."]
    enlarging = None  # the diffusion path's enlargements, timed apart
    try:
        if path_kind == DIFFUSION:
            lora_path = context.workspace.confine(lora) if lora else None  # its family is checked against the model's
            enlarge_path = context.workspace.confine(upscaler) if enlarge_first and upscaler else None  # is there
            job = diffusion_job(context, image_path, job_output(context, image_path, "diffusion", width, height, fmt),
                                scale, size_text, model, lora_path, enlarge_path, tile, overlap, steps, seed, prompt,
                                denoise_a, denoise_b, use_c, denoise_c, final_pass, step_scale,
                                lora_strength=lora_strength)
            the_plan = diffusion.estimate(job, context.workspace)
            lines += [the_plan.sentence(), enlarge_line(enlarge_first, upscaler), lora_line(lora, lora_strength)]
            count, key = the_plan.work_left, diffusion.denoising_rate_key(job, bool(compile_models))
            if the_plan.enlarge_work:  # what is left of them: a resume's finished stages take no time
                enlarging = (diffusion.enlarge_rate_key(job, bool(compile_models)), the_plan.enlarge_left)
        else:
            if not upscaler:
                return "  \n".join(lines + ["Choose an upscaler model to count its tiles."])
            model_path = context.workspace.confine(upscaler)
            the_plan = esrgan.estimate(esrgan_job(context, image_path,
                                                  job_output(context, image_path, "esrgan", width, height, fmt),
                                                  width, height, model_path, tile, overlap))
            lines.append(the_plan.sentence() + ("" if tile else " (automatic tile size, from free memory now)"))
            lines += [the_plan.resume_note] if the_plan.resume_note else []
            count, key = the_plan.tiles_left, rate_key("esrgan", str(model_path), int(tile) if tile else None,
                                                       bool(compile_models))
    except (UserError, ValueError) as exc:
        return "  \n".join(lines + [f"**{exc}**"])
    lines.append(time_line(context, key, count, enlarging))
    return "  \n".join(lines)


def show_input(image_path):
    """(a small view of the chosen file, a line about it: size, bits, transparency), or one sentence."""
    from blk.errors import UserError
    from blk.upscale.source import input_preview

    if not image_path:
        return None, ""
    try:
        return input_preview(image_path)
    except UserError as exc:
        return None, f"**{exc}**"


PICKED = "picked"  # the suggestion state once the artist picked a path: suggestions stop moving the radio


def follow_suggestion(image_path, scale, size_text, last, upscalers: bool = True):
    """(the Path radio, the suggestion) after the image, scale or size changed (`suggested_path`: up to 8k
    Real-ESRGAN, larger the diffusion path; always the diffusion path when no upscaler is installed,
    `upscalers` False). The radio moves only when the suggestion changes — the first image (`last` None) or
    a target crossing 8k — and never after the artist picked a path (`last` is `PICKED`): their choice
    stays for the next image too, and Estimate still says what is suggested."""
    from blk.errors import UserError
    from blk.upscale.compare import suggested_path

    if not image_path or last == PICKED:
        return gr.update(), last
    try:
        _, (width, height) = target(image_path, scale, size_text)
    except (UserError, ValueError):
        return gr.update(), last
    kind = suggested_path(width, height) if upscalers else "diffusion"
    if kind == last:
        return gr.update(), last
    return gr.Radio(value=ESRGAN if kind == "esrgan" else DIFFUSION), kind


def preset_form(context: StudioContext, name: str | None, kept: dict | None,
                form: dict | None = None) -> tuple[dict, dict, str]:
    """(the form's new values by field name, the paths' kept settings, a note) for the preset `name`
    (`blk.upscale.preset`). The path it names counts as picked, and keeps the preset's scale, tile and overlap
    (`switch_path` then moves nothing); `form`: the scale, tile and overlap the form shows, kept for the path it
    leaves, as a switch of the Path keeps them. A file it names that this workspace lacks is said, and the form
    keeps its own choice there. Files are looked for in the workspace only, never in the app's working folder."""
    from blk.upscale.preset import find_texture_lora, load_preset

    preset = load_preset(name)
    kind = DIFFUSION if preset.path == "diffusion" else ESRGAN
    passes = list(preset.denoise) + [None]  # A, B and C when it has one
    defaults = PATH_DEFAULTS[kind]
    values = {"path_kind": kind, "scale": preset.scale or defaults["scale"], "size_text": "",
              "tile": preset.tile or defaults["tile"],
              "overlap": defaults["overlap"] if preset.overlap is None else preset.overlap}
    notes = []
    given = Path(preset.upscaler) if preset.upscaler else None
    found = given if given is None or given.is_absolute() else context.workspace.models / "upscalers" / given.name
    if found is not None and found.is_file():
        values["upscaler"] = str(found)
    elif found is not None:  # the form keeps the upscaler it has (the diffusion path: Lanczos), and says so
        notes.append(f"{preset.upscaler} is not in workspace/models/upscalers (the README's Real weights says where "
                     "it comes from); the form keeps its upscaler"
                     + (", and each step enlarges with Lanczos." if kind == DIFFUSION else "."))
    if preset.path == "diffusion":
        lora = find_texture_lora(context.workspace, preset.texture_lora, from_here=False) \
            if preset.texture_lora else None
        if lora is not None and not (lora.is_absolute() and lora.is_file()):  # never the working folder's
            notes.append(f"The texture LoRA {preset.texture_lora} is not among this workspace's LoRAs; none is "
                         "chosen.")
            lora = None
        values |= {"model": preset.model, "lora": str(lora) if lora else NO_LORA[1],
                   "lora_strength": preset.lora_strength, "enlarge_first": "upscaler" in values,
                   "prompt": preset.prompt, "denoise_a": passes[0], "denoise_b": passes[1],
                   "use_c": passes[2] is not None, "steps": preset.steps or 0, "seed": preset.seed,
                   "step_scale": preset.step_scale, "final_pass": preset.final_pass}
        if passes[2] is not None:
            values["denoise_c"] = passes[2]
    kept = dict(kept or {})
    if form and kept.get("shown") and kept["shown"] != kind:  # the path left keeps what the form had
        kept[kept["shown"]] = form
    kept |= {"shown": kind, kind: {k: values[k] for k in ("scale", "tile", "overlap")}}
    return values, kept, "  \n".join(notes)


PATH_DEFAULTS = {ESRGAN: {"scale": 4, "tile": 0, "overlap": 32}, DIFFUSION: {"scale": 2, "tile": 1024, "overlap": 96}}


def path_settings(kind: str, kept: dict | None) -> dict:
    """The Scale, Tile and Overlap that `kind` had when the artist left it, else its defaults."""
    return (kept or {}).get(kind) or PATH_DEFAULTS[kind]


def switch_path(kind: str, scale, tile, overlap, kept: dict | None) -> tuple[bool, dict, dict]:
    """(the diffusion settings shown, what each path keeps, `kind`'s values) when the Path radio moves: the path
    left keeps what the form had (an overlap typed for Real-ESRGAN is there again after a look at the
    diffusion path), the path shown gets what it had, or its defaults the first time."""
    form = {"scale": scale, "tile": tile, "overlap": overlap}
    kept = dict(kept or {})
    left = kept.get("shown")
    if left == kind:  # the radio set to the path it showed: nothing moves
        return kind == DIFFUSION, kept, form
    if left:
        kept[left] = form
    kept["shown"] = kind
    return kind == DIFFUSION, kept, path_settings(kind, kept)


def show_region(made, region_x, region_y):
    """The before/after pair around the chosen centre (percent of the result's width and height). `made` is
    the last job's (input, result): the input it was made from, not the file chosen since (a new image's view
    was stretched over the old result)."""
    from blk.errors import UserError
    from blk.upscale.compare import region_pair

    if not made:
        return gr.update()
    image_path, result_path = made
    try:
        return region_pair(Path(image_path), Path(result_path), (float(region_x) / 100, float(region_y) / 100))
    except (UserError, ValueError, OSError):
        return gr.update()


def diffusion_job(context, image_path, output, scale, size_text, model, lora, enlarge_model, tile, overlap, steps,
                  seed, prompt, denoise_a, denoise_b, use_c, denoise_c, final_pass, step_scale=None,
                  compile_models=False, lora_strength=1.0):
    from blk.generate.sizes import parse_size
    from blk.models.device import MemoryOptions
    from blk.upscale.diffusion import STEP, DiffusionJob, Pass

    size = parse_size(size_text) if (size_text or "").strip() else None
    scale = PATH_DEFAULTS[DIFFUSION]["scale"] if scale in (None, "") else scale  # as `target` names the result
    strength = 1.0 if lora_strength in (None, "") else float(lora_strength)  # every pass's, as the paper's 1.0
    passes = [Pass(float(denoise_a), strength), Pass(float(denoise_b), strength)] + \
        ([Pass(float(denoise_c), strength)] if use_c else [])
    return DiffusionJob(input=Path(image_path), output=output, model=model, texture_lora=lora,
                        scale=None if size else float(scale), size=size, enlarge_model=enlarge_model,
                        passes=tuple(passes), step=float(step_scale or STEP), tile=int(tile or 1024),
                        overlap=96 if overlap in (None, "") else int(overlap), seed=int(seed or 0),
                        steps=int(steps) if steps else None,
                        prompt=prompt or "",
                        final_denoise=0.1 if final_pass else None, device=context.workspace.settings.device,
                        memory=MemoryOptions(compile=bool(compile_models)))


def job_output(context, image_path, kind: str, width: int, height: int, fmt: str) -> Path:
    """The file a job of these settings writes (`output_path`): named by its input, path and size."""
    return output_path(context.workspace.outputs("upscale"),
                       f"{Path(image_path).stem}-{kind}-{width}x{height}.{'tif' if fmt == 'TIFF' else 'png'}")


def output_path(upscales: Path, name: str, today: str | None = None) -> Path:
    """Where a job's result goes: today's folder (`today`, YYYY-MM-DD), under a name no earlier result has
    (two settings compared, not one lost; OUT.tif and OUT.png share OUT.print.tif, so a name is free when its
    print copy's is too). An interrupted or cancelled job left no result under its name, so starting it again
    finds its tiles there, and continues — on another day too: a job stopped before midnight and started
    again after it continues in its own day's folder, where it used to start afresh and leave its hidden
    canvases (gigabytes, for a mural) behind. (Started again with other settings, it starts afresh there and
    removes them.)"""
    from blk.upscale.canvas import print_path
    from blk.upscale.journal import Journal
    from blk.workspace import free_path

    today = upscales / (today or time.strftime("%Y-%m-%d"))
    earlier = sorted((day for day in upscales.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]")
                      if day.is_dir() and day != today), reverse=True)
    for day in [today, *earlier]:
        candidate = free_path(day / name, companions=(print_path,))
        if Journal.path_for(candidate).exists():
            return candidate
    return free_path(today / name, companions=(print_path,))


def upscale(context: StudioContext, cancel: threading.Event, image_path, path_kind, scale, size_text, upscaler,
            model, lora, enlarge_first, tile, overlap, steps, seed, prompt, denoise_a, denoise_b, use_c, denoise_c,
            final_pass, fmt, keep_16bit, dpi, print_dpi=None, region_x=50, region_y=50, step_scale=None,
            compile_models=False, lora_strength=1.0, progress=gr.Progress()):
    """Run the job; the plan (tiles of every pass, time when known) and a resume show in the progress
    before the tiles start, then each report's line (`rates.Pace`: the diffusion path's step and what
    it is doing, an enlargement's own tiles too) with the time left at this session's pace."""
    from blk.errors import UserError
    from blk.upscale import diffusion, esrgan
    from blk.upscale.compare import region_pair
    from blk.upscale.rates import Pace, rate_key, record
    from blk.upscale.source import open_input

    if not image_path:
        return None, None, "Choose an image first.", None
    started = time.monotonic()
    pace, notes, planned, timed = Pace(), [], [], []

    def log(text):  # e.g. that an interrupted job resumes: in the progress now, in the status at the end
        if any(text in shown for shown in planned):
            return  # a notice the plan already gave
        notes.append(text)
        progress(0, desc=" ".join(notes + planned + timed))

    def show(the_plan, tiles):  # the engine's plan and the time it takes, before the first tile
        used = f" {enlarge_line(enlarge_first, upscaler_path)} {lora_line(lora_path, lora_strength)}" \
            if kind == "diffusion" else ""
        planned.append(f"{the_plan.sentence()}{used}")
        enlarging = (diffusion.enlarge_rate_key(job), the_plan.enlarge_left) \
            if kind == "diffusion" and the_plan.enlarge_work else None
        timed.append(time_line(context, key, tiles, enlarging))  # for the wait only: the result says how long it took
        progress(0, desc=" ".join(notes + planned + timed))

    def report(done, total, stage=None):  # `stage`: the diffusion path's (`diffusion.Stage`)
        prefix = f"{notes[-1]} " if notes else ""
        progress(done / max(total, 1), desc=f"{prefix}{pace.line(done, total, stage)}")

    try:
        upscaler_path = context.workspace.confine(upscaler) if upscaler else None
        lora_path = context.workspace.confine(lora) if lora else None
        _, (width, height) = target(image_path, scale, size_text, path_kind)
        if keep_16bit and fmt != "TIFF" and open_input(image_path).bit_depth == 16:  # 16 bits only of a 16-bit input
            raise UserError(SIXTEEN_BITS_NEED_TIFF)  # before any work, in the form's words, on both paths
        kind = "esrgan" if path_kind == ESRGAN else "diffusion"
        output = job_output(context, image_path, kind, width, height, fmt)
        key = rate_key(kind, model if kind == "diffusion" else str(upscaler_path),
                       int(tile) if tile else (1024 if kind == "diffusion" else None), bool(compile_models))
        if kind == "esrgan":
            if upscaler_path is None:
                raise UserError(no_upscaler(context) if not upscaler_choices(context) else "Choose an upscaler model.")
            job = esrgan_job(context, image_path, output, width, height, upscaler_path, tile, overlap,
                             keep_16bit and fmt == "TIFF", dpi, print_dpi, compile_models)
            result = esrgan.run(job, progress=report, cancel=cancel, log=log,
                                on_plan=lambda p: show(p, p.tiles_left))
        else:
            job = diffusion_job(context, image_path, output, scale, size_text, model, lora_path,
                                upscaler_path if enlarge_first else None, tile, overlap, steps, seed, prompt,
                                denoise_a, denoise_b, use_c, denoise_c, final_pass, step_scale, compile_models,
                                lora_strength)
            job.dpi = float(dpi) if dpi else None
            job.print_dpi = float(print_dpi) if print_dpi else None
            job.keep_16bit = bool(keep_16bit) and fmt == "TIFF"
            result = diffusion.run(job, context.workspace, context.sketcher.cache, progress=report, cancel=cancel,
                                   log=log, on_plan=lambda p: show(p, p.work_left))
        if kind == "diffusion":  # seconds per tile-step, as the engine timed its denoising
            seconds, tiles = result.denoising
        else:
            seconds, tiles = pace.tiles.measured()  # this session's tiles only (a resume's earlier ones are not)
            if not tiles and pace.tiles.last and not result.resumed_from_tile:  # one report (one batch): the job
                seconds, tiles = time.monotonic() - started, pace.tiles.last[0]
        if kind == "diffusion":  # the denoiser's and the enlargements' paces, each as its model ran
            key = result.denoising_key
            record(context.workspace, result.enlarging_key, *result.enlarging)
        elif compile_models and not result.parameters.get("compile"):  # the compiler failed: an uncompiled pace
            key = rate_key(kind, str(upscaler_path), int(tile) if tile else None)
        record(context.workspace, key, seconds, tiles)
        centre = tuple(float(50 if v is None else v) / 100 for v in (region_x, region_y))
        before, after = region_pair(Path(image_path), result.path, centre)
    except UserError as exc:
        return None, None, f"**{exc}**", None
    except ValueError as exc:
        return None, None, f"**A value in the form is not valid ({exc}).**", None
    printed = result.print_path
    done = (f"{result.width}×{result.height} in {time.monotonic() - started:.0f} s — a {before.width} px region "
            f"of the result below, cut at its own pixels (left: the input enlarged plainly; the view fits it to the "
            f"window). Saved: `{result.path}`"
            + (f"; print copy: `{printed}`" if printed else ""))
    # the Result box offers this job's files: the master, and its print copy when this job made one
    files = [str(result.path)] + ([str(printed)] if printed else [])
    return (before, after), files, "  \n".join(notes + planned + [done]), [str(image_path), str(result.path)]


def megapixels(pixels: int) -> str:
    """"12.6 MP", "0.05 MP" (a 256×192 result read "0.0 MP"), "3.1 GP" for murals."""
    if pixels >= 1e9:
        return f"{pixels / 1e9:.1f} GP"
    return f"{pixels / 1e6:.1f} MP" if pixels >= 1e6 else f"{pixels / 1e6:.2g} MP"


SIXTEEN_BITS_NEED_TIFF = ("This image has 16 bits and Keep 16-bit writes them as TIFF only: choose the TIFF format, "
                          "or untick Keep 16-bit.")
NO_UPSCALER = ("No upscaler is installed: put a Real-ESRGAN (or any spandrel) model file in "
               "workspace/models/upscalers/, or use the diffusion path, which enlarges with Lanczos without one.")


def build(context: StudioContext) -> dict:
    from blk.upscale.diffusion import PAPER_PASSES, PASS_C, STEP
    from blk.upscale.preset import DENOISE_RANGES, preset_names

    cancels = SessionCancels()
    installed = bool(upscaler_choices(context))  # without an upscaler only the diffusion path can run
    with gr.Row():
        with gr.Column(scale=2):
            # the file itself, as it is: a browser image field re-saves uploads as 8-bit RGB (transparency and
            # 16 bits lost) and refuses files larger than Pillow's limit; the view below is made from the file
            image = gr.File(label="Image to upscale (PNG, JPEG, WebP, TIFF, BMP; any size)", type="filepath",
                            file_types=INPUT_TYPES, elem_id="blk-upscale-input")
            with gr.Row(equal_height=True):
                image_view = gr.Image(label="Input", interactive=False, type="numpy", height=200, scale=1,
                                      show_label=False, elem_classes=["blk-checker"], elem_id="blk-upscale-view")
                image_note = gr.Markdown(elem_id="blk-upscale-input-note")
            with gr.Row(equal_height=True):
                preset = gr.Dropdown(preset_names(), value=None, label="Preset (fills the form: the paper's recipes)",
                                     elem_id="blk-upscale-preset", scale=1)
                preset_note = gr.Markdown(elem_id="blk-upscale-preset-note")
            path_kind = gr.Radio([ESRGAN, DIFFUSION], value=ESRGAN if installed else DIFFUSION, label="Path")
            first = PATH_DEFAULTS[path_kind.value]  # the settings of the path the tab starts on
            with gr.Row():
                scale = gr.Number(first["scale"], label="Scale")
                size_text = gr.Textbox(label="…or exact size WxH", placeholder="8000x6000")
            upscaler = gr.Dropdown(upscaler_choices(context), value=default_upscaler(context),
                                   label="Upscaler (workspace/models/upscalers)",
                                   allow_custom_value=True, elem_id="blk-upscale-model")
            with gr.Group(visible=not installed) as diffusion_group:
                model = gr.Dropdown(model_names(context), value=context.default_model(), label="Base model",
                                    allow_custom_value=True)
                lora = gr.Dropdown(lora_choices(context), value=NO_LORA[1], label="Texture LoRA",
                                   allow_custom_value=True, elem_id="blk-upscale-lora")
                lora_strength = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="Texture LoRA strength")
                enlarge_first = gr.Checkbox(installed, label="Enlarge with the upscaler first (else Lanczos)")
                prompt = gr.Textbox(label="Prompt (usually empty)")
                with gr.Row():
                    denoise_a = gr.Slider(*DENOISE_RANGES[0], value=PAPER_PASSES[0].denoise, step=0.01,
                                          label="Pass A denoise (texture)")
                    denoise_b = gr.Slider(*DENOISE_RANGES[1], value=PAPER_PASSES[1].denoise, step=0.01,
                                          label="Pass B denoise (refine)")
                # stacked, not side by side: in a row the slider's end was cut off in a narrow window
                use_c = gr.Checkbox(False, label="Pass C (edges)")
                denoise_c = gr.Slider(*DENOISE_RANGES[2], value=PASS_C.denoise, step=0.01, label="Pass C denoise",
                                      interactive=False)  # while Pass C is off (`use_c`)
                with gr.Row():
                    steps = gr.Number(0, label="Steps (0: the model's default)", precision=0)
                    seed = gr.Number(0, label="Seed (same for every tile)", precision=0)
                step_scale = gr.Slider(1.5, STEP, value=STEP, step=0.5, label="Largest enlargement per step",
                                       info="Each step enlarges at most this much, then its passes refine it; "
                                            "smaller steps: more steps, more time, detail drawn at every size.",
                                       elem_id="blk-upscale-step-scale")
                final_pass = gr.Checkbox(True, label="Final low-denoise pass over the whole frame (when it fits)")
            with gr.Row():
                tile = gr.Number(first["tile"], label="Tile px (0: automatic)", precision=0,
                                 elem_id="blk-upscale-tile")
                overlap = gr.Number(first["overlap"], label="Overlap px", precision=0)
            with gr.Row():
                fmt = gr.Radio(["TIFF", "PNG"], value="TIFF", label="Format (TIFF: tiled, any size)")
                keep_16bit = gr.Checkbox(False, label="Keep 16-bit (TIFF)")
                dpi = gr.Number(0, label="DPI (0: the input's)")
                print_dpi = gr.Number(0, label="Print copy DPI (0: none)", elem_id="blk-upscale-print-dpi")
            compile_models = gr.Checkbox(context.workspace.settings.compile, elem_id="blk-upscale-compile",
                                         label="Speed: compile the models (the first tiles wait for the compiler; "
                                               "meant for large jobs)")
        with gr.Column(scale=3):
            # the actions above their status, not below the long form: with the diffusion path's settings
            # open, the buttons were a screen away from what they report
            with gr.Row():
                plan_button = gr.Button("Estimate", elem_id="blk-upscale-estimate")
                go = gr.Button("Upscale", variant="primary", elem_id="blk-upscale-go")
                stop = gr.Button("Cancel", elem_id="blk-upscale-cancel")
            status = gr.Markdown(elem_id="blk-upscale-status")
            slider = gr.ImageSlider(label="Before | after (one region of the result)", type="pil", format="png",
                                    elem_id="blk-upscale-slider", max_height=700)
            with gr.Row(elem_classes="blk-wrap"):  # side by side when wide, one above the other when narrow
                region_x = gr.Slider(0, 100, value=50, step=1, label="Region centre, % across",
                                     elem_id="blk-upscale-region-x", min_width=220)
                region_y = gr.Slider(0, 100, value=50, step=1, label="Region centre, % down",
                                     elem_id="blk-upscale-region-y", min_width=220)
            result_file = gr.File(label="Result (and its print copy)", file_count="multiple",
                                  elem_id="blk-upscale-result")
    made = gr.State(None)  # the last job's (input, result), kept on the server: the region is read from them again
    suggestion = gr.State(None)  # the last suggested path ("esrgan" or "diffusion")

    # each path's own Scale, Tile and Overlap while another path is shown, and which path the form shows
    settings = gr.State({"shown": path_kind.value})

    def on_path(kind, scale_value, tile_value, overlap_value, kept):  # whoever moved the radio
        group, kept, values = switch_path(kind, scale_value, tile_value, overlap_value, kept)
        return gr.Group(visible=group), gr.Number(value=values["tile"]), gr.Number(value=values["overlap"]), kept

    # the scale only when the user picks a path: a suggestion follows the scale they typed, so it stays
    use_c.change(lambda on: gr.Slider(interactive=bool(on)), inputs=use_c, outputs=denoise_c, queue=False,
                 show_progress="hidden")
    # the Path's handlers run one at a time (one queue): each reads the settings and suggestion states as the
    # one before left them, so a pick and a suggestion, or two quick picks, never interleave their writes
    one_at_a_time = {"concurrency_id": "blk-upscale-path", "concurrency_limit": 1}
    path_kind.change(on_path, inputs=[path_kind, scale, tile, overlap, settings],
                     outputs=[diffusion_group, tile, overlap, settings], **one_at_a_time)
    path_kind.input(lambda kind, kept: (gr.Number(value=path_settings(kind, kept)["scale"]), PICKED),
                    inputs=[path_kind, settings], outputs=[scale, suggestion], **one_at_a_time)
    def suggest(image_path, scale_value, size_value, last):  # whether an upscaler is installed: asked each time
        return follow_suggestion(image_path, scale_value, size_value, last, bool(upscaler_choices(context)))

    def on_image(image_path, scale_value, size_value, last):
        """The input's view and note, and the path suggested for it, in one event: as two events, the suggestion
        sometimes arrived after the note, and after the artist had picked a path (which it then undid)."""
        return (*show_input(image_path), *suggest(image_path, scale_value, size_value, last))

    # a suggestion takes milliseconds: no loading cover over the Path radio (a queued one kept a click off it)
    image.change(on_image, inputs=[image, scale, size_text, suggestion],
                 outputs=[image_view, image_note, path_kind, suggestion], show_progress="hidden", **one_at_a_time)
    for typed in (scale, size_text):
        # the last keystroke always counts: a key typed while a suggestion ran was dropped ("once")
        typed.input(suggest, inputs=[image, scale, size_text, suggestion], outputs=[path_kind, suggestion],
                    show_progress="hidden", trigger_mode="always_last", **one_at_a_time)
    for axis in (region_x, region_y):
        # dragged or typed (release missed a typed value); during a drag only the last position is read
        axis.input(show_region, inputs=[made, region_x, region_y], outputs=slider,
                   trigger_mode="always_last", show_progress="hidden")
    form = {"path_kind": path_kind, "scale": scale, "size_text": size_text, "upscaler": upscaler, "model": model,
            "lora": lora, "lora_strength": lora_strength, "enlarge_first": enlarge_first, "prompt": prompt,
            "denoise_a": denoise_a, "denoise_b": denoise_b, "use_c": use_c, "denoise_c": denoise_c, "steps": steps,
            "seed": seed, "step_scale": step_scale, "final_pass": final_pass, "tile": tile, "overlap": overlap}

    def on_preset(name, kept, scale_value, tile_value, overlap_value):
        """The form filled from the preset; the Path's handlers then see it as picked, with these settings."""
        from blk.errors import UserError

        if not name:
            return {preset_note: ""}
        try:
            values, kept, note = preset_form(context, name, kept,
                                             {"scale": scale_value, "tile": tile_value, "overlap": overlap_value})
        except UserError as exc:
            return {preset_note: f"**{exc}**"}
        return {form[field]: value for field, value in values.items()} | {settings: kept, suggestion: PICKED,
                                                                          preset_note: note}

    preset.input(on_preset, inputs=[preset, settings, scale, tile, overlap], outputs=[*form.values(), settings, suggestion, preset_note],
                 show_progress="hidden", **one_at_a_time)  # milliseconds: no cover over the Path radio
    plan_button.click(lambda *a: estimate(context, *a),
                      inputs=[image, path_kind, scale, size_text, upscaler, model, tile, overlap, steps, denoise_a,
                              denoise_b, use_c, denoise_c, final_pass, step_scale, lora, enlarge_first,
                              compile_models, fmt, seed, prompt, lora_strength],
                      outputs=status)
    click_while_busy(go, "Upscaling…",
                     cancels.job(lambda cancel, *a, progress: upscale(context, cancel, *a, progress=progress)),
                     inputs=[image, path_kind, scale, size_text, upscaler, model, lora, enlarge_first, tile, overlap,
                             steps, seed, prompt, denoise_a, denoise_b, use_c, denoise_c, final_pass, fmt, keep_16bit,
                             dpi, print_dpi, region_x, region_y, step_scale, compile_models, lora_strength],
                     outputs=[slider, result_file, status, made], api_name="upscale",
                     show_progress_on=[slider])  # once, over the view it fills (it covered the plan thrice)
    stop.click(cancels.cancel, queue=False)
    on_show = (lambda: (gr.Dropdown(choices=upscaler_choices(context)), gr.Dropdown(choices=lora_choices(context)),
                        gr.Dropdown(choices=model_names(context))), [upscaler, lora, model])
    return {"image": image, "on_show": on_show,
            "on_open": (lambda current: upscaler_kept_or_default(context, current), [upscaler], upscaler)}
