"""Overlapping tiles, blended without seams, in bounded memory; shared by both Upscale paths.

Layout (per axis, in input pixels): tiles of one size start every
`tile - overlap`; the last one is moved back to end flush with the image, so
every tile in a batch has the same size (the diffusion path needs that too).

Blending: where tile i ends at `e`, the overlap `[e - overlap, e)` is shared
with tile i+1. Its outer quarters are context only: pixels near a cut edge are
wrong (the network saw zero padding there), so each tile's weight is 0 within
`overlap // 4` of its cut edge. Over the middle half, tile i fades out with cos²
and tile i+1 fades in with sin² — a raised cosine whose halves sum to exactly
1, so no normalisation pass is needed and the canvas is written tile by tile.
(A ramp over the whole overlap was measured 20× worse against the untiled
result: it gives real weight to pixels a few px from a cut.) The moved last
tile contributes nothing before its fade band. Image edges are never faded;
2-D weights are the product of the two axes' weights.

Out of memory: the rows already finished stay; the canvas band the failed row
touched is restored, the tile is halved, and work resumes at that row.

Resume after a crash (`blk.upscale.journal`): a row writes only into the
output band `[y_top, y_end)`; of that, `[y_top, kept_until)` already holds the
previous row's share and `[kept_until, y_end)` is still zero. `on_row_start`
receives that band (`RowBand`, with the sink's snapshot of the first part)
before the row writes anything, so a journal can persist it; `on_row_done`
receives where the next row begins (`RowDone`). `start=` and `tiles_done=`
continue a layout from such a point: the rows that follow are exactly those an
uninterrupted run would have done, so the result is the same.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from blk.errors import UserError

# Activation memory per input pixel of one tile, float32, measured on RealESRGAN_x4plus
# (64 features, ×4) with headroom; other architectures are covered by halving on OOM.
BYTES_PER_INPUT_PIXEL = 24 * 1024
TILE_STEP = 32
MIN_TILE = 16


class Cancelled(UserError):
    """The user pressed cancel."""

    def __init__(self):
        super().__init__("Upscaling was cancelled; no output was written.")


class Sink(Protocol):
    """Where blended tiles go (a `blk.upscale.canvas.Canvas`), in output pixels."""

    def accumulate(self, x: int, y: int, values: np.ndarray) -> None: ...
    def snapshot(self, y0: int, y1: int): ...
    def restore(self, snapshot) -> None: ...
    def clear(self, y0: int, y1: int) -> None: ...


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in input pixels."""

    start: int
    length: int
    fade_in_end: int | None  # end of the previous tile: fade in over [fade_in_end - overlap, fade_in_end)
    fade_out: bool  # fade out over the last `overlap` pixels

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class RowBand:
    """What the row about to run may change in the sink, in output px: to undo it, put `saved` back
    (the sink's snapshot of `[y_top, kept_until)`) and zero `[kept_until, y_end)`."""

    row_start: int  # the row's position in the layout (input px), as `start=` takes it
    row_fade: int | None
    tile: int
    y_top: int
    kept_until: int
    y_end: int
    saved: object  # sink.snapshot(y_top, kept_until)


@dataclass(frozen=True)
class RowDone:
    """A finished row: the next one starts at (`row_start`, `row_fade`); `tiles_done` counts this pass."""

    row_start: int
    row_fade: int | None
    tile: int
    tiles_done: int


@dataclass
class TileStats:
    tile: int  # final tile size (input px), after any halving
    overlap: int
    tiles: int  # tiles in the final layout (a row redone after an OOM counts once)
    oom_retries: int
    seconds: float


def spans(length: int, tile: int, overlap: int, start: int = 0, fade_in_end: int | None = None) -> list[Span]:
    """Tiles covering [start, length); `fade_in_end` continues a layout whose previous tile ended there."""
    tile = min(tile, length)
    out, pos = [], start
    while True:
        if pos + tile >= length:
            out.append(Span(max(0, length - tile), tile, fade_in_end, False))
            return out
        out.append(Span(pos, tile, fade_in_end, True))
        fade_in_end = pos + tile
        pos = fade_in_end - overlap


def count_tiles(width: int, height: int, tile: int, overlap: int) -> int:
    return len(spans(width, tile, overlap)) * len(spans(height, tile, overlap))


