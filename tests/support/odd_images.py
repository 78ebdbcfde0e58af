"""Build a folder of odd, broken and hostile images for dataset tests (nothing is checked in)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG header declaring a huge image, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def smooth(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture (gradients + a disc) so that perceptual hashes mean something."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < r * r).astype(float)
    rgb = np.stack([x * rng.uniform(0.5, 1), y * rng.uniform(0.5, 1), disc], axis=2)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def make_odd_dataset(folder: Path, outside: Path) -> dict[str, str]:
    """Write the dataset; return {file name: what it is}. Bad files are named bad_*."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    made = {}

    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    made["cmyk.jpg"] = "CMYK JPEG, pure red"

    grey16 = np.linspace(0, 65535, 64 * 16, dtype=np.uint16).reshape(16, 64)
    Image.fromarray(grey16, mode="I;16").save(folder / "grey16.png")
    made["grey16.png"] = "16-bit greyscale PNG ramp"

    import tifffile

    rgb16 = np.zeros((8, 8, 3), dtype=np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 257 * 100 + 50  # between two 8-bit levels
    tifffile.imwrite(folder / "rgb16.tif", rgb16, photometric="rgb")
    made["rgb16.tif"] = "16-bit RGB TIFF"

    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(0, (0, 0, 8, 16))  # left half uses index 0, transparent
    palette.save(folder / "palette_transparent.png", transparency=0)
    made["palette_transparent.png"] = "palette PNG, left half transparent"

    la = Image.merge("LA", (Image.new("L", (8, 8), 200), Image.new("L", (8, 8), 77)))
    la.save(folder / "grey_alpha.png")
    made["grey_alpha.png"] = "LA PNG"

    rotated = Image.new("RGB", (40, 20), (0, 0, 255))
    rotated.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    made["exif_rotated.jpg"] = "JPEG with EXIF orientation 6"

    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "one_pixel.png")
    made["one_pixel.png"] = "1×1"

    buffer = io.BytesIO()
    noise(64, 64, 1).save(buffer, format="PNG")
    (folder / "bad_truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    made["bad_truncated.png"] = "truncated PNG"

    (folder / "bad_bomb.png").write_bytes(bomb_png())
    made["bad_bomb.png"] = "decompression bomb header"

    (folder / "bad_empty.png").write_bytes(b"")
    made["bad_empty.png"] = "zero bytes"

    (folder / "bad_not_an_image.jpg").write_text("just some text, not a JPEG")
    made["bad_not_an_image.jpg"] = "text with a .jpg name"

    smooth(96, 96, 7).save(folder / "ünï cødé name.png")
    (folder / "ünï cødé name.txt").write_bytes("a café drawing, naïve style".encode("cp1252"))
    made["ünï cødé name.png"] = "unicode and spaces in the name, caption in cp1252"

    smooth(96, 96, 7).save(folder / "copy of unicode.png")
    made["copy of unicode.png"] = "exact duplicate of the unicode one"

    near = np.asarray(smooth(96, 96, 7)).astype(np.int16) + 6
    Image.fromarray(near.clip(0, 255).astype(np.uint8)).save(folder / "near_duplicate.jpg", quality=90)
    made["near_duplicate.jpg"] = "brightened JPEG of the unicode one"

    (folder / "sub").mkdir(exist_ok=True)
    smooth(80, 48, 3).save(folder / "sub" / "nested.webp")
    made["sub/nested.webp"] = "WebP in a sub-folder"

    smooth(32, 32, 11).save(outside / "secret.png")
    (folder / "bad_link_outside.png").symlink_to(outside / "secret.png")
    made["bad_link_outside.png"] = "symlink to a file outside the dataset"
    return made
