"""Caption tab, first part: pick a dataset, see its images, and check it before training.

Few-shot captioning with a vision-language model and the caption grid arrive
with the captioning work; this tab already lints a dataset for real.
"""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext

MAX_THUMBNAILS = 200


def dataset_names(context: StudioContext) -> list[str]:
    root = context.workspace.datasets
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def check(context: StudioContext, name: str, trigger: str, progress=gr.Progress()):
    """Run the dataset check; return (report markdown, gallery items)."""
    from blk.data.captions import CaptionStore
    from blk.data.check import check_for_model
    from blk.data.thumbnails import thumbnail
    from blk.errors import UserError

    if not name:
        return "Choose a dataset first (folders in `workspace/datasets/`).", []
    try:
        folder = context.workspace.confine(name, base=context.workspace.datasets)
        if not folder.is_dir():
            return f"**There is no dataset named {name} in `workspace/datasets/`.**", []
        progress(0.1, desc="Scanning images and counting caption tokens…")
        report = check_for_model(folder, context.workspace, trigger=trigger.strip() or None)
        progress(0.8, desc="Making thumbnails…")
    except UserError as exc:
        return f"**{exc}**", []
    from blk.data.scan import scan

    store = CaptionStore(folder)
    gallery = []
    for record in [r for r in scan(folder) if r.ok][:MAX_THUMBNAILS]:
        try:
            gallery.append((str(thumbnail(folder, record)), store.read(record.rel).text[:120] or record.rel))
        except UserError:
            continue
    return "```\n" + report.to_text() + "\n```", gallery


def build(context: StudioContext) -> None:
    gr.Markdown("Datasets live in `workspace/datasets/NAME/`: images with `NAME.txt` captions beside them.")
    with gr.Row():
        dataset = gr.Dropdown(choices=dataset_names(context), label="Dataset", scale=3, allow_custom_value=True)
        refresh = gr.Button("↻", size="sm", scale=0, min_width=40)
        trigger = gr.Textbox(label="Trigger word (optional)", scale=2)
        run_check = gr.Button("Check dataset", variant="primary", scale=1)
    report = gr.Markdown()
    gallery = gr.Gallery(label="Images (thumbnails)", columns=6, height="auto", show_label=True)
    refresh.click(lambda: gr.Dropdown(choices=dataset_names(context)), outputs=dataset)
    run_check.click(lambda n, t, progress=gr.Progress(): check(context, n, t, progress), inputs=[dataset, trigger], outputs=[report, gallery],
                    api_name="dataset_check")
