"""Small previews, cached under the dataset's `.blk/thumbs/` by content hash.

The UI shows these instead of the originals, so a 100-megapixel scan never
travels to the browser whole. Alpha is kept (PNG thumbnails).
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from blk import atomic
from blk.data import images
from blk.data.scan import ImageRecord, meta_dir


def thumbnail_path(dataset: Path, record: ImageRecord, size: int) -> Path:
    return meta_dir(dataset) / "thumbs" / f"{record.sha256[:32]}-{size}.png"


def thumbnail(dataset: str | Path, record: ImageRecord, size: int = 256) -> Path:
    """Path of a cached thumbnail whose longer side is at most `size`; made on first use."""
    dataset = Path(dataset)
    if not record.ok:
        raise images.BadImage(record.error)
    target = thumbnail_path(dataset, record, size)
    if target.exists():
        return target
    im = images.open_image(dataset / record.rel, preview=size)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", optimize=False)
    atomic.write_bytes(target, buffer.getvalue())
    return target
