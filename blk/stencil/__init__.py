"""BLK-Stencil: transparent RGBA assets for collage.

Prompts become RGBA assets through LayerDiffuse (`generate`, with the
method's modules in `transparent_vae` and weight handling in `layerdiffuse`),
ink scans become alpha (`alpha`), RGBA pixels are moved without fringes (`ops`),
layers are stacked and exported flat and as OpenRaster (`compose`, `ora`), and
assets are previewed over a checkerboard or a colour (`preview`).
Everything here works on numpy arrays first, so the UI and dataset
augmentation reuse the same functions; nothing here imports gradio.
"""
