"""Assemble the Blocks: a demo-mode banner, the six job tabs, Models & Settings."""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext
from ui.tabs import caption, models, planned, review, sketch, stencil, train


def build_app(context: StudioContext) -> gr.Blocks:
    with gr.Blocks(title="BLK Studio", analytics_enabled=False) as demo:
        gr.Markdown("# BLK Studio")
        if context.demo:
            gr.Markdown(f"**Demo mode** — {context.demo_reason} Generating tabs use the tiny random-weight "
                        "models: results are noise, but every control works. See *Models & Settings*.",
                        elem_classes=["blk-banner"])
        with gr.Tabs():
            with gr.Tab("Caption"):
                caption.build(context)
            with gr.Tab("Train"):
                train.build(context, lambda: caption.dataset_names(context))
            with gr.Tab("Sketch"):
                sketch.build(context)
            with gr.Tab("Stencil"):
                stencil.build(context)
            with gr.Tab("Upscale"):
                planned.build("Upscale")
            with gr.Tab("Review"):
                review.build(context)
            with gr.Tab("Models & Settings"):
                models.build(context)
    return demo
