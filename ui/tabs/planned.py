"""Tabs whose controls arrive with later work: they say what they will do, and offer nothing fake."""

import gradio as gr

PLANNED = {
    "Stencil": "Transparent RGBA assets with LayerDiffuse (BLK-Stencil), ink-to-alpha for scans, and layered "
               "export to OpenRaster for Krita and GIMP.",
    "Upscale": "Real-ESRGAN (tiled) and diffusion + texture LoRA (tiled, multi-pass) up to mural and gigapixel "
               "sizes, written as tiled BigTIFF in bounded memory (BLK-Upscale).",
}


def build(name: str) -> None:
    gr.Markdown(f"**Not available yet.** {PLANNED[name]}", elem_classes=["blk-soon"])
