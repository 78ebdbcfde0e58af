"""Caption tab: pick a dataset; caption it with a model (few-shot); curate captions in the grid; check it."""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext
from ui.tabs.caption import captioning, check, grid


def dataset_names(context: StudioContext) -> list[str]:
    root = context.workspace.datasets
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def import_images(context: StudioContext, new_name: str, current: str, files):
    """Create a dataset from uploads (a name given), or add them to the selected one."""
    from blk.data.importer import import_files
    from blk.errors import UserError

    create = bool((new_name or "").strip())
    try:
        result = import_files(context.workspace, new_name if create else current, files or [], create=create)
    except UserError as exc:
        return gr.update(), f"**{exc}**", gr.update()
    lines = [result.sentence()] + [f"- **{reason}**" for _, reason in result.failed]
    chosen = result.folder.name if result.added else (current or None)
    return gr.Dropdown(choices=dataset_names(context), value=chosen), "\n".join(lines), None


def create_or_add(context: StudioContext, new_name: str, current: str, files):
    """`import_images`, and the Name field emptied once that dataset exists (so the next add goes into it)."""
    chosen, note, uploads = import_images(context, new_name, current, files)
    created = bool((new_name or "").strip()) and isinstance(chosen, gr.Dropdown)
    return chosen, note, uploads, ("" if created else gr.update())


def dataset_choices(context: StudioContext) -> gr.Dropdown:
    """The datasets on disk now (one made by Import, or by Stencil's ink-to-alpha, appears); the choice stays."""
    return gr.Dropdown(choices=dataset_names(context))


def base_model_names(context: StudioContext) -> list[str]:
    """The Flux and SDXL models on this machine (their tokenizers count the captions)."""
    from blk.models.registry import FAMILIES, list_models

    return [row.name for row in list_models(context.workspace) if row.found and row.family in FAMILIES]


def build(context: StudioContext) -> dict:
    gr.Markdown("Datasets live in `workspace/datasets/NAME/`: images with `NAME.txt` captions beside them.")
    with gr.Row():
        dataset = gr.Dropdown(choices=dataset_names(context), value=None, label="Dataset", scale=4,
                              allow_custom_value=True, info="Choosing one shows its captions below.",
                              elem_id="blk-caption-dataset")
        refresh = gr.Button("↻ Datasets", size="sm", scale=0, min_width=110)
        # the token budgets differ by family (Flux: CLIP 77 + T5 512; SDXL: two CLIPs of 77), so the counts
        # follow the model the artist will train; kept by the app, so a reload shows the one in use
        token_model = gr.Dropdown(base_model_names(context), value=lambda: context.captioning.token_model_name(),
                                  label="Count tokens for", info="The model you will train: its text encoders' "
                                  "limits.", scale=2, elem_id="blk-caption-token-model")
    selected_image = gr.State(None)
    rows_state = gr.State([])  # the grid's rows on screen, with the hashes they were read at
    refresh.click(lambda: dataset_choices(context), outputs=dataset)
    gr.on(None, lambda: dataset_choices(context), outputs=dataset, show_progress="hidden")  # each page load
    with gr.Accordion("New dataset, or add images", open=False):
        with gr.Row():
            new_name = gr.Textbox(label="Name (new) — or leave empty to add to the dataset above",
                                  elem_id="blk-new-dataset-name", scale=3)
            uploads = gr.File(label="Images, with NAME.txt captions if you have them", file_count="multiple",
                              type="filepath", elem_id="blk-new-dataset-files", scale=4)
            create = gr.Button("Create / add", variant="primary", scale=1, elem_id="blk-new-dataset-create")
        import_note = gr.Markdown(elem_id="blk-new-dataset-note")
    create.click(lambda n, d, f: create_or_add(context, n, d, f), inputs=[new_name, dataset, uploads],
                 outputs=[dataset, import_note, uploads, new_name])
    with gr.Tabs():
        with gr.Tab("Captions"):
            with gr.Accordion("Caption with a vision-language model", open=False):
                after_batch, style_saved, examples = captioning.build(context, dataset, selected_image, rows_state)
            grid.build(context, dataset, selected_image, rows_state, after_batch, style_saved, token_model, examples)
        with gr.Tab("Check"):
            check.build(context, dataset)
    # opening the tab: datasets made elsewhere, and base models added while the app ran
    on_show = (lambda: (dataset_choices(context), gr.Dropdown(choices=base_model_names(context))),
               [dataset, token_model])
    return {"on_show": on_show, "dataset": dataset}
