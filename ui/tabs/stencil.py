"""Stencil tab: transparent assets — LayerDiffuse generation, ink to alpha, matting, and layered compose.

Three jobs side by side, because an artist moves between them: generate
RGBA elements in their style, turn scanned ink into RGBA, then stack the
elements over a sketch and export layers for Krita or GIMP. Each works
without the others (missing LayerDiffuse weights do not block ink-to-alpha).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from ui import lora_stack
from ui.busy import click_while_busy
from ui.cancels import SessionCancels
from ui.context import StudioContext
from ui.form_memory import remember_form
from ui.progress_text import batch_step_text
from ui.tabs.sketch import model_defaults, model_names, seed_field

ROLE_NONE = "none"


def generate(context: StudioContext, cancel: threading.Event, gallery: list, model, prompt, role, items, width,
             height, steps, guidance, seed, random_seed, count, augment, start=None, strength=0.6,
             progress=gr.Progress()):
    """(gallery, session, status, Seed, the chosen asset, Width, Height) after a run; a field not to change
    is an update."""
    from blk.errors import UserError
    from blk.generate.sketch import Lora
    from blk.stencil.generate import StencilRequest

    finished, status = [], ""
    try:
        for path, _ in items:
            context.workspace.confine(path)
        request = StencilRequest(
            model=model, prompt=prompt or "", role="" if role == ROLE_NONE else role,
            loras=[Lora(Path(path), float(scale)) for path, scale in items], seed=None if random_seed else int(seed or 0),
            width=int(width or 0), height=int(height or 0), steps=int(steps) if steps else None,
            guidance=None if guidance in (None, "") else float(guidance), count=int(count), augment=bool(augment),
            device=context.workspace.settings.device, image=Path(start) if start else None,
            strength=float(strength))
        progress(0, desc="Loading the model and LayerDiffuse…")
        words = lambda d, t: batch_step_text(d, t, request.count, "asset", "decoding the transparency")  # noqa: E731
        context.stenciler.run(request, progress=lambda d, t: progress(d / t, desc=words(d, t)), cancel=cancel,
                               on_image=finished.append)
    except UserError as exc:
        status = f"**{exc}**"
    except ValueError as exc:
        status = f"**A number in the form is not valid ({exc}).**"
    shown = [(str(r.path), f"seed {r.seed}") for r in reversed(finished)] + gallery
    if not finished:
        return shown, shown, status, gr.update(), gr.update(), gr.update(), gr.update()
    last = finished[-1]
    # Width and Height as used: rounded to the model's grid, the status said "using 192×128" while the fields
    # kept 200×130; a starting image sets the size without them, and they stay as typed
    used = (gr.update(), gr.update()) if start else (last.parameters["width"], last.parameters["height"])
    summary = (f"{len(finished)} asset{'s' if len(finished) > 1 else ''}, seed "
               f"**{', '.join(str(r.seed) for r in finished)}**, {last.parameters['width']}×"
               f"{last.parameters['height']} RGBA — saved in `{last.path.parent}`")
    status = "  \n".join(s for s in (last.notice, empty_descriptor_note(prompt, role), summary, status) if s)
    return shown, shown, status, seed_field(finished, random_seed), str(last.path), *used  # the newest is chosen


def empty_descriptor_note(prompt, role) -> str:
    """Said after an asset made with no descriptor (allowed: the style LoRA alone can lead), so that it is
    never a surprise."""
    if (prompt or "").strip():
        return ""
    if role and role != ROLE_NONE:
        return f"The descriptor was empty: the asset was drawn from the Z-role tag ({role}) alone."
    return "The descriptor was empty: the asset was drawn without a text prompt."


def preview(image_path, background: str, colour: str):
    """The chosen asset over the chosen background (a preview; the file keeps its alpha)."""
    from PIL import Image

    from blk.stencil.preview import over_background

    if not image_path:
        return None
    with Image.open(image_path) as image:
        return over_background(image, "checkerboard" if background == "checkerboard" else colour)


def free_dataset_folder(datasets: Path, name: str) -> Path:
    """datasets/NAME, or NAME-2, NAME-3… when that exists: a conversion never writes into a dataset."""
    target, number = datasets / name, 1
    while target.exists():
        number += 1
        target = datasets / f"{name}-{number}"
    return target


def ink_to_alpha(context: StudioContext, files, dataset, paper_auto, paper, tt, ot, progress=gr.Progress()):
    """Uploaded scans → outputs/stencil/alpha/DATE/; a dataset → a new dataset NAME-alpha with its captions
    (NAME-alpha-2, -3… when it exists: an earlier conversion and its caption edits stay as they are).
    With a dataset chosen, uploaded scans are not converted, and the status says so.

    Returns (PNG paths, status, the first paper colour estimated or None)."""
    from blk.errors import UserError
    from blk.stencil.alpha import AlphaSettings, convert_batch, copy_captions

    settings = AlphaSettings(paper="auto" if paper_auto else paper, tt=float(tt), ot=float(ot))
    try:
        if dataset:
            source = context.workspace.named_dataset(dataset)
            target = free_dataset_folder(context.workspace.datasets, f"{source.name}-alpha")
            result = convert_batch(source, target, settings, progress=lambda d, t: progress(d / t))
            copied = copy_captions(result)
            where = f"the new dataset `{target.name}` ({copied} caption{'' if copied == 1 else 's'} copied)"
            if target.name != f"{source.name}-alpha":
                where += f"; `{source.name}-alpha` already exists and was left as it is"
            if files:
                where += (f". The {len(files)} uploaded scan{'s were' if len(files) > 1 else ' was'} not converted: "
                          f"choose {UPLOADS_ONLY[0]} as the dataset to convert uploads")
        else:
            if not files:
                return [], "Upload scans or choose a dataset.", None
            target = context.workspace.outputs("stencil") / "alpha" / time.strftime("%Y-%m-%d")
            result = None
            for index, file in enumerate(files):
                one = convert_batch(Path(file), target, settings)
                result = one if result is None else type(one)(result.written + one.written, result.failed + one.failed)
                progress((index + 1) / len(files))
            where = f"`{target}`"
    except UserError as exc:
        return [], f"**{exc}**", None
    lines = [f"{len(result.written)} converted into {where}."]
    lines += [alpha_line(item) for item in result.written[:12]]
    lines += [f"- **{reason}**" for _, reason in result.failed]
    estimated = next((item.paper for item in result.written if not item.note), None) if paper_auto else None
    return [str(item.output) for item in result.written], "\n".join(lines), estimated


def alpha_line(item) -> str:
    """One status line per result; it names the scan when the PNG was renamed (scan-2.png) to keep an earlier one."""
    renamed = f" (from {item.source.name})" if item.output.stem != item.source.stem else ""
    note = f"; {item.note}" if item.note else ""
    return f"- {item.output.name}{renamed}: {item.bits}-bit, paper {item.paper}{note}"


def matte_image(context: StudioContext, image_path):
    from blk.errors import UserError
    from blk.generate.metadata import save_png
    from blk.generate.sketch import output_folder
    from blk.stencil.matting import matte

    if not image_path:
        return None, "Choose an image first."
    try:
        from PIL import Image

        with Image.open(image_path) as image:
            cut = matte(context.workspace, image)
        path = save_png(output_folder(context.workspace, "stencil") / f"{Path(image_path).stem}-matte.png", cut,
                        {"kind": "matte", "source": Path(image_path).name, "prompt": ""})
    except UserError as exc:
        return None, f"**{exc}**"
    return str(path), f"Saved `{path}`."


def compose_layers(context: StudioContext, layer_files, positions, background_kind, colour, background_file,
                   name, order="", *, export: bool):
    """Flatten (and export) the layers. Layers are numbered as added (1 = first); positions are
    'x,y[,scale]' lines, line N for layer N; `order` lists layer numbers bottom → top (empty: as added;
    layers not listed are left out), so restacking never means uploading again."""
    from blk.errors import UserError
    from blk.stencil.compose import compose, export as export_files, load_layer

    if not layer_files:
        return None, [], "Add at least one layer."
    try:
        lines = [line.strip() for line in (positions or "").splitlines() if line.strip()]
        layers = []
        for index in stacking_order(order, len(layer_files)):
            file = layer_files[index]
            path = Path(file if isinstance(file, str) else file.name)
            numbers = lines[index].replace(" ", "").split(",") if index < len(lines) else []
            try:
                x, y = (int(float(numbers[0])), int(float(numbers[1]))) if len(numbers) >= 2 else (0, 0)
                scale = float(numbers[2]) if len(numbers) >= 3 else 1.0
            except ValueError:
                raise UserError(f"Line {index + 1} of the positions is not x,y[,scale]: {lines[index]!r}.") from None
            layers.append(load_layer(path, x=x, y=y, scale=scale, name=path.stem))
        background = None if background_kind == "transparent" else colour if background_kind == "colour" else \
            background_file
        if background_kind == "image" and not background_file:
            raise UserError("Choose a background image (a sketch), or another background.")
        composition = compose(layers, background)
        if not export:
            from blk.stencil.pngio import to_levels
            from PIL import Image

            return Image.fromarray(to_levels(composition.flat, 8), "RGBA"), [], "Preview (not saved)."
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "collage")).strip("-") or "collage"
        folder = context.workspace.outputs("stencil") / "compose" / time.strftime("%Y-%m-%d")
        done = export_files(composition, folder / f"{stem}-{time.strftime('%H%M%S')}.ora")
    except UserError as exc:
        return None, [], f"**{exc}**"
    return str(done.flat), [str(done.ora), str(done.flat)] + [str(p) for p in done.layers], \
        f"Exported `{done.ora.name}` (opens in Krita and GIMP with its layers), the flattened PNG and " \
        f"{len(done.layers)} layer PNGs. Folder: `{done.ora.parent}`"


def layer_list_text(layer_files, order) -> str:
    """The layers numbered as Order and Positions count them, bottom → top as they will stack.

    Gradio's file list shows names only, so an artist typing "2,1" had to count uploads by hand."""
    from blk.errors import UserError

    names = [Path(f if isinstance(f, str) else f.name).name for f in layer_files or []]
    if not names:
        return "No layers yet: upload RGBA PNGs, or add assets from Generate."
    try:
        stack = stacking_order(order, len(names))
    except UserError as exc:
        return f"**{exc}**"
    left_out = [f"layer {n + 1} (`{names[n]}`)" for n in range(len(names)) if n not in stack]
    lines = [f"layer {n + 1}: `{names[n]}`" + (" — top" if i == len(stack) - 1 and len(stack) > 1 else
                                              " — bottom" if i == 0 and len(stack) > 1 else "")
             for i, n in enumerate(stack)]
    text = "Stacked bottom → top (numbers as Order and Positions count them):  \n" + "  \n".join(lines)
    return text + (f"  \nLeft out: {', '.join(left_out)}" if left_out else "")


