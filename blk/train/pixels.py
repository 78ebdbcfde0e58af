"""Training pixels: an image file → its bucket's RGBA pixels, with alpha-safe augmentation.

Every resampling runs on premultiplied colour (`blk.stencil.ops`, shared with
the Stencil tab), so transparent pixels never bleed their hidden colour into
an asset's edge. The result stays RGBA until the last moment: the runner
either flattens it over white (alpha kept for the loss mask) or hands it to
LayerDiffuse's transparent encoder.

Augmented variants (the paper's Stencil recipe: flips, 10–15 % rotation and
scale, light jitter, mild grain) are a fixed number of copies per image, each
drawn from a generator seeded by the image's hash and the variant number: the
same variant is the same pixels in every run and epoch, so its latent is
cached like any other, and a resumed run sees exactly what it would have seen.

A picture many times its bucket's size is box-reduced by a whole factor before
the exact filter (`_source`), as Pillow's `reducing_gap` does: the same pixels
to a level, at a fraction of the memory and time of the whole picture in float.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from blk.stencil import ops


@dataclass(frozen=True)
class Jitter:
    """One variant's transform: rotation (degrees, counter-clockwise), scale, shift (fraction of the side), grain."""
    degrees: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    grain: float = 0.0
    seed: int = 0


def jitter_for(sha256: str, variant: int, rotate: float, scale: float, shift: float, grain: float) -> Jitter:
    """Variant 0 is the image itself; variant n ≥ 1 draws its transform from (image hash, n)."""
    if variant == 0:
        return Jitter()
    rng = random.Random(f"{sha256}:{variant}")
    return Jitter(degrees=rng.uniform(-rotate, rotate), scale=1.0 + rng.uniform(-scale, scale),
                  shift_x=rng.uniform(-shift, shift), shift_y=rng.uniform(-shift, shift), grain=grain,
                  seed=rng.randrange(2**31))


def bucket_pixels(image: Image.Image, width: int, height: int, flip: bool = False,
                  jitter: Jitter = Jitter()) -> np.ndarray:
    """The image centre-cropped to the bucket's aspect, resized to it, jittered and flipped: float32 H×W×4.

    An opaque image is never left with empty corners: after rotation or
    shrinking it is zoomed just enough to cover the frame again.
    """
    opaque = image.mode != "RGBA" or image.getextrema()[3][0] == 255
    box = _centred_box(image.size, width, height)
    if jitter == Jitter():
        source, box = _source(image, box, width, height)
        rgba = ops.resize(source, width, height, box=box)
    else:
        rgba = _jitter(image, box, width, height, jitter, opaque)
    return ops.flip_horizontal(rgba) if flip else rgba


# As Pillow's `reducing_gap`: a box reduction by a whole factor that leaves at least this many source pixels per
# output pixel, then the exact filter, reads the same as the filter alone (measured: tests/test_train_pixels.py).
REDUCING_GAP = 2


def _source(image: Image.Image, box, width: int, height: int):
    """The float RGBA pixels a resample of `box` to width × height reads, and the box in them.

    A picture many times the bucket's size (a 48 MP scan for a 1024 px bucket) is first box-reduced by a whole
    factor, by Pillow on premultiplied 8-bit pixels (its "RGBa"), so no hidden colour bleeds: converted to float
    whole it took 2 GB and 13 s an image."""
    left, top, right, bottom = box
    factor = int(min((right - left) / width, (bottom - top) / height) // REDUCING_GAP)
    if factor < 2:
        return ops.image_to_array(image), box
    # the whole pixels the box touches; a side that is no multiple of the factor ends in a partial block, which
    # Pillow averages over the pixels it has (trimming it instead stretched the picture by up to half a pixel)
    x0, y0 = math.floor(left), math.floor(top)
    bounds = (x0, y0, min(image.width, math.ceil(right)), min(image.height, math.ceil(bottom)))
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if image.mode == "RGB" and not has_alpha:  # reduced where it lies, without a copy of the region
        reduced = image.reduce(factor, box=bounds)
    else:
        region = image.crop(bounds)
        reduced = (region.convert("RGBA").convert("RGBa") if has_alpha else region.convert("RGB")).reduce(factor)
    reduced = np.asarray(reduced, np.float32) / 255.0
    if not has_alpha:
        reduced = np.concatenate([reduced, np.ones_like(reduced[..., :1])], axis=-1)
    inner = ((left - x0) / factor, (top - y0) / factor, (right - x0) / factor, (bottom - y0) / factor)
    return ops.unpremultiply(reduced), inner


def over_background(rgba: np.ndarray, colour: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Straight RGBA → RGB composited over a flat colour (0..1)."""
    alpha = rgba[..., 3:4]
    return (rgba[..., :3] * alpha + np.asarray(colour, np.float32) * (1.0 - alpha)).astype(np.float32)


def _centred_box(size: tuple[int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """The largest centred box of the target aspect ratio, to sub-pixel precision (as ImageOps.fit crops)."""
    w, h = size
    if w * height > h * width:  # too wide
        crop = h * width / height
        return ((w - crop) / 2, 0.0, (w + crop) / 2, float(h))
    crop = w * height / width
    return (0.0, (h - crop) / 2, float(w), (h + crop) / 2)


def _jitter(image: Image.Image, box, width: int, height: int, jitter: Jitter, opaque: bool) -> np.ndarray:
    """The zoom is part of the one resample from the source (resized straight to the zoomed size, then rotated
    and windowed): zooming the bucket-sized pixels instead would enlarge them, and the variant would be softer
    than its original by the zoom."""
    factor = jitter.scale
    dx, dy = round(jitter.shift_x * width), round(jitter.shift_y * height)
    if opaque:  # cover the frame, shifted: the zoom a rotated rectangle needs, plus the shift's margin
        angle = math.radians(abs(jitter.degrees))
        cover = max(math.cos(angle) + (height / width) * math.sin(angle),
                    math.cos(angle) + (width / height) * math.sin(angle))
        margin = 4 / min(width, height) if jitter.degrees else 0.0  # the rotated edge is soft for a pixel or two
        factor = max(factor, cover * (1 + 2 * max(abs(dx) / width, abs(dy) / height)) + margin)
    # an even difference from the bucket's sides, so that the window is centred on whole pixels
    zoomed_width = max(1, width + 2 * round(width * (factor - 1) / 2))
    zoomed_height = max(1, height + 2 * round(height * (factor - 1) / 2))
    source, box = _source(image, box, zoomed_width, zoomed_height)
    out = ops.resize(source, zoomed_width, zoomed_height, box=box)
    if jitter.degrees:
        out = ops.rotate(out, jitter.degrees, expand=False)
    out = _window(out, width, height, dx, dy)
    return ops.grain(out, jitter.grain, seed=jitter.seed) if jitter.grain else out


def _window(rgba: np.ndarray, width: int, height: int, dx: int = 0, dy: int = 0) -> np.ndarray:
    """The width × height window centred on the image, moved by (dx, dy): the content shifts by (dx, dy);
    whatever lies outside the image is transparent."""
    h, w = rgba.shape[:2]
    top, left = (h - height) // 2 - dy, (w - width) // 2 - dx  # the window's corner in the image
    canvas = np.zeros((height, width, 4), np.float32)
    src_top, src_left = max(0, top), max(0, left)
    src_bottom, src_right = min(h, top + height), min(w, left + width)
    if src_bottom > src_top and src_right > src_left:
        canvas[src_top - top:src_bottom - top, src_left - left:src_right - left] = \
            rgba[src_top:src_bottom, src_left:src_right]
    return canvas