def ramp(n: int, kind: str = "sine") -> np.ndarray:
    """Fade-in weights over n output pixels; `1 - ramp` is the matching fade-out."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    if kind == "hard":  # hard paste at the middle of the overlap, for comparison
        return (t >= 0.5).astype(np.float64)
    return np.sin(np.pi / 2 * t) ** 2


def fade_band(overlap: int) -> tuple[int, int]:
    """(context margin, fade width) inside an overlap, input px: a quarter, half, quarter."""
    margin = overlap // 4
    return margin, overlap - 2 * margin


def weights(span: Span, overlap: int, scale: int, kind: str = "sine") -> tuple[np.ndarray, int]:
    """Output-pixel weights of one span, and the first index with a non-zero weight."""
    n = span.length * scale
    margin, width = (v * scale for v in fade_band(overlap))
    w = np.ones(n, dtype=np.float64)
    first = 0
    if width and span.fade_in_end is not None:
        first = (span.fade_in_end - overlap - span.start) * scale + margin
        w[:first] = 0.0
        w[first:first + width] = ramp(width, kind)
    if width and span.fade_out:
        start = n - overlap * scale + margin
        w[start:start + width] *= 1.0 - ramp(width, kind)
        w[start + width:] = 0.0
    return w.astype(np.float32), first


def run_tiles(source, sink: Sink, process: Callable[[np.ndarray], np.ndarray], *, scale: int, tile: int,
              overlap: int, batch: int = 4, multiple_of: int = 1, blend: str = "sine",
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None,
              start: tuple[int, int | None] = (0, None), tiles_done: int = 0,
              on_row_start: Callable[[RowBand], None] | None = None,
              on_row_done: Callable[[RowDone], None] | None = None) -> TileStats:
    """Upscale `source` into `sink` tile by tile.

    `process` takes float32 (N, h, w, C) and returns (N, h·scale, w·scale, C);
    it may raise an out-of-memory error (torch's, or any error saying
    "out of memory"): the tile is then halved and the current row redone.
    `progress(done, total)` counts tiles; `cancel` is checked between batches.
    `start=(row_start, row_fade)` and `tiles_done` continue an interrupted pass from a
    `RowDone` (with that `tile`); `on_row_start(RowBand)` runs before a row writes anything,
    `on_row_done(RowDone)` after it wrote everything (see the module's docstring).
    """
    from blk.models.device import is_out_of_memory

    if overlap < 0 or tile < 1:
        raise UserError("Tile size must be positive and overlap cannot be negative.")
    if 2 * overlap > tile:
        raise UserError(f"An overlap of {overlap} px needs tiles of at least {2 * overlap} px; "
                        f"{tile} px was asked for.")
    width, height = source.width, source.height
    started, done, retries = time.monotonic(), tiles_done, 0
    row_start, row_fade = start  # where the rows still to do begin
    while True:
        rows, cols = spans(height, tile, overlap, row_start, row_fade), spans(width, tile, overlap)
        total = done + len(rows) * len(cols)
        try:
            for row in rows:
                _row(source, sink, process, row, cols, scale, overlap, batch, blend, cancel,
                     lambda n: progress(done + n, total) if progress else None,
                     (lambda band, rs=row_start, rf=row_fade: on_row_start(
                         RowBand(rs, rf, tile, *band))) if on_row_start else None)
                done += len(cols)
                row_start, row_fade = row.end - overlap, row.end
                if on_row_done:
                    on_row_done(RowDone(row_start, row_fade, tile, done))
            return TileStats(tile, overlap, done, retries, time.monotonic() - started)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        _free_accelerator_memory()  # outside the handler: the traceback no longer pins the tensors
        smaller = (tile // 2) // multiple_of * multiple_of
        if smaller < max(MIN_TILE, 2 * overlap, multiple_of):
            raise UserError(f"Out of memory even with {tile} px tiles; close other programs using the "
                            "GPU, lower the overlap, or run on the CPU.")
        tile, retries = smaller, retries + 1


def _row(source, sink, process, row: Span, cols: list[Span], scale, overlap, batch, blend, cancel, report,
         announce=None):
    """One row of tiles; on any error the canvas band this row touched is put back as it was."""
    wy, first_y = weights(row, overlap, scale, blend)
    y_top = row.start * scale + first_y  # the row writes nothing above this
    kept_until = row.fade_in_end * scale if row.fade_in_end is not None else y_top
    snapshot = sink.snapshot(y_top, kept_until)  # rows that the previous row already holds
    if announce is not None:
        announce((y_top, kept_until, row.end * scale, snapshot))
    try:
        for i in range(0, len(cols), batch):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            group = cols[i:i + batch]
            tiles = np.stack([source.read(c.start, row.start, c.length, row.length) for c in group])
            out = process(tiles)
            expected = (len(group), row.length * scale, group[0].length * scale, tiles.shape[3])
            if tuple(out.shape) != expected:
                raise RuntimeError(f"the model returned {tuple(out.shape)}, expected {expected}")
            for col, result in zip(group, out):
                wx, first_x = weights(col, overlap, scale, blend)
                w = wy[first_y:, None] * wx[None, first_x:]
                sink.accumulate(col.start * scale + first_x, y_top,
                                result[first_y:, first_x:] * w[..., None])
            report(i + len(group))
    except BaseException:
        sink.restore(snapshot)
        sink.clear(kept_until, row.end * scale)
        raise


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def free_memory(device: str) -> int:
    """Bytes free for work on `device`: the GPU's free memory, or available RAM."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(int(device.split(":")[1]) if ":" in device else 0)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_tile(budget_bytes: int, *, batch: int = 1, dtype_bytes: int = 4, multiple_of: int = 1,
                largest: int = 1024, bytes_per_pixel: int = BYTES_PER_INPUT_PIXEL) -> int:
    """The largest tile side (input px, a multiple of 32 and of `multiple_of`) whose batch fits the budget."""
    per_pixel = bytes_per_pixel * dtype_bytes / 4 * max(batch, 1)
    side = int(math.sqrt(max(budget_bytes, 0) / per_pixel))
    step = TILE_STEP * multiple_of // math.gcd(TILE_STEP, multiple_of)
    floor = -(-64 // step) * step  # 64 px rounded up to the step
    return max(min(largest, side) // step * step, floor)


def auto_tile(device: str, *, batch: int, dtype_bytes: int, multiple_of: int = 1) -> int:
    """Tile from free memory: half of a GPU's free memory; a quarter of RAM (no OOM error on a CPU,
    the system kills the process instead), and at most 512 px there (progress stays lively)."""
    free = free_memory(device)
    if device.startswith("cuda"):
        return choose_tile(free // 2, batch=batch, dtype_bytes=dtype_bytes, multiple_of=multiple_of)
    return choose_tile(free // 4, batch=batch, dtype_bytes=dtype_bytes, multiple_of=multiple_of, largest=512)
