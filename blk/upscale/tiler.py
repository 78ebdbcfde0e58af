"""Overlapping tiles, blended without seams, in bounded memory; shared by both Upscale paths.

Layout (per axis, in input pixels; `spans`): first the fewest tiles of at most
`tile` px that cover the axis with `overlap`, then one equal length for all of
them (the smallest that still overlaps by `overlap`, rounded up to the model's
`multiple_of`), spread evenly from edge to edge. A 640 px side at tile 512 is two
336 px tiles (1.05× the pixels), not 512 + 512 (1.6×). Every tile of a layout has
the same size (batches, and Flux's schedule, need that); rows and columns have
their own. If the tile is so close to twice the overlap that even steps would be
narrower than the fade band, full tiles go every `tile - overlap` and the last
one is moved back flush instead. The diffusion path asks for `full_size`: its
tiles stay `tile` px and only their positions spread, since its models draw
best at the size they were trained at.

Blending: where tile i ends at `e`, the overlap `[e - overlap, e)` is shared
with tile i+1 (which may start earlier: the even spread makes some overlaps a
little wider). Its outer quarters are context only: pixels near a cut edge are
wrong (the network saw zero padding there), so each tile's weight is 0 within
`overlap // 4` of its cut edge, and tile i+1's weight is 0 before the band.
Over the middle half, tile i fades out with cos² and tile i+1 fades in with
sin² — a raised cosine whose halves sum to exactly 1, so no normalisation pass
is needed and the canvas is written tile by tile. (A ramp over the whole
overlap was measured 20× worse against the untiled result: it gives real weight
to pixels a few px from a cut.) Image edges are never faded; 2-D weights are
the product of the two axes' weights.

Where the work happens: `process` may return a torch tensor on its device (the
ESRGAN path does); weighting and the conversion to 16-bit levels run there, so
only uint16 crosses to the host. Each tile's levels are rounded once (two tiles
meeting: ≤ 1 level of 1/65535 off the rounded sum). Only the strips an earlier
tile wrote (the band above `kept_until`, the columns left of the previous
tile's end) are read back and added; the rest of the tile is written as is,
because nothing has written there yet (see the invariants below).

Out of memory: the rows already finished stay; the canvas band the failed row
touched is restored, the tile is halved, and a new layout continues from that
row: it starts `overlap` before the end of the last finished row (its
`origin_fade`; at the top if none) and fades in against it, like any next row.

Resume after a crash (`blk.upscale.journal`): a layout is a pure function of
(length, tile, overlap, origin_fade, multiple_of), so "where we are" is that
layout's `origin_fade`, its `tile` and how many of its rows are done. A row
writes only into the output band `[y_top, y_end)`; of that, `[y_top,
kept_until)` already holds the previous row's share and `[kept_until, y_end)`
is still zero. `on_row_start` receives that band (`RowBand`, with the sink's
snapshot of the first part) before the row writes anything, so a journal can
persist it; `on_row_done` receives the layout and the rows done (`RowDone`) once
every write of the row is finished, before the next row writes anything (with
`pipelined`, a model on a GPU: while the next row's first batch computes).
`origin_fade=`, `rows_done=` and `tiles_done=` continue a pass from such a
point: the rows that follow are exactly those an uninterrupted run would have
done, so the result is the same.
"""

from __future__ import annotations

import contextlib
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
    """The user pressed cancel. `kept`: the job's finished tiles stay on disk for the same job to continue
    from (`journal.Journal.ending`)."""

    def __init__(self, kept: bool = False):
        self.kept = kept
        super().__init__("Upscaling was cancelled; no result was written." + (
            " Its finished tiles are kept (hidden .blk-tmp- files beside the result): start the same job again "
            "to continue from them; a job with other settings for the same result removes them, and one of this "
            "image towards another result says where they are." if kept else ""))


