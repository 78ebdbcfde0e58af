"""Dataset check: lint a dataset before training, with thumbnails of its images."""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext

MAX_THUMBNAILS = 200


def check(context: StudioContext, name: str, trigger: str, progress=gr.Progress()):
    """Run the dataset check; return (report markdown, gallery items)."""
    from blk.data.captions import CaptionStore
    from blk.data.check import check_for_model
    from blk.data.scan import scan
    from blk.data.thumbnails import thumbnails
    from blk.errors import UserError

    if not name:
        return "Choose a dataset first (folders in `workspace/datasets/`).", []
    try:
        folder = context.captioning.dataset(name)
        progress(0.1, desc="Scanning images and counting caption tokens…")
        report = check_for_model(folder, context.workspace, context.captioning.token_model_name(),
                                 trigger=trigger.strip() or None)  # the model chosen in "Count tokens for"
        progress(0.8, desc="Making thumbnails…")
    except UserError as exc:
        return f"**{exc}**", []
    store = CaptionStore(folder)
    gallery = [(str(path), store.read(record.rel).text[:120] or record.rel)
               for record, path in thumbnails(folder, [r for r in scan(folder) if r.ok][:MAX_THUMBNAILS])
               if path is not None]
    return "```\n" + report.to_text() + "\n```", gallery


def build(context: StudioContext, dataset: gr.Dropdown) -> None:
    with gr.Row():
        trigger = gr.Textbox(label="Trigger word (empty: the caption style's)", scale=3)
        run_check = gr.Button("Check dataset", variant="primary", scale=1)
    report = gr.Markdown()
    gallery = gr.Gallery(label="Images (thumbnails)", columns=6, height="auto")
    run_check.click(lambda n, t, progress=gr.Progress(): check(context, n, t, progress),
                    inputs=[dataset, trigger], outputs=[report, gallery], api_name="dataset_check")