def stacking_order(order: str, count: int) -> list[int]:
    """Indices bottom → top from '3, 1, 2' (layer numbers as added); empty: all, as added."""
    from blk.errors import UserError

    text = (order or "").replace(" ", "").strip(",")
    if not text:
        return list(range(count))
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"The order is layer numbers separated by commas (e.g. 2,1,3), not {order!r}.") from None
    wrong = [n for n in numbers if not 1 <= n <= count]
    if wrong:
        raise UserError(f"There is no layer {wrong[0]}: the layers are numbered 1 to {count} in the order added.")
    if len(set(numbers)) != len(numbers):
        raise UserError("Each layer can appear once in the order.")
    return [n - 1 for n in numbers]


def add_to_compose(layer_files, asset, order=""):
    """(layers, Compose's status, the tab, Order, Generate's status): the chosen asset becomes the top layer of
    the composition and the Compose tab opens. A typed Order gains the new layer's number at its end: an Order
    lists the layers used, so without it the asset said to be on top was left out of the stack. With no asset
    chosen the sentence goes to Generate's status, where the button was pressed (Compose's was out of sight)."""
    from blk.errors import UserError

    if not asset:
        return gr.update(), gr.update(), gr.update(), gr.update(), "Click an asset in the gallery first."
    files = [f if isinstance(f, str) else f.name for f in layer_files or []]
    number = len(files) + 1
    said = f"Added `{Path(asset).name}` as layer {number} (top)."
    compose = gr.Tabs(selected="compose")
    if not (order or "").replace(" ", "").strip(","):
        return files + [asset], said, compose, gr.update(), gr.update()
    try:
        stacking_order(order, len(files))
    except UserError as exc:  # an Order that does not read: the new layer goes in, the Order stays to mend
        return files + [asset], f"Added `{Path(asset).name}` as layer {number}. **{exc}**", compose, gr.update(), \
            gr.update()
    return files + [asset], said + f" Order: {order.strip().rstrip(',')}, {number}.", compose, \
        f"{order.strip().rstrip(',')}, {number}", gr.update()