class Sink(Protocol):
    """Where blended tiles go (a `blk.upscale.canvas.Canvas`), in output pixels, as uint16 levels:
    `write_raw` where the sink still holds zeros, `accumulate` (a saturating add) where an
    earlier tile already wrote."""

    def write_raw(self, x: int, y: int, values: np.ndarray) -> None: ...
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

    origin_fade: int | None  # the row's layout, as `spans` and `run_tiles` take it
    tile: int
    row: int  # the row's index in that layout
    row_start: int  # input px
    row_fade: int | None  # the row fades in against this line (the previous row's end); None: the top row
    y_top: int
    kept_until: int
    y_end: int
    saved: object  # sink.snapshot(y_top, kept_until)


@dataclass(frozen=True)
class RowDone:
    """A finished row: `rows_done` rows of the layout (`origin_fade`, `tile`) are done, `tiles_done`
    tiles in this pass; the next row fades in against `row_end`, this row's end (input px). Output rows
    above `settled` are final: no later row of the pass writes them (it fades in below `row_end - overlap`,
    and an out-of-memory retry starts its layout against the same line)."""

    origin_fade: int | None
    tile: int
    rows_done: int
    tiles_done: int
    row_end: int
    settled: int


@dataclass
class TileStats:
    tile: int  # final tile size (input px), after any halving
    overlap: int
    tiles: int  # tiles in the final layout (a row redone after an OOM counts once)
    oom_retries: int
    seconds: float
    buffers: int = 0  # tiles' levels arrays allocated (`LevelsBuffers`): a few per pass, however many rows


