"""Assemble the Blocks: a demo-mode banner, the six job tabs, Models & Settings."""

from __future__ import annotations

import gradio as gr

from ui.cancels import session_ended
from ui.context import StudioContext
from ui.tabs import caption, models, review, sketch, stencil, train, upscale


def build_app(context: StudioContext) -> gr.Blocks:
    with gr.Blocks(title="BLK Studio", analytics_enabled=False) as demo:
        gr.Markdown("# BLK Studio")
        if context.demo:
            # made again on each page load: a file put in place while the app runs is no longer asked for
            gr.Markdown(lambda: demo_banner(context), elem_classes=["blk-banner"], elem_id="blk-demo-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Caption") as caption_tab:
                captioned = caption.build(context)
            with gr.Tab("Train") as train_tab:
                trained = train.build(context, lambda: caption.dataset_names(context))
            with gr.Tab("Sketch", id="sketch") as sketch_tab:
                sketched = sketch.build(context)
            with gr.Tab("Stencil", id="stencil") as stencil_tab:
                stenciled = stencil.build(context)
            with gr.Tab("Upscale", id="upscale") as upscale_tab:
                upscaled = upscale.build(context)
            with gr.Tab("Review") as review_tab:
                reviewed = review.build(context)
            with gr.Tab("Models & Settings"):
                models.build(context)
        send_between_tabs(context, tabs, sketched, stenciled, upscaled)
        trained["to_sketch"].click(lambda name, step, rows: try_in_sketch(context, name, step, rows),
                                   inputs=[trained["run"], trained["step"], sketched["loras"]],
                                   outputs=[tabs, sketched["loras"], trained["to_sketch_note"]])
        train_tab.select(lambda chosen, training: carry_dataset(chosen, training, caption.dataset_names(context)),
                         inputs=[captioned["dataset"], trained["dataset"]],
                         outputs=trained["dataset"], show_progress="hidden", queue=False)
        for tab, built in ((review_tab, reviewed), (upscale_tab, upscaled)):  # a choice to make on opening
            choose, chosen, target = built["on_open"]
            tab.select(choose, inputs=chosen, outputs=target, show_progress="hidden", queue=False)
        for tab, built in ((caption_tab, captioned), (train_tab, trained), (sketch_tab, sketched),
                           (stencil_tab, stenciled),
                           (upscale_tab, upscaled), (review_tab, reviewed)):
            refresh_on_show(tab, *built["on_show"])
        demo.unload(session_ended)  # a closed or reloaded window's jobs: cancellable from the windows still open
    return demo


def demo_banner(context: StudioContext) -> str:
    """The demo-mode banner: what works with the tiny models, and which paths still need a file."""
    from blk.caption.server import find_vllm_python
    from blk.errors import UserError
    from blk.stencil.matting import unavailable_reason

    needs = []
    if not upscale.upscaler_choices(context):  # the files that load: a damaged one is said, not counted
        unusable = len(upscale.unusable_upscalers(context))
        needs.append(f"Upscale's Real-ESRGAN path needs an upscaler file in `{context.workspace.models / 'upscalers'}/` "
                     "(the diffusion path runs without it)"
                     + (f"; the {unusable} there cannot be used (Models & Settings says why)" if unusable else ""))
    if unavailable_reason(context.workspace):
        needs.append("Stencil's matting needs BiRefNet (the Matting tab says how)")
    try:
        find_vllm_python(context.workspace.settings.vllm_python)
    except UserError:  # Caption then starts on the transformers backend; its vLLM choice needs this
        needs.append("Caption's vLLM backend needs `python3 studio.py setup-vllm` once (the transformers backend "
                     "captions now)")
    missing = f" Except: {'; '.join(needs)}." if needs else ""
    return (f"**Demo mode** — {context.demo_reason} Generating tabs use the tiny random-weight models: results are "
            f"noise, but the controls work.{missing} See *Models & Settings*.")


def refresh_on_show(tab, lists, outputs) -> None:
    """Choices made elsewhere (a new dataset, run, checkpoint, LoRA) appear when the tab is opened."""
    tab.select(lists, outputs=outputs, show_progress="hidden", queue=False)