def chosen_line(asset) -> str:
    """Which asset the Preview shows and the buttons below it send (the gallery marks none): its file name,
    which carries its seed ("…-s1234.png")."""
    if not asset:
        return "No asset chosen yet: generate one, or click one in the gallery."
    return f"Chosen: `{Path(asset).name}` — what *Add to Compose*, *Upscale* and *Start from the chosen asset* use."


def start_from_chosen(asset):
    """The chosen asset becomes the starting image; with none chosen, a sentence (and the image stays)."""
    if not asset:
        return gr.update(), "Click an asset in the gallery first, then *Start from the chosen asset*."
    return asset, f"Starting from `{Path(asset).name}`: Generate redraws it at the chosen strength."


def dataset_names(context: StudioContext) -> list[str]:
    return sorted(p.name for p in context.workspace.datasets.glob("*") if p.is_dir() and not p.name.startswith("."))


UPLOADS_ONLY = ("(none: convert the uploads)", "")  # the dataset choice that a list cannot otherwise clear


def alpha_dataset_choices(context: StudioContext) -> list[tuple[str, str]]:
    """Ink to alpha's sources: the uploads ("(none…)", first and the default), or a whole dataset."""
    return [UPLOADS_ONLY] + [(name, name) for name in dataset_names(context)]