def spans(length: int, tile: int, overlap: int, origin_fade: int | None = None,
          multiple_of: int = 1, full_size: bool = False) -> list[Span]:
    """One layout: equal tiles of at most `tile` px covering [origin, length), spread evenly.

    `full_size` keeps every tile at the largest size (only their positions spread, overlaps
    grow): the diffusion path's models draw best at the size they were trained at, which is
    worth more than the pixels computed twice.

    The origin is 0, or `overlap` before `origin_fade`, the end of an earlier layout's last
    finished tile, against which the first tile fades in (a layout continued after an
    out-of-memory halving). The same arguments always give the same layout: resume relies on it.
    """
    check_tile(tile, overlap)
    origin = 0 if origin_fade is None else origin_fade - overlap
    count, size, largest = _tiling(length - origin, tile, overlap, multiple_of)
    if full_size and count > 1:
        size = largest
    if count == 1:
        return [Span(origin, size, origin_fade, False)]
    spread = length - origin - size
    even = _chain([origin + i * spread // (count - 1) for i in range(count)], size, origin_fade)
    if _blendable(even, overlap):
        return even
    # tiles this close to twice the overlap: full steps, the last tile moved back flush
    return _chain([min(origin + i * (largest - overlap), length - largest) for i in range(count)],
                  largest, origin_fade)


def check_tile(tile: int, overlap: int) -> None:
    """Tiles need room for both fades of an overlap: at least twice its size."""
    if overlap < 0 or tile < 1:
        raise UserError("Tile size must be positive and overlap cannot be negative.")
    if 2 * overlap > tile:
        raise UserError(f"An overlap of {overlap} px needs tiles of at least {2 * overlap} px; "
                        f"{tile} px was asked for.")


def _tiling(span: int, tile: int, overlap: int, multiple_of: int) -> tuple[int, int, int]:
    """(tile count, even tile length, largest tile length) over `span` px.

    Lengths are multiples of `multiple_of` unless one tile covers the span (it is the span) or
    rounding `tile` down to one would leave less than twice the overlap."""
    if span <= tile:
        return 1, span, span
    step = multiple_of if tile // multiple_of * multiple_of >= max(2 * overlap, 1) else 1
    largest = tile // step * step
    count = -(-(span - overlap) // (largest - overlap))
    size = -(-(span + (count - 1) * overlap) // count)  # the shortest that overlaps by `overlap`
    return count, -(-size // step) * step, largest  # rounding up never passes `largest`, a multiple too


def _chain(starts: list[int], size: int, origin_fade: int | None) -> list[Span]:
    """Spans at `starts`, each fading in against the previous one's end and all but the last fading out."""
    out, fade = [], origin_fade
    for i, start in enumerate(starts):
        out.append(Span(start, size, fade, i < len(starts) - 1))
        fade = start + size
    return out


def _blendable(layout: list[Span], overlap: int) -> bool:
    """Whether every tile that fades both ways ends a fade band or more after the line it fades in
    against, so that its fade-in and fade-out bands do not meet (and no three tiles share a pixel)."""
    width = fade_band(overlap)[1]
    return all(s.end - s.fade_in_end >= width for s in layout if s.fade_out and s.fade_in_end is not None)


def count_tiles(width: int, height: int, tile: int, overlap: int, multiple_of: int = 1,
                full_size: bool = False) -> int:
    """Tiles in one pass over a `width`×`height` image, before any out-of-memory halving."""
    return (len(spans(width, tile, overlap, None, multiple_of, full_size))
            * len(spans(height, tile, overlap, None, multiple_of, full_size)))


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
    if span.fade_in_end is not None:  # 0 before the band: the previous tile alone holds it
        first = (span.fade_in_end - overlap - span.start) * scale + margin
        w[:first] = 0.0
        w[first:first + width] = ramp(width, kind)
    if span.fade_out:
        start = n - overlap * scale + margin
        w[start:start + width] *= 1.0 - ramp(width, kind)
        w[start + width:] = 0.0
    return w.astype(np.float32), first


def run_tiles(source, sink: Sink, process: Callable[[np.ndarray], np.ndarray], *, scale: int, tile: int,
              overlap: int, batch: int = 4, multiple_of: int = 1, full_size: bool = False,
              blend: str = "sine",
              progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None,
              origin_fade: int | None = None, rows_done: int = 0, tiles_done: int = 0,
              on_row_start: Callable[[RowBand], None] | None = None,
              on_row_done: Callable[[RowDone], None] | None = None,
              pipelined: bool = False) -> TileStats:
    """Upscale `source` into `sink` tile by tile.

    `process` takes float32 (N, h, w, C) and returns (N, h·scale, w·scale, C);
    it may raise an out-of-memory error (torch's, or any error saying
    "out of memory"): the tile is then halved and a new layout continues from the current row.
    `progress(done, total)` counts tiles (never back: see `report`); `cancel` is checked between batches.
    `origin_fade`, `rows_done` and `tiles_done` continue an interrupted pass from a `RowDone`
    (with its `tile`); `on_row_start(RowBand)` runs before a row writes anything,
    `on_row_done(RowDone)` after it wrote everything (see the module's docstring).
    `pipelined`: `process` only queues its work (a model on a GPU), so the row above is settled (its last
    writes finished, `on_row_done`, e.g. a journal's fsync) while the next row's first batch computes;
    otherwise before that batch, so that a kill during a long model call loses no finished row.
    """
    from blk.models.device import free_device_memory, is_out_of_memory

    check_tile(tile, overlap)
    width, height = source.width, source.height
    started, done, retries = time.monotonic(), tiles_done, 0
    # the count reported never goes back: after a halving the smaller tiles redo the failed row, whose tiles were
    # reported already; the count moves again once they pass what was shown
    shown = [tiles_done]

    def report(n: int, total: int) -> None:
        shown[0] = max(shown[0], n)
        if progress:
            progress(shown[0], total)

    written: list[_Written] = []  # rows that have written and are not settled yet, oldest first
    buffers = LevelsBuffers(keep=2 * max(1, batch) + 1)  # two rows' pending writes (pipelined) and the tile in hand
    settling = threading.Event()  # set while settling: its errors are the writer's or the hook's, never halved

    def settle() -> None:
        while written and written[0].done is not None:
            finished = written[0]
            settling.set()
            try:
                finished.writer.finish()  # interrupted (Ctrl+C), its writes still complete: the row stays listed
            except Exception:             # and the handler below records it; a failed write is never recorded
                written.pop(0)
                raise
            written.pop(0)
            if on_row_done:
                on_row_done(finished.done)
            settling.clear()

    try:
        while True:
            rows = spans(height, tile, overlap, origin_fade, multiple_of, full_size)
            cols = spans(width, tile, overlap, None, multiple_of, full_size)
            total = done + max(len(rows) - rows_done, 0) * len(cols)
            out_of_memory = False
            for index in range(rows_done, len(rows)):
                row = rows[index]
                try:  # only the row's own work: an error of settling the row above (a result writer's) is never halved
                    entry = _row(source, sink, process, row, cols, scale, overlap, batch, blend, cancel,
                                 lambda n: report(done + n, total),
                                 (lambda band, i=index, r=row, t=tile, f=origin_fade: on_row_start(
                                     RowBand(f, t, i, r.start, r.fade_in_end, *band))) if on_row_start else None,
                                 settle, written, pipelined, buffers)
                except Exception as exc:
                    if settling.is_set() or not is_out_of_memory(exc):
                        raise
                    out_of_memory = True
                    break
                done, rows_done = done + len(cols), index + 1
                settled = height * scale if rows_done == len(rows) else (row.end - overlap) * scale
                entry.done = RowDone(origin_fade, tile, rows_done, done, row.end, settled)
            settle()  # the last row; or, after an out-of-memory error, the rows above the failed one
            if not out_of_memory:
                return TileStats(tile, overlap, done, retries, time.monotonic() - started, buffers.allocated)
            free_device_memory()  # outside the handler: the traceback no longer pins the tensors
            smaller = (tile // 2) // multiple_of * multiple_of
            if smaller < max(MIN_TILE, 2 * overlap, multiple_of):
                raise UserError(f"Out of memory even with {tile} px tiles; close other programs using the "
                                "GPU, lower the overlap, or run on the CPU.")
            # a new layout from the failed row on: it fades in against the same line that row did
            tile, retries = smaller, retries + 1
            origin_fade, rows_done = rows[rows_done].fade_in_end, 0
    except BaseException:
        for cut in [entry for entry in written if entry.done is None]:  # stopped between its last tile and
            cut.writer.abandon()                                        # its record: left for a resume to redo
            written.remove(cut)
        if written:  # whatever stopped the next row (a cancel, Ctrl+C, a read error), the row above is whole:
            with contextlib.suppress(Exception):  # recorded, so that a resume does not redo it
                settle()
        raise


@dataclass
class _Written:
    """A row that has started writing: its writer (maybe still writing) and, once its tiles are all
    computed, its `RowDone`."""

    writer: "_Writer"
    done: RowDone | None = None


def _row(source, sink, process, row: Span, cols: list[Span], scale, overlap, batch, blend, cancel, report,
         announce, settle_previous: Callable[[], None], written: list[_Written], pipelined: bool,
         buffers: "LevelsBuffers") -> _Written:
    """One row of tiles; returns it as added to `written`, its writer maybe still writing.

    The sink writes run on a writer thread, in order, while the next batch is read and computed: on a
    GPU the canvas writes would otherwise leave the model idle for as long as it works. Before this row's
    first write the row above is settled (`settle_previous`); with `pipelined`, once this row's first batch
    has been handed to the model, which computes meanwhile. On any error after that, the canvas band this
    row touched is put back."""
    wy, first_y = weights(row, overlap, scale, blend)
    y_top = row.start * scale + first_y  # the row writes nothing above this
    kept_until = row.fade_in_end * scale if row.fade_in_end is not None else y_top
    entry, snapshot = None, None

    def start_writing() -> _Written:
        nonlocal snapshot
        settle_previous()
        snapshot = sink.snapshot(y_top, kept_until)  # rows that the previous row already holds
        if announce is not None:
            announce((y_top, kept_until, row.end * scale, snapshot))
        written.append(_Written(_Writer(max_pending=batch, buffers=buffers)))
        return written[-1]

    try:
        if not pipelined:
            entry = start_writing()
        tiles_done = 0
        for group in even_batches(cols, batch):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            tiles = np.stack([source.read(c.start, row.start, c.length, row.length) for c in group])
            out = process(tiles)  # pipelined: queued, still computing
            expected = (len(group), row.length * scale, group[0].length * scale, tiles.shape[3])
            if tuple(out.shape) != expected:
                raise RuntimeError(f"the model returned {tuple(out.shape)}, expected {expected}")
            if entry is None:
                entry = start_writing()
            whole = (len(wy), group[0].length * scale, tiles.shape[3])  # an untrimmed tile: every tile fits in one
            for col, result in zip(group, out):
                wx, first_x = weights(col, overlap, scale, blend)
                buffer = buffers.take((len(wy) - first_y, len(wx) - first_x, tiles.shape[3]), whole)
                levels = weighted_levels(result, wy[first_y:], wx[first_x:], out=buffer)
                x_left = col.start * scale + first_x
                written_until = col.fade_in_end * scale if col.fade_in_end is not None else x_left
                entry.writer.submit(_add_tile, sink, x_left, y_top, levels, kept_until - y_top,
                                    written_until - x_left, release=buffer)
            del out, result  # the device memory of this batch is free for the next
            tiles_done += len(group)
            report(tiles_done)
        return entry
    except BaseException:
        if entry is not None:  # every write of this row stops before its band is put back
            entry.writer.abandon()
            written.remove(entry)
            sink.restore(snapshot)
            sink.clear(kept_until, row.end * scale)
        raise


def even_batches(items: list, batch: int) -> list[list]:
    """`items` in the fewest batches of at most `batch`, their sizes differing by one at most (5 in batches of
    4: 3 + 2, not 4 + 1): a compiled network meets fewer tile shapes, and a GPU gets no near-empty call."""
    count = -(-len(items) // max(1, batch))
    bounds = [len(items) * k // max(1, count) for k in range(count + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


class LevelsBuffers:
    """uint16 arrays for tiles' levels, reused by every row of a pass: each holds a whole tile of the layout,
    so any tile's (trimmed) shape fits as a view, and a pass allocates a few of them once, however many rows
    it has. Allocating and freeing tens of MB per tile (a 1 GP job: ~20 MB a tile, thousands of tiles) made
    glibc raise its mmap threshold and keep the freed blocks: resident memory crept up by ~0.3 GB on a CPU
    run. Taken on the computing thread, given back by the writer thread."""

    def __init__(self, keep: int):
        self.keep, self.allocated = max(1, keep), 0
        self.free: list[np.ndarray] = []  # flat uint16 arrays
        self.lock = threading.Lock()

    def take(self, shape: tuple, whole: tuple) -> np.ndarray:
        """A C-contiguous uint16 array of `shape`, viewing a buffer that holds at least `whole`."""
        need = math.prod(shape)
        with self.lock:
            for i, flat in enumerate(self.free):
                if flat.size >= need:
                    return self.free.pop(i)[:need].reshape(shape)
            self.allocated += 1
        return np.empty(max(need, math.prod(whole)), dtype=np.uint16)[:need].reshape(shape)

    def give(self, array: np.ndarray) -> None:
        flat = array.base if array.base is not None else array
        with self.lock:
            if len(self.free) < self.keep:
                self.free.append(flat)


class _Writer:
    """One background thread running sink writes in submission order; at most `max_pending` queued
    (each holds a tile's levels in host memory, from `buffers`, given back once written). The first
    error is raised by `submit` or `finish`."""

    def __init__(self, max_pending: int, buffers: LevelsBuffers):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blk-tile-writer")
        self.pending, self.max_pending = [], max(1, max_pending)
        self.buffers = buffers

    def submit(self, fn, *args, release: np.ndarray | None = None) -> None:
        while len(self.pending) >= self.max_pending:
            self.pending.pop(0).result()

        def run():
            fn(*args)
            if release is not None:
                self.buffers.give(release)

        self.pending.append(self.pool.submit(run))

    def finish(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending.clear()
            self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)  # a write already running completes; none starts after
        self.pending.clear()


def weighted_levels(result, wy: np.ndarray, wx: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`result` (h, w, C floats in [0, 1]; numpy, or torch on any device) × wy ⊗ wx, as uint16 levels
    written into `out` (row-major uint16 of that shape) and returned.

    Computed in float32 where `result` lives (a GPU does it in a blink, and a half-precision
    product would be off by up to 32 levels); only the uint16 comes back."""
    import torch

    values = torch.as_tensor(result)[-len(wy):, -len(wx):].float()
    w = torch.from_numpy(wy).to(values.device)[:, None, None] * torch.from_numpy(wx).to(values.device)[None, :, None]
    levels = (values * w).mul_(65535.0).round_().clamp_(0, 65535).to(torch.uint16)
    torch.from_numpy(out).copy_(levels)
    return out


def _add_tile(sink: Sink, x: int, y: int, levels: np.ndarray, kept_rows: int, kept_cols: int) -> None:
    """Add `levels` at (x, y): the top `kept_rows` rows and the left `kept_cols` columns overlap
    what earlier tiles wrote and are added; the rest still holds zeros and is simply written."""
    kept_rows, kept_cols = max(0, min(kept_rows, len(levels))), max(0, min(kept_cols, levels.shape[1]))
    if kept_rows:
        sink.accumulate(x, y, levels[:kept_rows])
    if kept_rows < len(levels):
        below = levels[kept_rows:]
        if kept_cols:
            sink.accumulate(x, y + kept_rows, below[:, :kept_cols])
        if kept_cols < below.shape[1]:
            sink.write_raw(x + kept_cols, y + kept_rows, below[:, kept_cols:])


def free_memory(device: str) -> int:
    """Bytes free for work on `device`: the GPU's free memory (with what PyTorch keeps cached in this process
    for reuse, which the driver counts as used), or available RAM."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        free, _ = torch.cuda.mem_get_info(index)
        return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
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


def auto_tile(device: str, *, batch: int, dtype_bytes: int, multiple_of: int = 1, overlap: int = 0) -> int:
    """Tile from free memory: half of a GPU's free memory; a quarter of RAM (no OOM error on a CPU,
    the system kills the process instead), and at most 512 px there (progress stays lively)."""
    free = free_memory(device)
    if device.startswith("cuda"):
        return tile_for_overlap(free // 2, overlap, batch=batch, dtype_bytes=dtype_bytes, multiple_of=multiple_of)
    return tile_for_overlap(free // 4, overlap, batch=batch, dtype_bytes=dtype_bytes, multiple_of=multiple_of,
                            largest=512)


def tile_for_overlap(budget_bytes: int, overlap: int, *, largest: int = 1024, **sizes) -> int:
    """`choose_tile`'s tile, made four overlaps wide (rounded down to its step) where the budget allows (the
    fades then take about half of each tile), and never narrower than the two overlaps a tile needs: an overlap
    the budget cannot give such tiles is refused in a sentence. (Four overlaps were taken whatever the memory: a
    large overlap on a CPU asked for tiles the system killed the process for.)"""
    preferred = choose_tile(budget_bytes, largest=largest, **sizes)
    if preferred >= 4 * overlap:
        return preferred
    fits = choose_tile(budget_bytes, largest=4 * overlap, **sizes)  # the widest up to four overlaps
    if fits >= 2 * overlap:
        return fits
    raise UserError(f"An overlap of {overlap} px needs tiles of at least {2 * overlap} px, more than free memory "
                    f"allows for this model; lower the overlap (to {fits // 2} px or less), or close other programs.")
