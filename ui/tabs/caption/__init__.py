"""Caption tab: pick a dataset; caption it with a model (few-shot); curate captions in the grid; check it."""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext
from ui.tabs.caption import captioning, check, grid


def dataset_names(context: StudioContext) -> list[str]:
    root = context.workspace.datasets
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def build(context: StudioContext) -> None:
    gr.Markdown("Datasets live in `workspace/datasets/NAME/`: images with `NAME.txt` captions beside them.")
    with gr.Row():
        dataset = gr.Dropdown(choices=dataset_names(context), label="Dataset", scale=4, allow_custom_value=True)
        refresh = gr.Button("↻ Datasets", size="sm", scale=0, min_width=110)
    selected_image = gr.State(None)
    rows_state = gr.State([])  # the grid's rows on screen, with the hashes they were read at
    refresh.click(lambda: gr.Dropdown(choices=dataset_names(context)), outputs=dataset)
    with gr.Tabs():
        with gr.Tab("Captions"):
            with gr.Accordion("Caption with a vision-language model", open=False):
                after_batch = captioning.build(context, dataset, selected_image, rows_state)
            grid.build(context, dataset, selected_image, rows_state, after_batch)
        with gr.Tab("Check"):
            check.build(context, dataset)