def weights_note(context: StudioContext, model_name: str) -> str:
    """Say up front when LayerDiffuse's files are missing (the other sub-tabs work without them)."""
    from blk.errors import UserError
    from blk.models.registry import resolve
    from blk.stencil.layerdiffuse import find_weights

    from blk.models.registry import KNOWN_MODELS

    if not model_name or (model_name in KNOWN_MODELS and KNOWN_MODELS[model_name].tiny):
        return ""  # the tiny models get random LayerDiffuse weights
    try:
        find_weights(context.workspace, resolve(model_name, context.workspace))
    except UserError as exc:
        return f"**{exc}**"
    return ""


def build(context: StudioContext) -> None:
    from blk.stencil.generate import ROLES
    from blk.stencil.matting import unavailable_reason

    cancels = SessionCancels()
    default_steps, default_guidance = model_defaults(context, context.default_model())
    with gr.Tabs() as tabs:
        with gr.Tab("Generate (LayerDiffuse)", id="generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    model = gr.Dropdown(model_names(context), value=context.default_model(), label="Base model",
                                        allow_custom_value=True)
                    prompt = gr.Textbox(label="Descriptor", lines=2, placeholder="a dodecahedron, thin ink line")
                    role = gr.Radio([ROLE_NONE, *ROLES], value="FG", label="Z-role tag (appended to the prompt)")
                    loras, lora_pick = lora_stack.build(context, "blk-stencil", "Style LoRA", model)
                    with gr.Row():
                        width = gr.Number(1024, label="Width (multiple of 64; not used with a starting image)",
                                          precision=0)
                        height = gr.Number(1024, label="Height (multiple of 64; not used with a starting image)",
                                           precision=0)
                    with gr.Row():
                        steps = gr.Number(default_steps, label="Steps", precision=0, elem_id="blk-stencil-steps")
                        guidance = gr.Number(default_guidance, label="Guidance")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0)
                        random_seed = gr.Checkbox(True, label="Random seed")
                        count = gr.Slider(1, 8, value=1, step=1, label="Assets")
                    augment = gr.Checkbox(True, label="Test-time augmentation (8 decoder views; cleaner edges)")
                    with gr.Accordion("Start from a transparent image (image to image)", open=False):
                        gr.Markdown("An RGBA PNG (an asset, an ink-to-alpha scan) is redrawn in your style with "
                                    "its transparency. The asset takes the starting image's size, on the 64 px "
                                    "grid (its aspect ratio kept as closely as the grid allows; the status says "
                                    "when the size changes): Width and Height are not used. Leave empty to start "
                                    "from noise.")
                        # the file as uploaded (image_mode None): converted to RGBA, Gradio re-saved it in its
                        # own format, and a JPEG cannot hold RGBA; the engine reads any mode itself
                        start = gr.Image(label="Starting image", type="filepath", image_mode=None,
                                         elem_id="blk-stencil-start", elem_classes=["blk-checker"])
                        strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength (how much is redrawn)")
                        use_chosen = gr.Button("Start from the chosen asset", size="sm")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="blk-stencil-generate")
                        stop = gr.Button("Cancel", elem_id="blk-stencil-cancel")
                with gr.Column(scale=3):
                    status = gr.Markdown(weights_note(context, context.default_model()),
                                         elem_id="blk-stencil-status")
                    # whole assets, never cropped to squares: a tall element is seen as it was made
                    results = gr.Gallery(label="Assets (over a checkerboard; files keep their alpha)", columns=3,
                                         height="auto", format="png", object_fit="contain",
                                         elem_id="blk-stencil-gallery",
                                         elem_classes=["blk-checker", "blk-whole"])
                    with gr.Row():
                        background = gr.Radio(["checkerboard", "colour"], value="colour", label="Preview over")
                        colour = gr.ColorPicker("#f2efe6", label="Colour")
                    chosen = gr.State(None)
                    shown = gr.Image(label="Preview", type="pil", elem_id="blk-stencil-preview")
                    chosen_note = gr.Markdown(chosen_line(None), elem_id="blk-stencil-chosen")
                    with gr.Row():
                        to_compose = gr.Button("Add to Compose (as the top layer)", size="sm",
                                               elem_id="blk-stencil-to-compose")
                        to_upscale = gr.Button("Upscale", size="sm", elem_id="blk-stencil-to-upscale")
            session = gr.State([])
            click_while_busy(go, "Generating…",
                             cancels.job(lambda cancel, *a, progress: generate(context, cancel, *a, progress=progress)),
                             inputs=[session, model, prompt, role, loras, width, height, steps, guidance, seed,
                                     random_seed, count, augment, start, strength],
                             outputs=[results, session, status, seed, chosen, width, height],
                             api_name="stencil_generate",
                             show_progress_on=[results])  # over the gallery it fills, not over the Seed field
            stop.click(cancels.cancel, queue=False)
            # the model's steps and guidance when the artist picks it, not when the remembered form sets it
            model.input(lambda name: model_defaults(context, name), inputs=model, outputs=[steps, guidance])
            model.change(lambda name: weights_note(context, name), inputs=model, outputs=status)
            remember_form(context, "blk-stencil-form", {
                "model": model, "prompt": prompt, "role": role, "loras": loras, "width": width, "height": height,
                "steps": steps, "guidance": guidance, "seed": seed, "random_seed": random_seed, "count": count,
                "augment": augment, "strength": strength})

            def on_select(items, event: gr.SelectData):
                entry = items[event.index]
                return entry[0] if isinstance(entry, (list, tuple)) else entry

            results.select(on_select, inputs=session, outputs=chosen)
            use_chosen.click(start_from_chosen, inputs=chosen, outputs=[start, status])
            for trigger in (chosen.change, background.change, colour.change):
                trigger(preview, inputs=[chosen, background, colour], outputs=shown)
            chosen.change(chosen_line, inputs=chosen, outputs=chosen_note, queue=False, show_progress="hidden")

        with gr.Tab("Ink to alpha", id="alpha"):
            gr.Markdown("Scans of ink on paper become transparent PNGs (GIMP's *colour to alpha*: composited over "
                        "the paper they give the scan back). 16-bit scans stay 16-bit. A dataset becomes a new "
                        "dataset *NAME-alpha* with its captions, ready to train on.")
            with gr.Row():
                with gr.Column(scale=2):
                    scans = gr.File(label="Scans", file_count="multiple", type="filepath", elem_id="blk-alpha-files")
                    dataset = gr.Dropdown(alpha_dataset_choices(context), label="…or a whole dataset",
                                          value=UPLOADS_ONLY[1], allow_custom_value=True)
                    paper_auto = gr.Checkbox(True, label="Estimate the paper colour")
                    paper = gr.ColorPicker("#ffffff", label="Paper colour")
                    tt = gr.Slider(0.0, 0.5, value=0.0, step=0.01, label="Transparency threshold (paper grain → clear)")
                    ot = gr.Slider(0.1, 1.0, value=1.0, step=0.01, label="Opacity threshold (ink → fully opaque)")
                    convert = gr.Button("Convert", variant="primary", elem_id="blk-alpha-convert")
                with gr.Column(scale=3):
                    alpha_status = gr.Markdown(elem_id="blk-alpha-status")
                    alpha_results = gr.Gallery(label="RGBA results", columns=3, height="auto", format="png",
                                               object_fit="contain",
                                               elem_classes=["blk-checker", "blk-whole"], elem_id="blk-alpha-gallery")
                    alpha_files = gr.File(label="Download the RGBA PNGs", file_count="multiple", interactive=False,
                                          elem_id="blk-alpha-download")

            def convert_and_offer(*args, progress=gr.Progress()):
                written, status, estimated = ink_to_alpha(context, *args, progress=progress)
                # the first 50 as downloads (all are on disk); the picker shows the paper estimated, as a start
                # for a colour of the artist's own
                return written, written[:50] or None, status, estimated or gr.update()

            convert.click(convert_and_offer, inputs=[scans, dataset, paper_auto, paper, tt, ot],
                          outputs=[alpha_results, alpha_files, alpha_status, paper], api_name="stencil_alpha")

        with gr.Tab("Matting", id="matting"):
            reason = unavailable_reason(context.workspace)
            gr.Markdown(reason and f"**Not set up.** {reason}" or
                        "Cut a generated subject off a flat background with BiRefNet.")
            with gr.Row():
                source = gr.Image(label="Image", type="filepath")
                matted = gr.Image(label="Matte", type="filepath", elem_classes=["blk-checker"])
            matte_button = gr.Button("Cut out", interactive=reason is None)
            matte_status = gr.Markdown()
            matte_button.click(lambda p: matte_image(context, p), inputs=source, outputs=[matted, matte_status])

        with gr.Tab("Compose", id="compose"):
            gr.Markdown("Stack RGBA layers over a sketch or a flat colour, then export the flattened PNG, each "
                        "layer, and a layered OpenRaster file.")
            with gr.Row():
                with gr.Column(scale=2):
                    layer_files = gr.File(label="Layers (RGBA PNGs)", file_count="multiple", type="filepath",
                                          elem_id="blk-compose-layers")
                    layer_list = gr.Markdown(layer_list_text([], ""), elem_id="blk-compose-layer-list")
                    positions = gr.Textbox(label="Positions, one line per layer: x,y[,scale]", lines=4,
                                           placeholder="0,0\n120,40,0.5", elem_id="blk-compose-positions")
                    order = gr.Textbox(label="Order, bottom → top (layer numbers as added, e.g. 2,1,3; empty: as "
                                             "added; layers not listed are left out)", elem_id="blk-compose-order")
                    background_kind = gr.Radio(["colour", "image", "transparent"], value="colour", label="Background")
                    compose_colour = gr.ColorPicker("#f2efe6", label="Background colour")
                    background_file = gr.File(label="Background image (e.g. a sketch)", type="filepath",
                                              elem_id="blk-compose-background")
                    name = gr.Textbox("collage", label="Name")
                    with gr.Row():
                        preview_button = gr.Button("Preview")
                        export_button = gr.Button("Export .ora + PNGs", variant="primary", elem_id="blk-compose-export")
                with gr.Column(scale=3):
                    compose_status = gr.Markdown(elem_id="blk-compose-status")
                    flat = gr.Image(label="Flattened", type="filepath", elem_classes=["blk-checker"],
                                    elem_id="blk-compose-flat")
                    exported = gr.File(label="Files of the last export", file_count="multiple")
                    flat_upscale = gr.Button("Upscale the exported PNG", size="sm", elem_id="blk-compose-to-upscale")
            inputs = [layer_files, positions, background_kind, compose_colour, background_file, name, order]
            to_compose.click(add_to_compose, inputs=[layer_files, chosen, order],
                             outputs=[layer_files, compose_status, tabs, order, status])
            preview_button.click(lambda *a: compose_layers(context, *a, export=False), inputs=inputs,
                                 outputs=[flat, exported, compose_status])
            exported_flat = gr.State(None)  # the flattened PNG as saved (the Image holds a browser copy)

            def export_and_keep(*args):
                shown, files, sentence = compose_layers(context, *args, export=True)
                return shown, files, sentence, shown if files else None

            export_button.click(export_and_keep, inputs=inputs, outputs=[flat, exported, compose_status, exported_flat],
                                api_name="stencil_compose")
            for trigger in (layer_files.change, order.change):
                trigger(layer_list_text, inputs=[layer_files, order], outputs=layer_list, show_progress="hidden",
                        queue=False)
            # the flattened view shows one stack: another one (a layer added, restacked, moved) is not it any more
            # (the files of the last export stay listed, and on disk)
            gr.on([layer_files.change, order.change, positions.change], lambda: None, outputs=flat,
                  show_progress="hidden", queue=False)
    on_show = (lambda: (gr.Dropdown(choices=lora_stack.lora_choices(context)),
                        gr.Dropdown(choices=alpha_dataset_choices(context))), [lora_pick, dataset])
    return {"tabs": tabs, "background_kind": background_kind, "background_file": background_file,
            "matting_source": source, "on_show": on_show,
            # Upscale: the chosen asset (its note: the status), and Compose's last export (the files listed)
            "to_upscale": to_upscale, "chosen": chosen, "status": status,
            "flat_to_upscale": flat_upscale, "exported_flat": exported_flat, "compose_status": compose_status}
