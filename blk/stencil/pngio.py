"""Reading and writing RGBA pixels at full depth (8 or 16 bits per channel).

Pillow decodes 16-bit RGB(A) PNGs to 8 bits and cannot write 16-bit RGBA PNGs,
so 16-bit PNGs and TIFFs go through libvips (pyvips, already a dependency);
8-bit files go through `blk.data.images`, which already handles odd files.
The depth is read from libvips's header too: Pillow's header loses it for a
16-bit RGB PNG without an EXIF chunk (checking orientation loads the image
and forgets the raw mode) and for planar TIFFs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from blk.atomic import write_bytes
from blk.data.images import read_info, read_pixels
from blk.errors import BadImage


def read_rgba(path: str | Path) -> tuple[np.ndarray, int]:
    """Float32 HxWx4 straight alpha in [0, 1] and the file's depth (8 or 16); alpha 1 when absent."""
    path = Path(path)
    info = read_info(path)  # refuses empty, corrupt, non-image and oversized files with a sentence
    if info.format in ("PNG", "TIFF") and _stored_16bit(path):
        pixels, bits = _read_16bit(path), 16
    else:
        pixels, bits = read_pixels(path), 16 if info.bit_depth >= 16 else 8
    if pixels.shape[2] == 3:
        pixels = np.concatenate([pixels, np.ones(pixels.shape[:2] + (1,), np.float32)], axis=2)
    return np.ascontiguousarray(pixels, dtype=np.float32), bits


def _stored_16bit(path: Path) -> bool:
    """True for 16-bit grey or RGB(A), as libvips's header says (it reads only the header here).

    Other 16-bit layouts (CMYK, say) keep going through `read_pixels`, which converts them.
    """
    from blk.vips import pyvips

    try:
        image = pyvips.Image.new_from_file(str(path))
    except pyvips.Error:
        return False  # `read_pixels` then gives its own sentence
    return image.format == "ushort" and image.interpretation in ("rgb16", "grey16", "srgb", "b-w") \
        and image.bands <= 4


def _read_16bit(path: Path) -> np.ndarray:
    """Float32 HxWx3 or HxWx4 at full depth, upright; a damaged file is one sentence (BadImage)."""
    from blk.vips import pyvips

    try:
        image = pyvips.Image.new_from_file(str(path), fail_on="error").autorot()
        array = image.numpy()
    except pyvips.Error as exc:
        detail = " ".join((exc.detail or exc.message or "").split())  # libvips's own words, on one line
        raise BadImage(f"{path.name} is damaged and cannot be decoded ({detail or 'decode error'}).") from None
    if array.ndim == 2:
        array = array[..., None]
    array = array.astype(np.float32) / 65535.0
    if array.shape[2] in (1, 2):  # grey, grey + alpha
        array = np.concatenate([np.repeat(array[..., :1], 3, axis=2), array[..., 1:]], axis=2)
    return array


def to_levels(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Float [0, 1] to uint8 or uint16 by rounding (not truncation: truncation darkens by half a level)."""
    peak = 65535.0 if bits == 16 else 255.0
    dtype = np.uint16 if bits == 16 else np.uint8
    return np.round(np.clip(pixels, 0.0, 1.0) * peak).astype(dtype)


def png_bytes(levels: np.ndarray) -> bytes:
    """PNG file content for uint8 or uint16 HxW, HxWx3 or HxWx4 pixels."""
    if levels.dtype == np.uint16:
        from blk.vips import pyvips

        bands = 1 if levels.ndim == 2 else levels.shape[2]
        interpretation = "grey16" if bands <= 2 else "rgb16"
        image = pyvips.Image.new_from_array(np.ascontiguousarray(levels), interpretation=interpretation)
        return image.write_to_buffer(".png", compression=6)
    if levels.dtype != np.uint8:
        raise TypeError(f"PNG levels must be uint8 or uint16, not {levels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(levels)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def write_png(path: str | Path, levels: np.ndarray) -> Path:
    """Write atomically: a reader never sees half a PNG."""
    path = Path(path)
    write_bytes(path, png_bytes(levels))
    return path
