"""Stack RGBA layers over a background and export them flat, one PNG each, and as OpenRaster.

Compositing is Porter-Duff "over" on straight-alpha sRGB values, the way Krita
and GIMP blend 8/16-bit sRGB layers in "normal" mode, so the flattened PNG and
the ORA opened in those programs look the same. Scaling is premultiplied (see
`ops`), so scaled edges keep their colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blk.errors import UserError
from blk.stencil.alpha import parse_paper
from blk.stencil.ops import scale as scale_pixels
from blk.stencil.ora import OraImage, OraLayer, write_ora
from blk.stencil.pngio import read_rgba, to_levels, write_png


@dataclass
class Layer:
    """One RGBA element and where it goes; x, y are the top-left corner after scaling."""

    pixels: np.ndarray  # float32 HxWx4 straight alpha in [0, 1]
    name: str = "layer"
    x: int = 0
    y: int = 0
    scale: float = 1.0
    opacity: float = 1.0
    order: int | None = None  # lower is further back; None keeps the list's order
    visible: bool = True
    bits: int = 8  # depth of the source file (16-bit sources keep a 16-bit flattened export)


@dataclass
class Placed:
    name: str
    pixels: np.ndarray  # float32, already scaled
    x: int
    y: int
    opacity: float
    visible: bool


@dataclass
class Composition:
    width: int
    height: int
    background: np.ndarray | None  # float32 HxWx4 canvas, None for transparent
    layers: list[Placed] = field(default_factory=list)  # bottom → top
    flat: np.ndarray | None = None  # float32 HxWx4
    bits: int = 8


def read_within_limit(path: str | Path) -> tuple[np.ndarray, int]:
    """`read_rgba`, after the header's size is checked against what Compose holds in memory (an image too large
    was decoded whole before the canvas check refused it)."""
    from blk.data.images import read_info

    info = read_info(path)
    _check_pixels(info.width, info.height, Path(path).name)
    return read_rgba(path)


def load_layer(path: str | Path, **placement) -> Layer:
    """A layer from an image file (any format `blk.data.images` reads), named after the file."""
    pixels, bits = read_within_limit(path)
    return Layer(pixels=pixels, name=placement.pop("name", Path(path).stem), bits=bits, **placement)


def over(canvas: np.ndarray, pixels: np.ndarray, x: int, y: int, opacity: float = 1.0) -> None:
    """Composite straight-alpha `pixels` onto `canvas` in place at (x, y); what falls outside is cut."""
    height, width = canvas.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + pixels.shape[1], width), min(y + pixels.shape[0], height)
    if x0 >= x1 or y0 >= y1:
        return
    src = pixels[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float64)
    dst = canvas[y0:y1, x0:x1].astype(np.float64)
    src_alpha = src[..., 3:] * opacity
    dst_alpha = dst[..., 3:]
    out_alpha = src_alpha + dst_alpha * (1.0 - src_alpha)
    mixed = src[..., :3] * src_alpha + dst[..., :3] * dst_alpha * (1.0 - src_alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        colour = np.where(out_alpha > 0, mixed / np.where(out_alpha > 0, out_alpha, 1.0), 0.0)
    canvas[y0:y1, x0:x1] = np.concatenate([colour, out_alpha], axis=-1)


def load_background(value) -> tuple[np.ndarray | None, int]:
    """(background, bits) from None/"none", "#RRGGBB", an image file, an RGB tuple in [0, 1] or an array.

    A colour comes back as 3 values, an image as HxWx4 pixels.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "transparent")):
        return None, 8
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        if re.fullmatch(r"#?[0-9a-fA-F]{6}", text) and not Path(text).is_file():
            return parse_paper(text), 8
        if Path(text).is_file():
            return read_within_limit(text)
        raise UserError(f"The background must be #RRGGBB, an image file or none; got {text!r}.")
    return np.asarray(value, dtype=np.float32), 8


# Compose holds the picture in memory (float32 RGBA: 16 bytes a pixel, the flat image and one layer at a time):
# 8192×8192 is about 1 GB each. Larger pictures come from Upscale, which streams from disk.
MAX_CANVAS_PIXELS = 8192 * 8192


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_CANVAS_PIXELS:
        raise UserError(f"{what} would be {width}×{height} px; Compose works in memory up to "
                        f"{MAX_CANVAS_PIXELS / 1e6:.0f} MP (8192×8192): use a smaller scale or position, and "
                        f"enlarge the exported PNG in Upscale.")


