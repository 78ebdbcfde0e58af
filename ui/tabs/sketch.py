"""Sketch tab: text to image with a base model and any number of LoRAs, each at its own strength.

The engine (`blk.generate.sketch`) keeps the base model loaded between
clicks and swaps LoRAs on top; this tab gathers the form, shows progress,
and lists this session's results (newest first). Every PNG carries its
parameters; "Load parameters" reads them back into the form.
"""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr

from ui import lora_stack
from ui.busy import click_while_busy
from ui.cancels import SessionCancels
from ui.context import StudioContext
from ui.form_memory import remember_form
from ui.progress_text import batch_step_text

CUSTOM = "custom size"


def model_names(context: StudioContext) -> list[str]:
    from blk.models.registry import list_models

    return [row.name for row in list_models(context.workspace) if row.found]


def size_of(megapixels, aspect, width, height) -> tuple[int, int]:
    from blk.generate.sizes import size_for_budget

    if aspect == CUSTOM:
        return int(width or 0), int(height or 0)
    return size_for_budget(float(megapixels), aspect)


def size_fields(megapixels, aspect):
    """(Size budget, Width, Height) for the chosen aspect: with an aspect, the budget counts and Width and Height
    show the size it gives, greyed; with a custom size, the budget hides and Width and Height are typed in."""
    if aspect == CUSTOM:
        return gr.update(visible=False), gr.update(interactive=True, label="Width"), \
            gr.update(interactive=True, label="Height")
    given = {"interactive": False}
    try:
        width, height = size_of(megapixels, aspect, 0, 0)
    except (KeyError, TypeError, ValueError):  # a value the lists do not hold (an edited form memory)
        return gr.update(visible=True), gr.update(**given), gr.update(**given)
    return gr.update(visible=True), gr.update(value=width, label="Width (from the budget)", **given), \
        gr.update(value=height, label="Height (from the budget)", **given)


def model_defaults(context: StudioContext, name: str):
    """Steps and guidance of the chosen model (FLUX.1-dev 28 / 3.5, schnell 4 / 0, …)."""
    from blk.generate.sketch import defaults_for_name

    found = defaults_for_name(name or "", context.workspace)
    return (found[0], found[1]) if found else (gr.update(), gr.update())


def generate(context: StudioContext, cancel: threading.Event, gallery: list, model, prompt, negative, items,
             megapixels, aspect, width, height, steps, guidance, seed, random_seed, count, cpu_offload, int8,
             vae_tiling, compile_model=False, progress=gr.Progress()):
    """Run the batch; returns (gallery, status). Errors and cancel are one sentence; finished images stay."""
    from blk.errors import UserError
    from blk.generate.sketch import Lora, SketchRequest
    from blk.models.device import MemoryOptions

    finished = []
    try:
        for path, _ in items:
            context.workspace.confine(path)
        w, h = size_of(megapixels, aspect, width, height)
        request = SketchRequest(
            model=model, prompt=prompt or "", negative_prompt=negative or "",
            loras=[Lora(Path(path), float(scale)) for path, scale in items],
            seed=None if random_seed else int(seed or 0), width=w, height=h,
            steps=int(steps) if steps else None, guidance=None if guidance in (None, "") else float(guidance),
            count=int(count), memory=MemoryOptions(cpu_offload=cpu_offload, int8=int8, vae_tiling=vae_tiling,
                                                   compile=bool(compile_model),
                                                   attention=context.workspace.settings.attention),
            device=context.workspace.settings.device)
        progress(0, desc="Loading the model…")
        words = lambda done, total: batch_step_text(done, total, request.count, "image")  # noqa: E731
        context.sketcher.run(request, progress=lambda done, total: progress(done / total, desc=words(done, total)),
                             cancel=cancel, on_image=finished.append)
        status = ""
    except UserError as exc:
        status = f"**{exc}**"
    except ValueError as exc:
        status = f"**A number in the form is not valid ({exc}).**"
    shown = [(str(r.path), f"seed {r.seed}") for r in reversed(finished)] + gallery
    if finished:
        last = finished[-1]
        seeds = ", ".join(str(r.seed) for r in finished)
        summary = (f"{len(finished)} image{'s' if len(finished) > 1 else ''}, seed{'s' if len(finished) > 1 else ''} "
                   f"**{seeds}**, {last.parameters['width']}×{last.parameters['height']} — saved in "
                   f"`{last.path.parent}`")  # no full stop after the path: it went to a line of its own
        empty = "" if (prompt or "").strip() else "The prompt was empty: the model drew without a text prompt."
        status = "  \n".join(s for s in (last.notice, empty, summary, status) if s)
    return shown, shown, status, seed_field(finished, random_seed)


