"""Alpha-safe operations on RGBA pixels: no dark or coloured fringes at the edges.

Pixels are float32 HxWx4 in [0, 1] with straight (un-premultiplied) alpha, the
way PNGs store them. Any operation that mixes neighbouring pixels (resampling,
blur) runs on premultiplied colour and un-premultiplies afterwards: otherwise
the invisible colour of transparent pixels (often black) bleeds into the edge
of the visible shape as a dark halo. Pure functions on arrays, so the Stencil
tab and RGBA dataset augmentation share them; `apply_to_image` wraps any of
them for PIL images.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
             "box": Image.Resampling.BOX}


def premultiply(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4]
    return np.concatenate([rgba[..., :3] * alpha, alpha], axis=-1).astype(np.float32)


def unpremultiply(premultiplied: np.ndarray) -> np.ndarray:
    """Back to straight alpha; filter overshoot is clipped so colour never exceeds its alpha."""
    alpha = np.clip(premultiplied[..., 3:4], 0.0, 1.0)
    colour = np.clip(premultiplied[..., :3], 0.0, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        straight = np.where(alpha > 0, colour / np.where(alpha > 0, alpha, 1.0), 0.0)
    return np.concatenate([np.clip(straight, 0.0, 1.0), alpha], axis=-1).astype(np.float32)


def flip_horizontal(rgba: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgba[:, ::-1])


def flip_vertical(rgba: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgba[::-1])


def _per_channel(premultiplied: np.ndarray, transform: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Apply a PIL geometry transform to each float channel (mode "F": no 8-bit rounding)."""
    channels = [np.asarray(transform(Image.fromarray(np.ascontiguousarray(premultiplied[..., i]), "F")))
                for i in range(4)]
    return np.stack(channels, axis=-1)


def rotate(rgba: np.ndarray, degrees: float, resample: str = "bicubic", expand: bool = True) -> np.ndarray:
    """Counter-clockwise, like PIL; the new corners are transparent. Quarter turns are exact."""
    turns = degrees / 90.0
    if turns == round(turns):
        return np.ascontiguousarray(np.rot90(rgba, int(round(turns)) % 4))
    mode = _RESAMPLE[resample] if resample != "lanczos" else Image.Resampling.BICUBIC  # PIL rotates up to bicubic
    rotated = _per_channel(premultiply(rgba), lambda im: im.rotate(degrees, mode, expand=expand, fillcolor=0.0))
    return unpremultiply(rotated)


def resize(rgba: np.ndarray, width: int, height: int, resample: str = "lanczos",
           box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Resample to width × height; `box` (left, top, right, bottom, sub-pixel) takes only that region."""
    if (width, height) == (rgba.shape[1], rgba.shape[0]) and box is None:
        return rgba.astype(np.float32, copy=True)
    mode = _RESAMPLE[resample]
    return unpremultiply(_per_channel(premultiply(rgba), lambda im: im.resize((width, height), mode, box=box)))


def scale(rgba: np.ndarray, factor: float, resample: str = "lanczos") -> np.ndarray:
    """Scale both sides by `factor` (at least one pixel each)."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    height, width = rgba.shape[:2]
    return resize(rgba, max(1, round(width * factor)), max(1, round(height * factor)), resample)


def blur(rgba: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of premultiplied pixels; beyond the edges counts as transparent."""
    if sigma <= 0:
        return rgba.astype(np.float32, copy=True)
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = premultiply(rgba).astype(np.float64)
    for axis in (0, 1):
        padding = [(0, 0)] * 3
        padding[axis] = (radius, radius)
        padded = np.pad(out, padding)
        length = out.shape[axis]
        out = sum(weight * np.take(padded, np.arange(i, i + length), axis=axis) for i, weight in enumerate(taps))
    return unpremultiply(out.astype(np.float32))


def grain(rgba: np.ndarray, amount: float = 0.03, seed: int | None = None, mono: bool = True) -> np.ndarray:
    """Gaussian grain (standard deviation `amount`) on colour only; alpha is returned unchanged.

    `mono` uses one noise value for R, G and B (film-like luminance grain)
    instead of coloured speckle.
    """
    rng = np.random.default_rng(seed)
    shape = rgba.shape[:2] + ((1,) if mono else (3,))
    noise = rng.normal(0.0, amount, shape).astype(np.float32)
    out = rgba.astype(np.float32, copy=True)
    out[..., :3] = np.clip(out[..., :3] + noise, 0.0, 1.0)
    return out


def image_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL image → float32 HxWx4 straight alpha (alpha 1 when the image has none)."""
    return np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0


def array_to_image(rgba: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8), "RGBA")


def apply_to_image(image: Image.Image, operation: Callable[..., np.ndarray], *args, **kwargs) -> Image.Image:
    """Run one of these operations on a PIL image, e.g. `apply_to_image(im, rotate, 15)`."""
    return array_to_image(operation(image_to_array(image), *args, **kwargs))