def carry_dataset(captioning: str | None, training: str | None, names=()):
    """Opening Train after working on a dataset in Caption chooses that dataset, unless one is chosen already;
    with none chosen anywhere, the only dataset there is (Start said "Choose a dataset first." of the one)."""
    if training:
        return gr.update()
    if captioning:
        return gr.update(value=captioning)
    return gr.update(value=names[0]) if len(names) == 1 else gr.update()


def try_in_sketch(context: StudioContext, name, step, rows):
    """Train → Sketch with the chosen step's checkpoint added to Sketch's LoRAs at strength 1: (main tabs, the
    LoRA rows, Train's note). The step's samples show the run's own prompts; Sketch tries the artist's."""
    from blk.errors import UserError
    from ui import lora_stack
    from ui.tabs.train import step_checkpoint

    try:
        path = step_checkpoint(context, name, step)
    except UserError as exc:
        return gr.update(), rows, f"**{exc}**"
    added, note = lora_stack.add_lora(context, path, rows or [])  # one already in the list stays as it is
    if note.startswith("**"):  # refused: the file went away meanwhile
        return gr.update(), rows, note
    return gr.Tabs(selected="sketch"), added, ""


PICK_FIRST = "Click a sketch first."  # in Sketch's note when a send button is pressed with none selected


def to_compose(path):
    """Sketch → Stencil › Compose, as the background image: (main tabs, Stencil's tabs, file, kind, note)."""
    if not path:
        return gr.update(), gr.update(), gr.update(), gr.update(), PICK_FIRST
    return gr.Tabs(selected="stencil"), gr.Tabs(selected="compose"), path, "image", gr.update()


def to_matting(path, unavailable: str | None = None):
    """Sketch → Stencil › Matting: (main tabs, Stencil's tabs, the image to cut out, note). `unavailable`:
    why matting cannot run here (`blk.stencil.matting.unavailable_reason`); then Sketch says so and stays,
    instead of opening a tab whose Cut out is greyed."""
    if not path:
        return gr.update(), gr.update(), gr.update(), PICK_FIRST
    if unavailable:
        return gr.update(), gr.update(), gr.update(), f"Cut out uses Stencil's matting, which is not set up: {unavailable}"
    return gr.Tabs(selected="stencil"), gr.Tabs(selected="matting"), path, gr.update()


PICK_ASSET = "Click an asset in the gallery first."  # Stencil's status, for a send with none chosen
EXPORT_FIRST = "Export first: the upscale starts from the saved flattened PNG."  # Compose's status


def to_upscale(path, first: str = PICK_FIRST):
    """A picture → Upscale: (main tabs, the image to upscale, the sending tab's note)."""
    if not path:
        return gr.update(), gr.update(), first
    return gr.Tabs(selected="upscale"), path, gr.update()


def send_between_tabs(context: StudioContext, tabs, sketched: dict, stenciled: dict, upscaled: dict) -> None:
    """A sketch goes on to Stencil (as the collage background, or to be cut out) or to Upscale; a Stencil
    asset or an exported collage goes to Upscale. With nothing chosen, the sending tab says what to do."""
    from blk.stencil.matting import unavailable_reason

    note = sketched["selected_note"]
    sketched["to_compose"].click(to_compose, inputs=sketched["selected"],
                                 outputs=[tabs, stenciled["tabs"], stenciled["background_file"],
                                          stenciled["background_kind"], note])
    sketched["to_matting"].click(lambda path: to_matting(path, unavailable_reason(context.workspace)),
                                 inputs=sketched["selected"],
                                 outputs=[tabs, stenciled["tabs"], stenciled["matting_source"], note])
    choose_upscaler, current, upscaler = upscaled["on_open"]  # a tab selected by code fires no select of its own
    for button, picture, sender_note, first in (
            (sketched["to_upscale"], sketched["selected"], note, PICK_FIRST),
            (stenciled["to_upscale"], stenciled["chosen"], stenciled["status"], PICK_ASSET),
            (stenciled["flat_to_upscale"], stenciled["exported_flat"], stenciled["compose_status"], EXPORT_FIRST)):
        button.click(lambda path, first=first: to_upscale(path, first), inputs=picture,
                     outputs=[tabs, upscaled["image"], sender_note]
                     ).then(choose_upscaler, inputs=current, outputs=upscaler, show_progress="hidden")
