"""Upscale tab: Real-ESRGAN (faithful, to about 8k) or diffusion + texture LoRA (mural sizes).

The form fills the engine's job objects (`blk.upscale.esrgan.EsrganJob`,
`blk.upscale.diffusion.DiffusionJob`); results are tiled BigTIFF (or PNG) in
`outputs/upscale/DATE/`, with a before/after slider on one region at full
resolution.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from ui.context import StudioContext
from ui.tabs.sketch import model_names

ESRGAN, DIFFUSION = "Real-ESRGAN (faithful, to about 8k)", "Diffusion + texture LoRA (mural sizes)"
UPSCALER_SUFFIXES = (".pth", ".safetensors", ".ckpt", ".pt")


def upscaler_choices(context: StudioContext) -> list[tuple[str, str]]:
    folder = context.workspace.models / "upscalers"
    return [(p.name, str(p)) for p in sorted(folder.glob("*")) if p.suffix.lower() in UPSCALER_SUFFIXES]


def lora_choices(context: StudioContext) -> list[tuple[str, str]]:
    from blk.generate.library import available_loras

    return [(label, str(path)) for label, path in available_loras(context.workspace)]


def target(image_path, scale, size_text):
    from blk.generate.sizes import parse_size
    from blk.upscale.esrgan import target_size
    from blk.upscale.source import open_input

    opened = open_input(image_path)
    size = parse_size(size_text) if (size_text or "").strip() else None
    return opened, target_size(opened.width, opened.height, None if size else float(scale or 4), size)


def estimate(context: StudioContext, image_path, path_kind, scale, size_text, upscaler, model, tile, overlap, steps,
             denoise_a, denoise_b, use_c, denoise_c, final_pass):
    """What the job will do, before it starts: size, suggested path, tiles, and time when known."""
    from blk.errors import UserError
    from blk.upscale.rates import estimate_seconds, rate_key, say_duration
    from blk.generate.sketch import defaults_for_name
    from blk.upscale.compare import suggested_path
    from blk.upscale.diffusion import plan
    from blk.upscale.tiler import count_tiles
    from blk.generate.sizes import SIZE_MULTIPLE
    from blk.models.registry import KNOWN_MODELS

    if not image_path:
        return "Choose an image first."
    try:
        opened, (width, height) = target(image_path, scale, size_text)
    except (UserError, ValueError) as exc:
        return f"**{exc}**"
    hint = "Real-ESRGAN" if suggested_path(width, height) == "esrgan" else "the diffusion path"
    lines = [f"{opened.width}×{opened.height} → **{width}×{height}** ({width * height / 1e6:.1f} MP); "
             f"suggested for this size: {hint}."]
    if path_kind == DIFFUSION:
        job = diffusion_job(context, image_path, Path("x.tif"), scale, size_text, model, None, None, tile, overlap,
                            steps, 0, "", denoise_a, denoise_b, use_c, denoise_c, final_pass)
        steps_default = (defaults_for_name(model, context.workspace) or (28, 3.5))[0]
        known = KNOWN_MODELS.get(model)
        grid = SIZE_MULTIPLE[known.family] if known else 1  # what the tiles are rounded to (unknown model: nothing)
        try:
            the_plan = plan(job, opened.width, opened.height, steps_default, grid)
        except UserError as exc:
            return "  \n".join(lines + [f"**{exc}**"])
        lines.append(the_plan.sentence())
        count, key = the_plan.tiles_per_pass * the_plan.passes, rate_key("diffusion", model, job.tile)
    else:
        side = int(tile) if tile else max(512, 4 * int(overlap or 32))  # as `esrgan.run` floors its automatic tile
        try:
            count = count_tiles(opened.width, opened.height, side, int(overlap or 32))
        except UserError as exc:
            return "  \n".join(lines + [f"**{exc}**"])
        lines.append(f"About {count} tile{'s' if count != 1 else ''} of up to {side} px in the first model pass "
                     "(the tile size adapts to free memory when left empty).")
        key = rate_key("esrgan", upscaler or "", int(tile) if tile else None)
    seconds = estimate_seconds(context.workspace, key, count)
    lines.append(f"Time: {say_duration(seconds)}, from the last job with these settings on this machine."
                 if seconds else "Time: shown once the first tiles are done (no earlier job with these settings).")
    return "  \n".join(lines)


def diffusion_job(context, image_path, output, scale, size_text, model, lora, enlarge_model, tile, overlap, steps,
                  seed, prompt, denoise_a, denoise_b, use_c, denoise_c, final_pass):
    from blk.generate.sizes import parse_size
    from blk.upscale.diffusion import DiffusionJob, Pass

    size = parse_size(size_text) if (size_text or "").strip() else None
    passes = [Pass(float(denoise_a)), Pass(float(denoise_b))] + ([Pass(float(denoise_c))] if use_c else [])
    return DiffusionJob(input=Path(image_path), output=output, model=model, texture_lora=lora,
                        scale=None if size else float(scale or 2), size=size, enlarge_model=enlarge_model,
                        passes=tuple(passes), tile=int(tile or 1024), overlap=int(overlap or 96), seed=int(seed or 0),
                        steps=int(steps) if steps else None, prompt=prompt or "",
                        final_denoise=0.1 if final_pass else None, device=context.workspace.settings.device)


def upscale(context: StudioContext, cancel: threading.Event, image_path, path_kind, scale, size_text, upscaler,
            model, lora, enlarge_first, tile, overlap, steps, seed, prompt, denoise_a, denoise_b, use_c, denoise_c,
            final_pass, fmt, keep_16bit, dpi, progress=gr.Progress()):
    from blk.errors import UserError
    from blk.upscale import diffusion, esrgan
    from blk.upscale.compare import region_pair

    cancel.clear()
    if not image_path:
        return None, None, "Choose an image first."
    started = time.monotonic()

    def report(done, total):
        elapsed = time.monotonic() - started
        eta = f", about {max(0, elapsed / done * (total - done)):.0f} s left" if done else ""
        progress(done / max(total, 1), desc=f"tile {done}/{total}{eta}")

    try:
        upscaler_path = context.workspace.confine(upscaler) if upscaler else None
        lora_path = context.workspace.confine(lora) if lora else None
        opened, (width, height) = target(image_path, scale, size_text)
        kind = "esrgan" if path_kind == ESRGAN else "diffusion"
        folder = context.workspace.outputs("upscale") / time.strftime("%Y-%m-%d")
        output = folder / f"{Path(image_path).stem}-{kind}-{width}x{height}.{'tif' if fmt == 'TIFF' else 'png'}"
        if kind == "esrgan":
            if upscaler_path is None:
                raise UserError("Choose an upscaler model file (put them in workspace/models/upscalers/).")
            job = esrgan.EsrganJob(input=Path(image_path), output=output, model=upscaler_path, scale=None,
                                   size=(width, height), tile=int(tile) if tile else None,
                                   overlap=int(overlap or 32), keep_16bit=bool(keep_16bit),
                                   dpi=float(dpi) if dpi else None, device=context.workspace.settings.device)
            result = esrgan.run(job, progress=report, cancel=cancel)
        else:
            job = diffusion_job(context, image_path, output, scale, size_text, model, lora_path,
                                upscaler_path if enlarge_first else None, tile, overlap, steps, seed, prompt,
                                denoise_a, denoise_b, use_c, denoise_c, final_pass)
            job.dpi = float(dpi) if dpi else None
            result = diffusion.run(job, context.workspace, context.sketcher.cache, progress=report, cancel=cancel)
        from blk.upscale.rates import rate_key, record

        record(context.workspace, rate_key(kind, model if kind == "diffusion" else str(upscaler_path),
                                           int(tile) if tile else (1024 if kind == "diffusion" else None)),
               time.monotonic() - started, result.tiles)
        before, after = region_pair(Path(image_path), result.path)
    except UserError as exc:
        return None, None, f"**{exc}**"
    except ValueError as exc:
        return None, None, f"**A value in the form is not valid ({exc}).**"
    status = (f"{result.width}×{result.height} in {time.monotonic() - started:.0f} s — a {before.width} px region "
              f"at full size below (left: the input enlarged plainly). Saved: `{result.path}`")
    return (before, after), str(result.path), status


def build(context: StudioContext) -> dict:
    from blk.upscale.diffusion import PAPER_PASSES, PASS_C

    cancel = threading.Event()
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(label="Image to upscale", type="filepath", elem_id="blk-upscale-input")
            path_kind = gr.Radio([ESRGAN, DIFFUSION], value=ESRGAN, label="Path")
            with gr.Row():
                scale = gr.Number(4, label="Scale")
                size_text = gr.Textbox(label="…or exact size WxH", placeholder="8000x6000")
            upscaler = gr.Dropdown(upscaler_choices(context), label="Upscaler (workspace/models/upscalers)",
                                   allow_custom_value=True, elem_id="blk-upscale-model")
            with gr.Group(visible=False) as diffusion_group:
                model = gr.Dropdown(model_names(context), value=context.default_model(), label="Base model",
                                    allow_custom_value=True)
                lora = gr.Dropdown(lora_choices(context), label="Texture LoRA", allow_custom_value=True)
                enlarge_first = gr.Checkbox(True, label="Enlarge with the upscaler first (else Lanczos)")
                prompt = gr.Textbox(label="Prompt (usually empty)")
                with gr.Row():
                    denoise_a = gr.Slider(0.05, 0.6, value=PAPER_PASSES[0].denoise, step=0.01,
                                          label="Pass A denoise (texture)")
                    denoise_b = gr.Slider(0.05, 0.6, value=PAPER_PASSES[1].denoise, step=0.01,
                                          label="Pass B denoise (refine)")
                with gr.Row():
                    use_c = gr.Checkbox(False, label="Pass C (edges)")
                    denoise_c = gr.Slider(0.05, 0.4, value=PASS_C.denoise, step=0.01, label="Pass C denoise")
                with gr.Row():
                    steps = gr.Number(None, label="Steps (empty: model default)", precision=0)
                    seed = gr.Number(0, label="Seed (same for every tile)", precision=0)
                final_pass = gr.Checkbox(True, label="Final low-denoise pass over the whole frame (when it fits)")
            with gr.Row():
                tile = gr.Number(None, label="Tile px (empty: automatic)", precision=0)
                overlap = gr.Number(32, label="Overlap px", precision=0)
            with gr.Row():
                fmt = gr.Radio(["TIFF", "PNG"], value="TIFF", label="Format (TIFF: tiled BigTIFF, any size)")
                keep_16bit = gr.Checkbox(False, label="Keep 16-bit (ESRGAN, TIFF)")
                dpi = gr.Number(None, label="DPI (0: the input's)")
            with gr.Row():
                plan_button = gr.Button("Estimate")
                go = gr.Button("Upscale", variant="primary", elem_id="blk-upscale-go")
                stop = gr.Button("Cancel")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="blk-upscale-status")
            slider = gr.ImageSlider(label="Before | after (one region at full size)", type="pil",
                                    elem_id="blk-upscale-slider", max_height=700)
            result_file = gr.File(label="Result")

    def on_path(kind):
        diffusion = kind == DIFFUSION
        return gr.Group(visible=diffusion), gr.Number(value=2 if diffusion else 4), \
            gr.Number(value=96 if diffusion else 32), gr.Number(value=1024 if diffusion else None)

    path_kind.change(on_path, inputs=path_kind, outputs=[diffusion_group, scale, overlap, tile])
    plan_button.click(lambda *a: estimate(context, *a),
                      inputs=[image, path_kind, scale, size_text, upscaler, model, tile, overlap, steps, denoise_a,
                              denoise_b, use_c, denoise_c, final_pass], outputs=status)
    go.click(lambda *a, progress=gr.Progress(): upscale(context, cancel, *a, progress=progress),
             inputs=[image, path_kind, scale, size_text, upscaler, model, lora, enlarge_first, tile, overlap, steps,
                     seed, prompt, denoise_a, denoise_b, use_c, denoise_c, final_pass, fmt, keep_16bit, dpi],
             outputs=[slider, result_file, status], api_name="upscale")
    stop.click(cancel.set, queue=False)
    on_show = (lambda: (gr.Dropdown(choices=upscaler_choices(context)), gr.Dropdown(choices=lora_choices(context)),
                        gr.Dropdown(choices=model_names(context))), [upscaler, lora, model])
    return {"image": image, "on_show": on_show}
