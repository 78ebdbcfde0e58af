"""The result's TIFF written while the last pass still runs, from the rows no later tile can change.

Why: writing used to start after the last tile. On an H100 a 1 GP job spent 31.9 s on tiles and then
13.8 s writing its TIFF (bench/README.md); the writer's deflate threads sat idle while the GPU worked,
and the GPU sat idle while they worked. A row of tiles fades into the one above it only over their
overlap, so once a row is done every canvas row above the next row's fade is final
(`tiler.RowDone.settled`): the writer compresses those while the model computes the rows below.

When: on the Real-ESRGAN path, the result is a TIFF taken straight from the last pass's canvas (no Lanczos
resample to an exact size after it); its print copy, when asked for, streams beside it. Otherwise — PNG
results (and their print copies), the diffusion path — writing follows the tiles as before.

The file is the one `canvas.write_tiff` writes, to the same temporary name the resume journal knows, and
committed the same way (renamed into place only when whole). Its description — the job's parameters —
is known only at the end (an out-of-memory halving changes the tile, a compiler failure the compile
flag): the file starts with a placeholder and the real one replaces it (`tifffile.tiffcomment`) before
the rename. An error in the writer stops the job at its next row (a full disk as one sentence); the tiler
never takes it for the model's out-of-memory error. The file has the tags and pixels of one written after
the tiles; only its bytes are laid out differently (the description stored at the end).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blk.upscale.canvas import Canvas, committing, disk_full, is_disk_full

PLACEHOLDER = "{}"  # the description until `finish` writes the parameters
# tifffile compresses rounds of tiles; small rounds start from the first settled rows (`canvas._deflate`)
ROUND_TILES_PER_THREAD = 1


class _Stopped(Exception):
    """The job ended before the writer did: it stops reading."""


class StreamedTiff:
    """One file written from a canvas as its rows settle: `start(canvas)` when the last pass's canvas opens;
    `settled(rows)` after each row of tiles; `finish(description)` after the tiles (the committed file);
    `stop()` on every way out (a no-op after `finish`).

    `write_file(canvas, tmp, description=, tiles_per_thread=)` writes the whole file into `tmp`
    (`canvas.write_tiff_file` or `canvas.write_print_tiff_file`, their other options bound)."""

    def __init__(self, output: Path, temp: Path, write_file: Callable[..., None]):
        self.output, self.temp, self._write_file = output, temp, write_file
        self._rows = 0  # canvas rows that are final
        self._stopped = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.canvas: Canvas | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, canvas: Canvas) -> None:
        self.canvas = canvas
        self._thread = threading.Thread(target=self._write, name="blk-streamed-tiff", daemon=True)
        self._thread.start()

    def settled(self, rows: int) -> None:
        """Canvas rows [0, rows) are final; raises the writer's error, if it failed, in the caller's thread."""
        with self._condition:
            self._rows = max(self._rows, min(rows, self.canvas.height if self.canvas else rows))
            self._condition.notify_all()
        self._raise()

    def finish(self, description: str) -> None:
        """Wait for the writer (every row is final now), put the parameters in, and commit the file."""
        self.settled(self.canvas.height)
        self._thread.join()
        self._raise()
        import tifffile

        with committing(self.temp, self.output):
            tifffile.tiffcomment(self.temp, description)  # in place when it fits, else appended
        self._thread = None

    def stop(self) -> None:
        """The job ends without `finish` (an error, cancel, Ctrl+C): the writer stops and its file goes."""
        if self._thread is None:
            return
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        self._thread.join()
        self._thread = None
        self.temp.unlink(missing_ok=True)

    # -- the writer's thread -------------------------------------------------------------------------------

    def _write(self) -> None:
        try:
            self._write_file(_SettledRows(self), self.temp, description=PLACEHOLDER,
                             tiles_per_thread=ROUND_TILES_PER_THREAD)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001  (raised in the job's thread: `_raise`)
            self._error = exc

    def _wait_for(self, rows: int) -> None:
        with self._condition:
            while self._rows < rows and not self._stopped:
                self._condition.wait()
            if self._stopped:
                raise _Stopped()

    def _raise(self) -> None:
        error = self._error
        if error is None:
            return
        self.temp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full(self.output) from None
        raise error


@dataclass
class StreamedResult:
    """The files a job streams: its TIFF master and, when asked for, the print copy; each call goes to both."""

    master: StreamedTiff
    print_copy: StreamedTiff | None = None

    @property
    def writers(self) -> list[StreamedTiff]:
        return [self.master] + ([self.print_copy] if self.print_copy else [])

    @property
    def started(self) -> bool:
        return self.master.started

    def start(self, canvas: Canvas) -> None:
        for writer in self.writers:
            writer.start(canvas)

    def settled(self, rows: int) -> None:
        for writer in self.writers:
            writer.settled(rows)

    def stop(self) -> None:
        for writer in self.writers:
            writer.stop()


class _SettledRows:
    """The canvas as the writer sees it: a read waits until the rows it asks for are final."""

    def __init__(self, stream: StreamedTiff):
        self.stream, self.canvas = stream, stream.canvas
        self.width, self.height, self.channels = self.canvas.width, self.canvas.height, self.canvas.channels

    def read_raw(self, x: int, y: int, w: int, h: int):
        self.stream._wait_for(y + h)
        return self.canvas.read_raw(x, y, w, h)