def seed_field(finished: list, random_seed: bool):
    """The Seed field after a batch: a fixed seed stays as typed (a second click redraws the same seeds with a new
    strength or prompt; it moved to the batch's last seed), a random batch's first seed shows, so that unticking
    *Random seed* draws that batch again."""
    return finished[0].seed if finished and random_seed else gr.update()


def load_parameters(context: StudioContext, file):
    """Fill the form from a BLK Studio PNG."""
    from blk.errors import UserError
    from blk.generate.library import find_lora
    from blk.generate.metadata import read_parameters

    keep = [gr.update()] * 13
    if file is None:
        return keep + [""]
    try:
        p = read_parameters(file if isinstance(file, str) else file.name)
    except UserError as exc:
        return keep + [f"**{exc}**"]
    def number(value):
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def text(value):
        return value if isinstance(value, str) else ""

    loras, missing = [], []
    for lora in p.get("loras", []):
        reference, sha256, scale = text(lora.get("path")), text(lora.get("sha256")), number(lora.get("scale"))
        size = lora.get("bytes") if isinstance(lora.get("bytes"), int) else None
        path = find_lora(context.workspace, reference, sha256, size)  # by its workspace path, else by its hash
        if path is not None:
            loras.append([str(path), 1.0 if scale is None else float(scale)])
        else:
            missing.append(text(lora.get("name")) or reference or "a LoRA")
    note = f"Loaded the parameters of seed {number(p.get('seed'))}."
    if missing:
        note += f" **Not found on this machine: {', '.join(missing)}.**"
    budget, aspect = budget_and_aspect(number(p.get("width")), number(p.get("height")))
    return [text(p.get("model")) or gr.update(), text(p.get("prompt")), text(p.get("negative_prompt")), loras,
            budget if budget is not None else gr.update(), aspect, number(p.get("width")), number(p.get("height")),
            number(p.get("steps")), number(p.get("guidance")), number(p.get("seed")), False, 1, note]


def budget_and_aspect(width, height) -> tuple[float | None, str]:
    """The size budget and aspect that give this size, or (None, custom size) when none does: a 1 MP square
    read back from its PNG came back as a custom size."""
    from blk.generate.sizes import ASPECTS, MEGAPIXELS, size_for_budget

    for budget in MEGAPIXELS:
        for aspect in ASPECTS:
            if size_for_budget(budget, aspect) == (width, height):
                return budget, aspect
    return None, CUSTOM


