"""How a transparent asset is shown: over a checkerboard, or over a colour the artist picks.

Previews only — the saved PNG keeps its straight alpha untouched.
"""

from __future__ import annotations

import numpy as np

CHECKER_PX = 16
CHECKER_TONES = (204, 255)


def _rgb(colour: str) -> tuple[int, int, int]:
    text = colour.strip().lstrip("#")
    if text.startswith("rgb"):
        parts = text[text.index("(") + 1:text.index(")")].split(",")[:3]
        return tuple(int(round(float(p))) for p in parts)
    if len(text) != 6:
        raise ValueError(f"{colour!r} is not a colour like #RRGGBB")
    return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))


def over_background(image, background: str = "checkerboard"):
    """An RGB preview of an RGBA image over a checkerboard or a #RRGGBB colour."""
    from PIL import Image

    rgba = np.asarray(image.convert("RGBA")).astype(np.float32) / 255.0
    height, width = rgba.shape[:2]
    if background == "checkerboard":
        ys, xs = np.indices((height, width))
        tiles = ((ys // CHECKER_PX + xs // CHECKER_PX) % 2).astype(np.float32)
        base = (CHECKER_TONES[0] + tiles * (CHECKER_TONES[1] - CHECKER_TONES[0]))[..., None] / 255.0
        base = np.repeat(base, 3, axis=2)
    else:
        base = np.broadcast_to(np.array(_rgb(background), np.float32) / 255.0, (height, width, 3))
    alpha = rgba[..., 3:]
    out = rgba[..., :3] * alpha + base * (1.0 - alpha)
    return Image.fromarray((out * 255.0 + 0.5).astype(np.uint8), "RGB")
