"""A list of LoRAs, each with its own strength: pick or type a file, add, adjust, remove.

Picking a LoRA from the list adds it at once (a LoRA left in the picker and never added was silently not
used); Add is for a path typed by hand.

Shared by Sketch and Stencil. Paths typed by hand are confined to the
workspace and the folders allowed in settings before they are used.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui.context import StudioContext


def lora_choices(context: StudioContext) -> list[tuple[str, str]]:
    from blk.generate.library import available_loras

    return [(label, str(path)) for label, path in available_loras(context.workspace)]


def model_family(context: StudioContext, model_name) -> str | None:
    """The base model's family ("flux", "sdxl"), or None while it cannot be resolved (a name being typed)."""
    from blk.errors import UserError
    from blk.models.registry import resolve

    try:
        # the family alone: a tiny model is not built for it (that is the job of the first generation)
        return resolve(model_name, context.workspace, build_tiny=False).family if model_name else None
    except (UserError, OSError, ValueError):
        return None


def add_lora(context: StudioContext, chosen: str, items: list, model_name: str | None = None):
    """Add a LoRA (a picked one, or a typed path inside the allowed folders) at strength 1. One made for another
    family than the base model's is added with a warning (the artist may be about to change the model)."""
    from blk.errors import UserError
    from blk.generate.lora_family import family_mismatch

    if not chosen:
        return items, "Choose a LoRA to add."
    try:
        path = context.workspace.confine(chosen)
    except UserError as exc:
        return items, f"**{exc}**"
    if not path.is_file():
        return items, f"**{chosen} is not a file.**"
    if any(item[0] == str(path) for item in items):
        return items, f"{path.name} is already in the list."
    warning = family_mismatch(path, model_family(context, model_name))
    return items + [[str(path), 1.0]], f"**{warning}**" if warning else ""


def mismatch_note(context: StudioContext, model_name, items: list) -> str:
    """After the base model changes: the LoRAs in the list that were made for the other family, in one line."""
    from blk.generate.lora_family import family_mismatch

    family = model_family(context, model_name)
    warnings = [family_mismatch(path, family) for path, _ in items or []]
    return "  \n".join(f"**{w}**" for w in warnings if w)


def restorable(context: StudioContext, items) -> list:
    """The [[path, strength], …] rows of a remembered list that may still be used: a file inside the
    allowed folders (the same check as Add), a numeric strength. Others are dropped without a word."""
    from blk.errors import UserError

    kept = []
    for item in items if isinstance(items, list) else []:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
            continue
        try:
            path = context.workspace.confine(item[0])
        except (UserError, OSError, ValueError):  # outside the allowed folders, or not a path at all
            continue
        if path.is_file() and all(row[0] != str(path) for row in kept):
            kept.append([str(path), float(item[1])])
    return kept


def strength_label(path: str) -> str:
    """What a row's strength slider is called: "tiny-run · step 12" for a run's checkpoint (the run and the step
    an artist knows it by, as Train and Review say them), the file name otherwise."""
    from blk.train.pins import CHECKPOINT_NAME

    path = Path(path)
    step = CHECKPOINT_NAME.match(path.name)
    if path.parent.name == "checkpoints" and step:
        return f"{path.parent.parent.name} · step {int(step.group(1))} — strength"
    return f"{path.name} — strength"


def build(context: StudioContext, prefix: str, label: str, model: gr.Dropdown | None = None
          ) -> tuple[gr.State, gr.Dropdown]:
    """Render the picker and the list; returns the State holding [[path, strength], …] and the picker. With the
    base model's dropdown, a LoRA of the other family is said when added, or when the model changes."""
    with gr.Group():
        with gr.Row(equal_height=True):
            pick = gr.Dropdown(lora_choices(context), value=None, label=label, allow_custom_value=True, scale=4,
                               elem_id=f"{prefix}-lora-pick", info="Picking one adds it; a typed path: Add")
            with gr.Column(scale=0, min_width=90):  # two small buttons stacked, not stretched to the row
                add = gr.Button("Add", size="sm", elem_id=f"{prefix}-lora-add")
                refresh = gr.Button("↻ List", size="sm")
        items = gr.State([])
        message = gr.Markdown(padding=True, elem_id=f"{prefix}-lora-note")

        @gr.render(inputs=items)
        def show(current):
            for index, (path, strength) in enumerate(current):
                with gr.Row(equal_height=True):  # the LoRA's name labels its strength slider: one line, full width
                    # interactive said outright: inside a render Gradio 6.31 made it read-only (disabled)
                    slider = gr.Slider(-1.0, 2.0, value=strength, step=0.05, label=strength_label(path),
                                       scale=4, interactive=True)
                    remove = gr.Button("Remove", size="sm", scale=0, min_width=70)
                    slider.release(lambda value, rows, i=index: [[p, value if j == i else s]
                                                                 for j, (p, s) in enumerate(rows)],
                                   inputs=[slider, items], outputs=items)
                    remove.click(lambda rows, i=index: [row for j, row in enumerate(rows) if j != i],
                                 inputs=items, outputs=items)

    def pick_and_add(chosen, rows, model_name=None):
        rows, note = add_lora(context, chosen, rows, model_name)
        return rows, note, gr.Dropdown(value=None)  # an empty picker: what was picked is in the list below

    with_model = [model] if model is not None else []
    pick.select(pick_and_add, inputs=[pick, items, *with_model], outputs=[items, message, pick])
    add.click(lambda chosen, rows, *m: add_lora(context, chosen, rows, *m), inputs=[pick, items, *with_model],
              outputs=[items, message])
    if model is not None:
        model.change(lambda name, rows: mismatch_note(context, name, rows), inputs=[model, items], outputs=message,
                     show_progress="hidden")
    refresh.click(lambda: gr.Dropdown(choices=lora_choices(context)), outputs=pick)
    return items, pick
