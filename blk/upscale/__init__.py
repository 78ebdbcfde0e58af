"""Upscale: make artwork larger without seams, at any size, in bounded memory.

The Real-ESRGAN path loads any upscaler spandrel recognises (`models`), runs it
over overlapping tiles blended without seams (`tiler`), streams the tiles into
a canvas on disk (`canvas`) and writes a tiled TIFF (BigTIFF past 4 GB) or a PNG atomically.
`esrgan.run` is the recipe; `cli` exposes it as `python -m blk upscale`.
The tiler and the canvas are shared with the diffusion path.
"""
