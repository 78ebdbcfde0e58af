"""A large PNG, JPEG or WebP read top to bottom in one pass, so that it is not decoded whole to a file first.

Why: those formats have no random access. libvips reads them by region only after decoding the whole image
to a temporary file first (6 GB in $TMPDIR, which is often RAM, for a 2 GP PNG). Both upscale paths read
their input once, top to bottom (the tiler's rows of tiles, `diffusion._copy_into`'s bands), so a stream
is enough: libvips decodes the file in one sequential pass in a background thread (`rawsave_target`), and
`RowStream` keeps the rows from the latest request's top to the furthest row decoded.

A request above those rows (the studio's paths make none: an out-of-memory retry starts at or below the row
that failed) starts the stream again from the top of the file: slower, still right; `restarts` counts them.

What the decoders themselves hold stays: libwebp decodes a whole WebP in RAM, and libjpeg keeps a progressive
JPEG's coefficients for the whole image (a 6000² image: ~330 and ~210 MB peak, against ~90 MB for a PNG) —
as much as before, only no longer also a copy in $TMPDIR.

Measured (`bench/input_read.py`, 2-core CPU): a 16000×12000 RGB PNG read as the tiler reads it, 1.8 s and
135 MB peak RSS as a stream, against 3.5 s, 85 MB and a 549 MB temporary file by region.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from typing import Callable

import numpy as np

from blk.data.images import to_unit
from blk.errors import BadImage

QUEUE_BYTES = 8 * 2**20  # decoded bytes waiting between libvips' thread and the reader, at most (about)
_END = object()


class RowStream:
    """A `source.Source` over an image libvips can only decode in order. `open_image` opens the file again
    (sequential access) with the same conversions, for a restart."""

    def __init__(self, open_image: Callable[[], object], name: str, width: int, height: int, channels: int,
                 high: bool):
        self.open_image, self.name = open_image, name
        self.width, self.height, self.channels = width, height, channels
        self.dtype, self.peak = (np.uint16, 65535.0) if high else (np.uint8, 255.0)
        self.restarts = 0
        self._stream: _PixelStream | None = None
        self._finalizer: weakref.finalize | None = None
        self._top = 0  # the file row of self._rows[0]
        self._rows = np.empty((0, width, channels), self.dtype)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._stream is None or y < self._top:
            self._restart(y)
        if y > self._top:  # rows above this request are not asked for again
            drop = min(y - self._top, len(self._rows))
            self._rows, self._top = self._rows[drop:], self._top + drop
            self._skip_to(y)  # rows below those decoded, never asked for (a resumed job starts mid-image)
        self._decode_to(y + h)
        return to_unit(self._rows[:h, x:x + w], self.peak)

    def close(self) -> None:
        """Stop the decoding thread (also done when the stream is garbage-collected)."""
        if self._stream is not None:
            self._stream.stop()
            self._stream = None

    def _restart(self, y: int) -> None:
        if self._stream is not None:
            self._stream.stop()
            self.restarts += 1
        self._stream = _PixelStream(self.open_image(), self.width * self.channels * np.dtype(self.dtype).itemsize,
                                    self.name)
        if self._finalizer is not None:
            self._finalizer.detach()  # the old stream is stopped: its finalizer would only keep it alive
        self._finalizer = weakref.finalize(self, self._stream.stop)
        self._top, self._rows = 0, self._rows[:0]
        self._skip_to(y)

    def _skip_to(self, y: int) -> None:
        """Decode and drop the rows above `y`, a band at a time (only when none are kept)."""
        while self._top < y:
            skip = np.empty((min(y - self._top, max(1, QUEUE_BYTES // self._stream.row_bytes)), self.width,
                             self.channels), self.dtype)
            self._stream.take_into(memoryview(skip).cast("B"))
            self._top += len(skip)

    def _decode_to(self, bottom: int) -> None:
        kept = len(self._rows)
        if bottom > self._top + kept:
            band = np.empty((bottom - self._top, self.width, self.channels), self.dtype)
            band[:kept] = self._rows
            self._rows = band  # the old band goes before the new rows arrive
            try:
                self._stream.take_into(memoryview(band[kept:]).cast("B"))
            except BaseException:
                self._rows = band[:kept]  # only rows that arrived
                raise


class _PixelStream:
    """libvips writing an image's raw pixels in order from a background thread into a bounded queue; the
    reader takes them in whole rows. `stop` makes the writer give up (libvips then abandons the decode)."""

    def __init__(self, image, row_bytes: int, name: str):
        from blk.vips import pyvips

        self.row_bytes, self.name = row_bytes, name
        self._queue: queue.Queue = queue.Queue(maxsize=max(4, QUEUE_BYTES // max(row_bytes, 8192)))
        self._stopped = threading.Event()
        self._pending = memoryview(b"")  # the rest of the last chunk taken
        self._ended: BadImage | None = None
        target = pyvips.TargetCustom()
        target.on_write(self._on_write)
        self._thread = threading.Thread(target=self._run, args=(image, target), daemon=True,
                                        name=f"blk-row-stream {name}")
        self._thread.start()

    def take_into(self, out: memoryview) -> None:
        """Fill `out` (whole rows) with the next decoded bytes."""
        filled = 0
        while filled < len(out):
            if not self._pending:
                self._pending = self._next()
            n = min(len(out) - filled, len(self._pending))
            out[filled:filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n

    def _next(self) -> memoryview:
        if self._ended is None:
            item = self._queue.get()
            if item is _END:
                self._ended = BadImage(f"{self.name} ends before its last row: it is damaged or truncated.")
            elif isinstance(item, Exception):
                from blk.upscale.source import _first_line

                self._ended = BadImage(f"{self.name} is damaged and cannot be decoded ({_first_line(item)}).")
            else:
                return memoryview(item)
        raise self._ended  # kept: the thread is gone, a second wait would never end

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(queue.Empty):  # its decoded rows are not wanted: free them now
            while True:
                self._queue.get_nowait()

    def _run(self, image, target) -> None:
        try:
            image.rawsave_target(target)
        except Exception as exc:  # a damaged file, or `stop`
            self._put(exc)
        else:
            self._put(_END)

    def _on_write(self, data) -> int:
        chunk = bytes(data)
        return len(chunk) if self._put(chunk) else -1  # -1: libvips stops writing

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
