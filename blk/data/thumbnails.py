"""Small previews, cached under the dataset's `.blk/thumbs/` by content hash.

The UI shows these instead of the originals, so a 100-megapixel scan never
travels to the browser whole. Alpha is kept (PNG thumbnails).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from blk import atomic
from blk.data import images
from blk.data.scan import ImageRecord, meta_dir
from blk.errors import UserError


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


def thumbnails(dataset: str | Path, records: list[ImageRecord], size: int = 256,
               workers: int = 2) -> Iterator[tuple[ImageRecord, Path | None]]:
    """(record, thumbnail or None when the file cannot be read) for each record, in order, made `workers` at a
    time: Pillow decodes and resamples outside the GIL, so a page of large PNG scans (about a second each
    on this 2-core machine) is made in parallel, and the caller can show each batch as it comes."""
    from concurrent.futures import ThreadPoolExecutor

    def make(record: ImageRecord) -> Path | None:
        try:
            return thumbnail(dataset, record, size)
        except (UserError, OSError):  # unreadable: its row says why in Check
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="thumbnail") as pool:
        yield from zip(records, pool.map(make, records))