def build(context: StudioContext) -> None:
    from blk.generate.sizes import ASPECTS, MEGAPIXELS, size_for_budget

    cancels = SessionCancels()
    models = model_names(context)
    default_steps, default_guidance = model_defaults(context, context.default_model())
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(models, value=context.default_model(), label="Base model", allow_custom_value=True)
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="e.g. blkstyle, a platonic solid floating over a city")
            negative = gr.Textbox(label="Negative prompt (SDXL only)", lines=1)
            loras, lora_pick = lora_stack.build(context, "blk-sketch", "LoRA (run checkpoints and models/loras)",
                                                model)
            # the demo's tiny models start at 0.25 MP: pictures of noise at 1 MP took two minutes on a CPU
            budget = 0.25 if context.demo else 1.0
            side = size_for_budget(budget, "1:1 square")[0]
            with gr.Row():
                megapixels = gr.Dropdown([(f"{m:g} MP", m) for m in MEGAPIXELS], value=budget, label="Size budget")
                aspect = gr.Dropdown(list(ASPECTS) + [CUSTOM], value="1:1 square", label="Aspect")
            with gr.Row():  # the size the budget gives, or typed in with "custom size" (`size_fields`)
                width = gr.Number(side, label="Width (from the budget)", precision=0, interactive=False,
                                  elem_id="blk-sketch-width")
                height = gr.Number(side, label="Height (from the budget)", precision=0, interactive=False,
                                   elem_id="blk-sketch-height")
            with gr.Row():
                steps = gr.Number(default_steps, label="Steps", precision=0, elem_id="blk-sketch-steps")
                guidance = gr.Number(default_guidance, label="Guidance")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0)
                random_seed = gr.Checkbox(True, label="Random seed")
                count = gr.Slider(1, 8, value=1, step=1, label="Images")
            with gr.Accordion("Memory and speed", open=False):
                cpu_offload = gr.Checkbox(label="CPU offload (GPU only: slower, much less memory)")
                int8 = gr.Checkbox(label="int8 weights (optimum-quanto)")
                vae_tiling = gr.Checkbox(label="VAE tiling (large sizes)")
                compile_model = gr.Checkbox(context.workspace.settings.compile,
                                            label="Speed: compile the model (first image slower)")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="blk-sketch-generate")
                stop = gr.Button("Cancel", elem_id="blk-sketch-cancel")
            with gr.Accordion("Load parameters from an image", open=False):
                source = gr.File(label="A BLK Studio PNG", file_types=[".png"], type="filepath",
                                 elem_id="blk-sketch-load-file")
                note = gr.Markdown(elem_id="blk-sketch-load-note")  # under the file it speaks of
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="blk-sketch-status")
            # whole images, never cropped to squares: a 1216×832 sketch is seen as it was made
            results = gr.Gallery(label="This session's sketches (newest first)", columns=3, height="auto",
                                 object_fit="contain", elem_id="blk-sketch-gallery", format="png",
                                 elem_classes=["blk-whole"])
            selected = gr.State(None)
            selected_note = gr.Markdown("Click a sketch to send it on.", elem_id="blk-sketch-selected")
            with gr.Row():
                to_compose = gr.Button("Use as Stencil background", size="sm", elem_id="blk-sketch-to-compose")
                to_matting = gr.Button("Cut out (Stencil matting)", size="sm")
                to_upscale = gr.Button("Upscale", size="sm", elem_id="blk-sketch-to-upscale")
    session = gr.State([])

    gr.on([megapixels.change, aspect.change], size_fields, inputs=[megapixels, aspect],
          outputs=[megapixels, width, height], show_progress="hidden", queue=False)
    # the model's defaults when the artist picks a model, not when a remembered form or a PNG sets it
    model.input(lambda name: model_defaults(context, name), inputs=model, outputs=[steps, guidance])
    click_while_busy(go, "Generating…",
                     cancels.job(lambda cancel, *a, progress: generate(context, cancel, *a, progress=progress)),
                     inputs=[session, model, prompt, negative, loras, megapixels, aspect, width, height, steps,
                             guidance, seed, random_seed, count, cpu_offload, int8, vae_tiling, compile_model],
                     outputs=[results, session, status, seed], api_name="sketch_generate",
                     show_progress_on=[results])  # over the gallery it fills, not over the Seed field
    stop.click(cancels.cancel, queue=False)
    source.upload(lambda f: load_parameters(context, f), inputs=source,
                  outputs=[model, prompt, negative, loras, megapixels, aspect, width, height, steps, guidance, seed,
                           random_seed, count, note])
    source.clear(lambda: "", outputs=note, show_progress="hidden", queue=False)  # no note about a file now gone

    def on_select(items, event: gr.SelectData):
        entry = items[event.index]
        path = entry[0] if isinstance(entry, (list, tuple)) else entry
        return path, f"Selected `{Path(path).name}`."

    remember_form(context, "blk-sketch-form", {
        "model": model, "prompt": prompt, "negative": negative, "loras": loras, "megapixels": megapixels,
        "aspect": aspect, "width": width, "height": height, "steps": steps, "guidance": guidance, "seed": seed,
        "random_seed": random_seed, "count": count, "cpu_offload": cpu_offload, "int8": int8,
        "vae_tiling": vae_tiling, "compile": compile_model})
    results.select(on_select, inputs=session, outputs=[selected, selected_note])
    on_show = (lambda: (gr.Dropdown(choices=lora_stack.lora_choices(context)),
                        gr.Dropdown(choices=model_names(context))), [lora_pick, model])
    return {"selected": selected, "selected_note": selected_note, "to_compose": to_compose, "to_matting": to_matting,
            "to_upscale": to_upscale, "on_show": on_show, "loras": loras}
