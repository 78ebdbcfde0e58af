"""Training items: images with their captions, in aspect buckets, with caption augmentation.

Buckets keep each image's aspect ratio at a chosen area (e.g. 512², 768², 1024²),
in multiples of 64 px, and never upscale: an image smaller than a bucket goes
to the largest bucket it fills, or its own size rounded down.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from blk.data.captions import CaptionStore
from blk.data.scan import scan
from blk.errors import UserError

MULTIPLE = 64


@dataclass(frozen=True)
class Item:
    image: str  # relative to the dataset
    sha256: str
    caption: str
    width: int  # bucket size the image is resized (and centre-cropped) to
    height: int
    flip: bool = False


def bucket_size(width: int, height: int, resolutions: list[int]) -> tuple[int, int]:
    """The bucket for an image: the largest area it fills, at its aspect ratio, in multiples of 64."""
    aspect = width / height
    for side in sorted(resolutions, reverse=True):
        w = max(MULTIPLE, int(side * math.sqrt(aspect)) // MULTIPLE * MULTIPLE)
        h = max(MULTIPLE, int(side / math.sqrt(aspect)) // MULTIPLE * MULTIPLE)
        if w <= width and h <= height:
            return w, h
    return max(MULTIPLE, width // MULTIPLE * MULTIPLE), max(MULTIPLE, height // MULTIPLE * MULTIPLE)


def load_items(dataset: Path, resolutions: list[int], flip: bool) -> list[Item]:
    """Every usable, captioned image; one sentence if there is nothing to train on."""
    records = [r for r in scan(dataset) if r.ok]
    if not records:
        raise UserError(f"{dataset.name} has no usable images to train on.")
    store = CaptionStore(dataset)
    items, missing = [], []
    for record in records:
        caption = store.read(record.rel).text.strip()
        if not caption:
            missing.append(record.rel)
            continue
        w, h = bucket_size(record.width, record.height, resolutions)
        items.append(Item(record.rel, record.sha256, caption, w, h))
        if flip:
            items.append(Item(record.rel, record.sha256, caption, w, h, flip=True))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{len(missing)} image(s) have no caption ({shown}); caption them or move them out first.")
    return items


def augment_caption(caption: str, rng: random.Random, dropout: float, shuffle: bool, keep: int) -> str:
    """Caption dropout (empty caption) and shuffling of comma-separated parts after the first `keep`."""
    if dropout and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    parts = [p.strip() for p in caption.split(",")]
    head, tail = parts[:keep], parts[keep:]
    rng.shuffle(tail)
    return ", ".join(p for p in head + tail if p)


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """A reproducible permutation per epoch, so that a resumed run sees the same data order."""
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order
