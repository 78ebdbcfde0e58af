"""Before/after on one region: the input enlarged plainly next to the result, at the result's scale.

A whole gigapixel result cannot be shown in a browser, and a shrunken one
hides what upscaling did; a region at full resolution shows it. Both sides
are read by region, so the result never has to fit in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blk.upscale.source import open_input

REGION = 512


def region_box(width: int, height: int, centre: tuple[float, float] = (0.5, 0.5),
               side: int = REGION) -> tuple[int, int, int]:
    """(x, y, side) of the square region of a `width`×`height` result around `centre` (fractions of
    the width and height, 0–1), moved inside the image where it would cross an edge."""
    side = min(side, width, height)
    cx, cy = (min(max(float(c), 0.0), 1.0) for c in centre)
    x = int(min(max(cx * width - side / 2, 0), width - side))
    y = int(min(max(cy * height - side / 2, 0), height - side))
    return x, y, side


def region_pair(before: Path, after: Path, centre: tuple[float, float] = (0.5, 0.5), side: int = REGION):
    """(before, after) PIL images of the same `side`-px region of the result, the input enlarged by Lanczos;
    the region lies around `centre` (fractions of the result's width and height: `region_box`)."""
    from PIL import Image

    small, big = open_input(before, one_region=True), open_input(after, one_region=True)
    x, y, side = region_box(big.width, big.height, centre, side)
    sx, sy = small.width / big.width, small.height / big.height
    box = (x * sx, y * sy, (x + side) * sx, (y + side) * sy)  # the region in input pixels, fractional
    # read with the input pixels Lanczos reaches around it, and resized by the fractional box: cut at whole
    # input pixels and stretched, the "before" sat up to one input pixel off the "after"
    reach = 4
    x0, y0 = max(0, int(box[0]) - reach), max(0, int(box[1]) - reach)
    x1, y1 = min(small.width, int(np.ceil(box[2])) + reach), min(small.height, int(np.ceil(box[3])) + reach)
    crop = small.source.read(x0, y0, x1 - x0, y1 - y0)
    inside = (box[0] - x0, box[1] - y0, min(box[2] - x0, x1 - x0), min(box[3] - y0, y1 - y0))
    before_image = _image(crop).resize((side, side), Image.Resampling.LANCZOS, box=inside)
    return _shown(before_image), _shown(_image(big.source.read(x, y, side, side)))


def _image(pixels):
    """float (h, w, channels) in [0, 1] → an 8-bit RGB or RGBA PIL image."""
    from PIL import Image

    levels = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(levels, "RGBA") if levels.shape[-1] == 4 else Image.fromarray(levels[..., :3], "RGB")


def _shown(image):
    """As the slider shows it: RGBA over a checkerboard, as the input's view and Stencil show transparency (the
    colour kept under alpha 0 is not part of the picture, and showing it read as lost alpha)."""
    from blk.stencil.preview import over_background

    return over_background(image) if image.mode == "RGBA" else image


def suggested_path(width: int, height: int) -> str:
    """RECIPES.md: ESRGAN is faithful to about 8k; beyond, the diffusion path adds the detail."""
    return "esrgan" if max(width, height) <= 8192 else "diffusion"