def compose(layers: list[Layer], background=None, size: tuple[int, int] | None = None) -> Composition:
    """Scale, order and stack the layers; the canvas is the background image's size, else `size`,
    else just big enough for every layer."""
    background, background_bits = load_background(background)
    ordered = [layer for _, layer in sorted(enumerate(layers), key=lambda item: (
        item[1].order if item[1].order is not None else item[0], item[0]))]
    placed = []
    for layer in ordered:
        if not (np.isfinite(layer.scale) and layer.scale > 0):
            raise UserError(f"The scale of layer {layer.name} must be above 0; got {layer.scale}.")
        _check_pixels(max(1, round(layer.pixels.shape[1] * layer.scale)),
                      max(1, round(layer.pixels.shape[0] * layer.scale)), f"Layer {layer.name} at ×{layer.scale:g}")
        if not 0.0 <= layer.opacity <= 1.0:
            raise UserError(f"The opacity of layer {layer.name} must be between 0 and 1; got {layer.opacity}.")
        pixels = layer.pixels.astype(np.float32)
        if pixels.shape[-1] == 3:
            pixels = np.concatenate([pixels, np.ones(pixels.shape[:2] + (1,), np.float32)], axis=-1)
        if layer.scale != 1.0:
            pixels = scale_pixels(pixels, layer.scale)
        placed.append(Placed(layer.name, pixels, int(layer.x), int(layer.y), float(layer.opacity), layer.visible))

    if background is not None and background.ndim == 3:
        height, width = background.shape[:2]
    elif size is not None:
        width, height = size
    elif placed:
        width = max(p.x + p.pixels.shape[1] for p in placed)
        height = max(p.y + p.pixels.shape[0] for p in placed)
    else:
        raise UserError("Nothing to compose: give at least one layer or a background image.")
    if width <= 0 or height <= 0:
        raise UserError("The layers lie outside the canvas; place them at positive x and y.")
    _check_pixels(width, height, "The canvas")

    canvas_background = None
    if background is not None:
        if background.ndim == 3:
            canvas_background = background.astype(np.float32)
            if canvas_background.shape[-1] == 3:
                canvas_background = np.concatenate(
                    [canvas_background, np.ones((height, width, 1), np.float32)], axis=-1)
        else:
            canvas_background = np.empty((height, width, 4), np.float32)
            canvas_background[..., :3] = background[:3]
            canvas_background[..., 3] = 1.0
    flat = canvas_background.copy() if canvas_background is not None else np.zeros((height, width, 4), np.float32)
    for p in placed:
        if p.visible:
            over(flat, p.pixels, p.x, p.y, p.opacity)
    bits = 16 if background_bits == 16 or any(layer.bits == 16 for layer in layers) else 8
    return Composition(width, height, canvas_background, placed, flat, bits)


def _file_name(index: int, name: str) -> str:
    safe = re.sub(r"[^\w.-]+", "_", name).strip("._") or "layer"
    return f"{index:02d}-{safe[:60]}.png"


@dataclass
class Exported:
    ora: Path
    flat: Path
    layers: list[Path]


def _cropped(p: Placed, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """The part of a layer inside the canvas and its new offset (ORA readers dislike off-canvas data)."""
    x0, y0 = max(p.x, 0), max(p.y, 0)
    x1, y1 = min(p.x + p.pixels.shape[1], width), min(p.y + p.pixels.shape[0], height)
    if x0 >= x1 or y0 >= y1:
        return np.zeros((1, 1, 4), np.float32), 0, 0
    return p.pixels[y0 - p.y:y1 - p.y, x0 - p.x:x1 - p.x], x0, y0


def export(composition: Composition, ora_path: str | Path) -> Exported:
    """Write FILE.ora, FILE.png (flattened) and FILE-layers/NN-name.png (each layer on the full canvas).

    The per-layer PNGs are canvas-sized with the layer's opacity applied, so
    stacking them in any program in order reproduces the picture.
    """
    ora_path = Path(ora_path)
    if ora_path.suffix.lower() != ".ora":
        raise UserError(f"The layered file must end in .ora; got {ora_path.name}.")
    width, height, bits = composition.width, composition.height, composition.bits
    flat_path = write_png(ora_path.with_suffix(".png"), to_levels(composition.flat, bits))

    layer_dir = ora_path.with_name(ora_path.stem + "-layers")
    layer_paths = []
    ora_layers = []
    if composition.background is not None:
        layer_paths.append(write_png(layer_dir / _file_name(0, "background"), to_levels(composition.background, bits)))
        ora_layers.append(OraLayer("background", to_levels(composition.background, 8)))
    for index, p in enumerate(composition.layers, 1):
        alone = np.zeros((height, width, 4), np.float32)
        over(alone, p.pixels, p.x, p.y, p.opacity)
        layer_paths.append(write_png(layer_dir / _file_name(index, p.name), to_levels(alone, bits)))
        pixels, x, y = _cropped(p, width, height)
        ora_layers.append(OraLayer(p.name, to_levels(pixels, 8), x, y, p.opacity, p.visible))
    write_ora(ora_path, OraImage(width, height, ora_layers, to_levels(composition.flat, 8)))
    for stale in layer_dir.glob("[0-9][0-9]-*.png"):  # an earlier export's layers: the folder matches the .ora
        if stale not in layer_paths:
            stale.unlink(missing_ok=True)
    return Exported(ora_path, flat_path, layer_paths)
