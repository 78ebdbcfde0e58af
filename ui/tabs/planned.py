"""Tabs whose controls arrive with later work: they say what they will do, and offer nothing fake."""

import gradio as gr

PLANNED = {
    "Upscale": "Real-ESRGAN (tiled) and diffusion + texture LoRA (tiled, multi-pass) up to mural and gigapixel "
               "sizes, written as tiled BigTIFF in bounded memory (BLK-Upscale).",
}


def build(name: str) -> None:
    gr.Markdown(f"**Not available yet.** {PLANNED[name]}", elem_classes=["blk-soon"])
