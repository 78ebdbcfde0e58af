"""Assemble the Blocks: a demo-mode banner, the six job tabs, Models & Settings."""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext
from ui.tabs import caption, models, review, sketch, stencil, train, upscale


def build_app(context: StudioContext) -> gr.Blocks:
    with gr.Blocks(title="BLK Studio", analytics_enabled=False) as demo:
        gr.Markdown("# BLK Studio")
        if context.demo:
            gr.Markdown(f"**Demo mode** — {context.demo_reason} Generating tabs use the tiny random-weight "
                        "models: results are noise, but every control works. See *Models & Settings*.",
                        elem_classes=["blk-banner"])
        with gr.Tabs() as tabs:
            with gr.Tab("Caption"):
                caption.build(context)
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
        send_between_tabs(tabs, sketched, stenciled, upscaled)
        for tab, built in ((train_tab, trained), (sketch_tab, sketched), (stencil_tab, stenciled),
                           (upscale_tab, upscaled), (review_tab, reviewed)):
            refresh_on_show(tab, *built["on_show"])
    return demo


def refresh_on_show(tab, lists, outputs) -> None:
    """Choices made elsewhere (a new dataset, run, checkpoint, LoRA) appear when the tab is opened."""
    tab.select(lists, outputs=outputs, show_progress="hidden", queue=False)


def send_between_tabs(tabs, sketched: dict, stenciled: dict, upscaled: dict) -> None:
    """A sketch goes on to Stencil (as the collage background, or to be cut out) or to Upscale."""
    def to_compose(path):
        if not path:
            return gr.update(), gr.update(), gr.update(), gr.update()
        return gr.Tabs(selected="stencil"), gr.Tabs(selected="compose"), path, "image"

    def to_matting(path):
        if not path:
            return gr.update(), gr.update(), gr.update()
        return gr.Tabs(selected="stencil"), gr.Tabs(selected="matting"), path

    sketched["to_compose"].click(to_compose, inputs=sketched["selected"],
                                 outputs=[tabs, stenciled["tabs"], stenciled["background_file"],
                                          stenciled["background_kind"]])
    sketched["to_upscale"].click(lambda path: (gr.Tabs(selected="upscale"), path) if path else (gr.update(),) * 2,
                                 inputs=sketched["selected"], outputs=[tabs, upscaled["image"]])
    sketched["to_matting"].click(to_matting, inputs=sketched["selected"],
                                 outputs=[tabs, stenciled["tabs"], stenciled["matting_source"]])
