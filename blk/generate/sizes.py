"""Image sizes from a megapixel budget and an aspect ratio, on the family's grid.

Artists think in "about one megapixel, landscape"; models need widths and
heights on their latent grid. The aspect list is the one SDXL and Flux were
trained around (1024×1024, 1152×896, 1216×832, 1344×768, 1536×640 and their
portrait forms; at a full 1 MP the widest gives 1600×640). Other budgets scale
those shapes and land on multiples of 64 px, which suit every family.
"""

from __future__ import annotations

import math

from blk.errors import UserError

SIZE_MULTIPLE = {"flux": 16, "sdxl": 8}
ONE_MEGAPIXEL = 1024 * 1024
BUDGET_STEP = 64  # sizes from a budget are multiples of this (and so of every family's grid)

# label -> width / height, from the 1 MP shapes above
ASPECTS = {
    "1:1 square": 1.0,
    "9:7 landscape": 1152 / 896,
    "3:2 landscape": 1216 / 832,
    "16:9 landscape": 1344 / 768,
    "21:9 landscape": 1536 / 640,
    "7:9 portrait": 896 / 1152,
    "2:3 portrait": 832 / 1216,
    "9:16 portrait": 768 / 1344,
    "9:21 portrait": 640 / 1536,
}
MEGAPIXELS = (0.25, 0.5, 1.0, 1.5, 2.0)


def size_for_budget(megapixels: float, aspect: str | float) -> tuple[int, int]:
    """Width and height near `megapixels` at this aspect ratio, each a multiple of 64 px."""
    ratio = ASPECTS[aspect] if isinstance(aspect, str) else float(aspect)
    if not (math.isfinite(megapixels) and megapixels > 0) or not (math.isfinite(ratio) and ratio > 0):
        raise UserError(f"A size budget is a number of megapixels above 0, like 1; {megapixels:g} is not.")
    area = megapixels * ONE_MEGAPIXEL
    width = max(BUDGET_STEP, round(math.sqrt(area * ratio) / BUDGET_STEP) * BUDGET_STEP)
    height = max(BUDGET_STEP, round(math.sqrt(area / ratio) / BUDGET_STEP) * BUDGET_STEP)
    return width, height


# The largest image drawn in one piece: 4096×4096. FLUX and SDXL compose well up to about 2 MP; far beyond, memory
# and time grow with the square of the pixel count (a CPU machine is killed rather than told it is out of
# memory), and Upscale is the way to larger sizes.
MAX_PIXELS = 4096 * 4096


def round_size(width: int, height: int, multiple: int) -> tuple[int, int, str]:
    """The nearest size on a `multiple` px grid, and a notice when it differs from the one asked for."""
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise UserError(f"A width and a height are at least 1 px; {width}×{height} is not a size.")
    if width * height > MAX_PIXELS:
        raise UserError(f"{width}×{height} ({width * height / 1e6:.1f} MP) is larger than a model draws in one "
                        f"piece here (at most {MAX_PIXELS / 1e6:.1f} MP, e.g. 4096×4096): draw at 1–2 MP and "
                        f"enlarge it in Upscale.")
    rounded_w = max(multiple, round(width / multiple) * multiple)
    rounded_h = max(multiple, round(height / multiple) * multiple)
    if (rounded_w, rounded_h) == (width, height):
        return width, height, ""
    return rounded_w, rounded_h, (f"{width}×{height} is not on the model's {multiple} px grid; "
                                  f"using {rounded_w}×{rounded_h}.")


def parse_size(text: str) -> tuple[int, int]:
    """'1216x832' or '1216×832' -> (1216, 832)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a size like 1024x1024")
    return int(parts[0]), int(parts[1])
