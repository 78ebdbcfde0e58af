"""Ink on paper → alpha: GIMP/GEGL colour-to-alpha, exact to one level, 8 and 16 bits.

The formula is GEGL's `color-to-alpha`, on sRGB-encoded values as GIMP applies it
(not linear light), so results match what artists get in GIMP. For paper colour
c and thresholds tt (transparency) and ot (opacity), per channel d = |x − c|:
a = 0 if d < tt, 1 if d > ot, else (d − tt) / (min(ot, c) − tt) when x < c and
(d − tt) / (min(ot, 1 − c) − tt) when x > c; α = the largest a. The colour is
then un-mixed from the paper: c' = c + (x − c)·tt/d (d of the channel that gave
α), out = c' + (x − c')/α; out_alpha = src_alpha·α.

At tt = 0 this is exact: α·out + (1 − α)·c = x. To keep that true after
quantisation, α is rounded to the output's levels first and the colour is
computed from the rounded α, so compositing the written file over the paper
gives the input back within half a level (one at most), at 8 and at 16 bits.
tt > 0 deliberately clears pixels near the paper (grain, faint stains), so
those no longer round-trip; that is what it is for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from blk.data.images import is_image_name
from blk.errors import UserError
from blk.stencil.pngio import read_rgba, write_png
from blk.workspace import free_path

EPSILON = 1e-5  # GEGL's: distances within it of a threshold count as on it
_ROWS = 256  # rows per band: bounds temporary memory on very large scans


@dataclass(frozen=True)
class AlphaSettings:
    """One schema for the CLI flags and the UI form."""

    paper: str = "auto"  # "auto" or "#RRGGBB"
    tt: float = 0.0  # transparency threshold: distances from the paper up to this become fully clear
    ot: float = 1.0  # opacity threshold: distances from the paper beyond this stay fully opaque

    def checked(self) -> "AlphaSettings":
        parse_paper(self.paper)
        if not (0.0 <= self.tt < self.ot <= 1.0):
            raise UserError(f"The thresholds need 0 ≤ tt < ot ≤ 1; got tt={self.tt} and ot={self.ot}.")
        return self


def parse_paper(text: str) -> np.ndarray | None:
    """None for "auto", else the colour as three floats in [0, 1]."""
    text = (text or "auto").strip()
    if text.lower() == "auto":
        return None
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", text)
    if not match:
        raise UserError(f"The paper colour must be auto or #RRGGBB (like #f4efe1); got {text!r}.")
    value = match.group(1)
    return np.array([int(value[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64) / 255.0


def paper_hex(paper: np.ndarray) -> str:
    return "#" + "".join(f"{int(round(v * 255)):02x}" for v in np.clip(paper, 0, 1))


def estimate_paper(pixels: np.ndarray, fraction: float = 0.10) -> np.ndarray:
    """The paper colour of a scan: per-channel median of its brightest tenth of pixels.

    Why this estimate: paper is most of a scan and ink only darkens it, so the
    brightest pixels are paper. Their median ignores the few dust specks and
    glare spots brighter still. And it sits a little above the paper's mean, on
    purpose: grain darker than the paper costs only a faint alpha ((c − x)/c),
    while grain lighter than an off-white paper is magnified by (x − c)/(1 − c)
    into visible specks. Grain that remains is cleared with tt. A page that is
    mostly ink needs its paper colour given.
    """
    rgb = pixels[..., :3].reshape(-1, 3)
    if pixels.shape[-1] == 4:  # paper seen through alpha: mostly opaque pixels when there are any
        alpha = pixels[..., 3].reshape(-1)
        rgb = rgb[alpha > 0.5] if (alpha > 0.5).any() else rgb[alpha > 0]
    if len(rgb) == 0:
        raise UserError("The image is fully transparent, so it has no paper colour to estimate.")
    step = max(1, len(rgb) // 2_000_000)  # a regular subsample is plenty for a median
    rgb = rgb[::step].astype(np.float64)
    brightness = rgb.mean(axis=1)
    cut = np.quantile(brightness, 1.0 - fraction)
    return np.median(rgb[brightness >= cut], axis=0)


WHITE = np.ones(3)
_INK = 0.05  # a pixel this far from the paper in some channel is something drawn on it
CUT_OUT_NOTE = "no paper shows around its transparency, so white was used as the paper, as in GIMP"


def auto_paper(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """The estimated paper and a note; white (GIMP's default) with a note for an element already cut out.

    An element on transparency (a disc, a converted stroke) has no paper left to
    see: its opaque pixels are the element, so their "paper" is the element
    itself and converting with it would erase it. We tell that case by the
    transparency around it plus no ink at all against the estimate. A fully
    opaque blank page still clears, as it should.
    """
    paper = estimate_paper(pixels)
    if pixels.shape[-1] != 4:
        return paper, ""
    alpha = pixels[..., 3]
    opaque = alpha > 0.5
    if opaque.all() or not opaque.any():
        return paper, ""
    step = max(1, int(opaque.sum()) // 2_000_000)
    distance = np.abs(pixels[..., :3][opaque][::step].astype(np.float64) - paper).max(axis=1)
    if np.mean(distance > _INK) < 0.001:
        return WHITE, CUT_OUT_NOTE
    return paper, ""


def _gegl(rgb: np.ndarray, paper: np.ndarray, tt: float, ot: float) -> tuple[np.ndarray, np.ndarray]:
    """GEGL's α (HxW) and the un-mixing anchor c' (HxWx3), in float64."""
    x = rgb.astype(np.float64)
    c = paper.reshape(1, 1, 3)
    d = np.abs(x - c)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = (d - tt) / (np.minimum(ot, c) - tt)
        above = (d - tt) / (np.minimum(ot, 1.0 - c) - tt)
    a = np.where(x < c, below, above)
    a = np.where(d < tt + EPSILON, 0.0, np.where(d > ot - EPSILON, 1.0, a))
    which = np.argmax(a, axis=2)[..., None]  # first channel with the largest a, as GEGL's strict ">"
    alpha = np.take_along_axis(a, which, axis=2)[..., 0]
    dist = np.take_along_axis(d, which, axis=2)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(alpha > EPSILON, tt / np.where(dist > 0, dist, 1.0), 0.0)
    return alpha, c + (x - c) * ratio[..., None]


def color_to_alpha(pixels: np.ndarray, paper, tt: float = 0.0, ot: float = 1.0) -> np.ndarray:
    """GEGL colour-to-alpha in float: HxWx3 or HxWx4 in [0, 1] → float32 HxWx4, straight alpha."""
    paper = np.asarray(paper, dtype=np.float64)
    alpha, anchor = _gegl(pixels[..., :3], paper, tt, ot)
    x = pixels[..., :3].astype(np.float64)
    safe = np.where(alpha > EPSILON, alpha, 1.0)[..., None]
    colour = np.where((alpha > EPSILON)[..., None], anchor + (x - anchor) / safe, x)
    source_alpha = pixels[..., 3] if pixels.shape[-1] == 4 else 1.0
    return np.dstack([np.clip(colour, 0, 1), source_alpha * alpha]).astype(np.float32)


def color_to_alpha_levels(pixels: np.ndarray, paper, tt: float = 0.0, ot: float = 1.0,
                          bits: int = 8) -> np.ndarray:
    """Colour-to-alpha straight to uint8/uint16 RGBA levels, exact over the paper (see module doc)."""
    paper = np.asarray(paper, dtype=np.float64)
    peak = 65535.0 if bits == 16 else 255.0
    out = np.empty(pixels.shape[:2] + (4,), dtype=np.uint16 if bits == 16 else np.uint8)
    for top in range(0, pixels.shape[0], _ROWS):
        band = pixels[top:top + _ROWS]
        alpha, anchor = _gegl(band[..., :3], paper, tt, ot)
        rounded = np.round(alpha * peak) / peak
        # colour from the alpha that will be stored; the float α where it rounds to 0 (colour unseen)
        used = np.where(rounded > 0, rounded, np.where(alpha > EPSILON, alpha, 1.0))[..., None]
        x = band[..., :3].astype(np.float64)
        colour = np.where((alpha > EPSILON)[..., None], anchor + (x - anchor) / used, x)
        source_alpha = band[..., 3].astype(np.float64) if band.shape[-1] == 4 else 1.0
        out[top:top + _ROWS, :, :3] = np.round(np.clip(colour, 0, 1) * peak)
        out[top:top + _ROWS, :, 3] = np.round(np.clip(source_alpha * alpha, 0, 1) * peak)
    return out


@dataclass
class AlphaResult:
    source: Path
    output: Path
    bits: int
    paper: str  # #rrggbb actually used
    note: str = ""  # why the paper is not the estimate, when it is not


@dataclass
class BatchResult:
    written: list[AlphaResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (source, one sentence)


def convert_file(source: str | Path, output: str | Path, settings: AlphaSettings = AlphaSettings()) -> AlphaResult:
    """One scan → one RGBA PNG at the scan's depth, written atomically."""
    settings.checked()
    pixels, bits = read_rgba(source)
    if not (pixels[..., 3] > 0).any():  # nothing to convert, and a blank PNG would only mislead
        raise UserError(f"{Path(source).name} is fully transparent, so there is nothing to convert; it was skipped.")
    paper, note = parse_paper(settings.paper), ""
    if paper is None:
        paper, note = auto_paper(pixels)
    levels = color_to_alpha_levels(pixels, paper, settings.tt, settings.ot, bits)
    write_png(output, levels)
    return AlphaResult(Path(source), Path(output), bits, paper_hex(paper), note)


def plan(source: str | Path, out_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, output PNG) pairs: a file, or a folder walked recursively keeping its sub-folders.

    Hidden folders (caches such as .blk), our own temporaries and anything
    already under `out_dir` are skipped, so converting into a sub-folder of the
    scans twice does not convert the outputs. The outputs are the names wanted
    (NAME.png); `convert_batch` moves each to NAME-2.png, -3 … when taken.
    """
    source, out_dir = Path(source), Path(out_dir)
    if source.is_file():
        return _refuse_overwrite([(source, out_dir / (source.stem + ".png"))], out_dir)
    if not source.is_dir():
        raise UserError(f"{source} is neither an image file nor a folder.")
    out_resolved = out_dir.resolve()
    if out_resolved == source.resolve():
        raise UserError(f"Choose an --out folder other than {source} itself, so the scans stay as they are.")
    skip_out = out_resolved.is_relative_to(source.resolve())
    images = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or not is_image_name(path) or any(part.startswith(".") for part in rel.parts):
            continue
        if skip_out and path.resolve().is_relative_to(out_resolved):
            continue
        images.append(rel)
    return _refuse_overwrite([(source / rel, out_dir / rel.with_suffix(".png")) for rel in images], out_dir)


def _refuse_overwrite(pairs: list[tuple[Path, Path]], out_dir: Path) -> list[tuple[Path, Path]]:
    inputs = {image.resolve() for image, _ in pairs}
    if any(output.resolve() in inputs for _, output in pairs):
        raise UserError(f"Writing into {out_dir} would replace the scans themselves; choose another --out folder.")
    return pairs


def convert_batch(source: str | Path, out_dir: str | Path, settings: AlphaSettings = AlphaSettings(),
                  progress: Callable[[int, int], None] | None = None) -> BatchResult:
    """Convert a file or a folder tree; a bad file becomes one sentence and the batch goes on."""
    from blk.workspace import check_writable_folder

    settings.checked()
    pairs = plan(source, out_dir)
    if not pairs:
        raise UserError(f"{source} holds no images (PNG, JPEG, WebP, TIFF, BMP).")
    check_writable_folder(out_dir)  # once, before the work: not the same failure repeated for every scan
    result = BatchResult()
    for done, (image, output) in enumerate(pairs, 1):
        try:
            # checked just before each write: a.png and a.jpg in one batch, uploads one after another, and a
            # second conversion the same day all keep every result
            result.written.append(convert_file(image, free_path(output), settings))
        except UserError as exc:
            result.failed.append((image, str(exc)))
        except (OSError, ValueError, MemoryError) as exc:
            result.failed.append((image, f"{image.name} could not be converted ({exc})."))
        if progress:
            progress(done, len(pairs))
    return result


def copy_captions(result: BatchResult) -> int:
    """Copy each converted scan's sidecar caption (NAME.txt) beside its RGBA PNG; returns how many.

    Converting a captioned dataset then gives a captioned RGBA dataset, ready to train on. The caption
    follows the PNG's own name, so a.png and a.jpg (a.png, a-2.png) each get theirs.
    """
    from blk import atomic

    copied = 0
    for item in result.written:
        caption = item.source.with_suffix(".txt")
        if caption.is_file():
            atomic.write_bytes(item.output.with_suffix(".txt"), caption.read_bytes())
            copied += 1
    return copied
