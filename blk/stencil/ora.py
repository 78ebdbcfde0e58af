"""OpenRaster (.ora) files: the layered format Krita, GIMP and MyPaint all open.

A zip whose first entry is `mimetype` (stored, not compressed, so the type can
be read at a fixed offset) holding `image/openraster`; then `stack.xml`
(layers listed top first), one PNG per layer under `data/`, a thumbnail of at
most 256 px and `mergedimage.png`, the flattened picture. Layers are written
as 8-bit RGBA PNGs, the depth every reader of the format accepts.
"""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from blk.atomic import write_bytes
from blk.errors import BadImage

MIMETYPE = b"image/openraster"
THUMBNAIL_SIDE = 256


@dataclass
class OraLayer:
    name: str
    pixels: np.ndarray  # uint8 HxWx4, straight alpha
    x: int = 0
    y: int = 0
    opacity: float = 1.0
    visible: bool = True


@dataclass
class OraImage:
    width: int
    height: int
    layers: list[OraLayer] = field(default_factory=list)  # bottom → top
    merged: np.ndarray | None = None  # uint8 HxWx4


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail(merged: np.ndarray) -> np.ndarray:
    from blk.stencil.ops import resize

    height, width = merged.shape[:2]
    factor = THUMBNAIL_SIDE / max(width, height)
    if factor >= 1:
        return merged
    small = resize(merged.astype(np.float32) / 255.0, max(1, round(width * factor)),
                   max(1, round(height * factor)), "bicubic")
    return np.round(small * 255).astype(np.uint8)


def ora_bytes(image: OraImage) -> bytes:
    """The whole archive in memory (then written in one atomic step)."""
    stamp = time.localtime()[:6]
    root = ET.Element("image", version="0.0.5", w=str(image.width), h=str(image.height), xres="72", yres="72")
    stack = ET.SubElement(root, "stack")
    entries = []
    for index, layer in enumerate(image.layers):
        entries.append((f"data/layer{index:03d}.png", _png(layer.pixels)))
    for index, layer in reversed(list(enumerate(image.layers))):  # stack.xml lists the top layer first
        ET.SubElement(stack, "layer", {
            "name": layer.name, "src": f"data/layer{index:03d}.png", "x": str(int(layer.x)), "y": str(int(layer.y)),
            "opacity": f"{float(layer.opacity):.4f}", "visibility": "visible" if layer.visible else "hidden",
            "composite-op": "svg:src-over"})
    xml = b"<?xml version='1.0' encoding='UTF-8'?>\n" + ET.tostring(root, encoding="utf-8")
    merged = image.merged if image.merged is not None else np.zeros((image.height, image.width, 4), np.uint8)

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        def add(name: str, data: bytes, compress: int) -> None:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = compress
            archive.writestr(info, data)

        add("mimetype", MIMETYPE, zipfile.ZIP_STORED)
        add("stack.xml", xml, zipfile.ZIP_DEFLATED)
        for name, data in entries:  # PNGs are compressed already
            add(name, data, zipfile.ZIP_STORED)
        add("Thumbnail/thumbnail.png", _png(_thumbnail(merged)), zipfile.ZIP_STORED)
        add("mergedimage.png", _png(merged), zipfile.ZIP_STORED)
    return buffer.getvalue()


def write_ora(path: str | Path, image: OraImage) -> Path:
    path = Path(path)
    write_bytes(path, ora_bytes(image))
    return path


def read_ora(path: str | Path) -> OraImage:
    """Layers bottom → top with their offsets; nested stacks are flattened in order, offsets added."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.read("mimetype").strip() != MIMETYPE:
                raise BadImage(f"{path.name} is not an OpenRaster file (its mimetype is not image/openraster).")
            root = ET.fromstring(archive.read("stack.xml"))
            layers = []
            _collect(root.find("stack"), archive, 0, 0, layers, path)
            merged = _decode(archive.read("mergedimage.png"), path) if "mergedimage.png" in archive.namelist() \
                else None
    except (zipfile.BadZipFile, KeyError, ET.ParseError, OSError) as exc:
        raise BadImage(f"{path.name} is not a readable OpenRaster file ({exc}).") from None
    layers.reverse()
    return OraImage(int(root.get("w", 0)), int(root.get("h", 0)), layers, merged)


def _collect(stack, archive: zipfile.ZipFile, dx: int, dy: int, out: list[OraLayer], path: Path) -> None:
    if stack is None:
        return
    for element in stack:
        x, y = dx + int(float(element.get("x", 0))), dy + int(float(element.get("y", 0)))
        if element.tag == "stack":
            _collect(element, archive, x, y, out, path)
        elif element.tag == "layer":
            out.append(OraLayer(name=element.get("name", ""), pixels=_decode(archive.read(element.get("src")), path),
                                x=x, y=y, opacity=float(element.get("opacity", 1.0)),
                                visible=element.get("visibility", "visible") != "hidden"))


def _decode(data: bytes, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGBA"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"{path.name} holds a layer that cannot be decoded ({exc}).") from None
