"""How long a tile took last time, per path, model and tile size: the time estimate before a job starts.

Measured on this machine by earlier jobs (no guess from a table that would be
wrong for every other card), kept in `outputs/upscale/.rates.json`. The ESRGAN
path keeps seconds per tile; the diffusion path seconds per tile-step (one tile
through one denoising step: `DiffusionPlan.work`), since its jobs differ in
steps, denoise and passes too, and its enlargements seconds per pixel the
upscaler (or Lanczos) makes (`diffusion.enlarge_work`, `enlarge_rate_key`). While a job runs, `Pace` words its progress
with the time left (the UI and the CLI show it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from blk import atomic
from blk.timespan import duration
from blk.workspace import Workspace


def _path(workspace: Workspace) -> Path:
    return workspace.outputs("upscale") / ".rates.json"


def rate_key(path: str, model: str, tile: int | None, compiled: bool = False) -> str:
    """Jobs that share a key share a pace; a compiled job's first tiles wait for the compiler, so it has its own.
    The diffusion path's key names its unit: an older file's rate per diffusion tile gives no estimate."""
    unit = "|per-step" if path == "diffusion" else ""
    return f"{path}|{Path(str(model)).name}|{tile or 'auto'}{unit}" + ("|compiled" if compiled else "")


def record(workspace: Workspace, key: str, seconds: float, tiles: int) -> None:
    if tiles <= 0 or seconds <= 0:
        return
    try:
        rates = json.loads(_path(workspace).read_text())
    except (OSError, ValueError):
        rates = {}
    rates[key] = seconds / tiles
    atomic.write_json(_path(workspace), rates)


def estimate_seconds(workspace: Workspace, key: str, tiles: int) -> float | None:
    try:
        per_tile = json.loads(_path(workspace).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return per_tile * tiles if isinstance(per_tile, (int, float)) else None


def time_sentence(workspace: Workspace, key: str, units: int, enlarging: tuple[str, int] | None = None) -> str:
    """The time a job will take, said before it starts: `units` are tiles (ESRGAN) or tile-steps (diffusion);
    `enlarging`: the diffusion path's enlargements (their key, their work: `diffusion.enlarge_work`), timed
    apart (an upscaler's or Lanczos's time says nothing about the denoiser's)."""
    if units <= 0 and not (enlarging and enlarging[1] > 0):  # a resume with nothing left but the writing
        return "Time: only the result is left to write."
    seconds = estimate_seconds(workspace, key, units)
    if seconds is None:
        return "Time: shown once the first tiles are done (no earlier job with these settings)."
    if "|per-step" in key:  # the diffusion path: its denoising, and its enlargements when a job has timed them
        enlarge = estimate_seconds(workspace, *enlarging) if enlarging else None
        if enlarge is not None:
            return (f"Time: {say_duration(seconds + enlarge)}: {say_duration(seconds)} of denoising and "
                    f"{say_duration(enlarge)} of enlarging (loading and writing come on top), from the last jobs "
                    "with these settings on this machine.")
        return (f"Time: {say_duration(seconds)} of denoising (enlarging, loading and writing come on top), from "
                "the last job with these settings on this machine.")
    return f"Time: {say_duration(seconds)}, from the last job with these settings on this machine."


def say_duration(seconds: float) -> str:
    """"about 40 s", "about 3 min"; "under a second" for what rounds to 0 (it read "about 0 s")."""
    return "under a second" if seconds < 0.5 else f"about {duration(seconds)}"


class Eta:
    """Seconds left in a running job, from the pace of the tiles done in this session.

    The pace is measured from the first progress report on. What came before it says nothing about
    this session's speed: a resumed job's first report already counts the tiles an interrupted
    earlier run finished (counting them against this session's seconds made the time left far too
    short), and a fresh job's first batch also carries the model's warm-up. So the first report
    gives no estimate; every later one does."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.first: tuple[int, float] | None = None  # (tiles done, time) at the first report
        self.last: tuple[int, float] | None = None  # (tiles done, time) at the latest report

    def left(self, done: int, total: int) -> float | None:
        now = self.clock()
        self.last = (done, now)
        if self.first is None:
            self.first = (done, now)
            return None
        done_before, then = self.first
        if done <= done_before:
            return None
        return (now - then) / (done - done_before) * max(total - done, 0)

    def measured(self) -> tuple[float, int]:
        """(seconds, tiles) from the first report to the last: this session's work, for `record` (0 tiles
        when fewer than two reports came)."""
        if self.first is None:
            return 0.0, 0
        (done_before, then), (done, now) = self.first, self.last
        return now - then, done - done_before


class Pace:
    """The progress line of a running upscale job, with the time left, for each progress report.

    The job's tiles (the ESRGAN path's, or the diffusion path's refinement tiles) keep one pace,
    `tiles`, which is also what `record` keeps. A diffusion step's enlargement is timed on its own:
    its tiles are not among the job's, and an ESRGAN tile's seconds say nothing about a diffusion
    tile's (nor the other way round), so its line gives the time left in that enlargement, and the
    job's clock stops while it runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._enlarging_since: float | None = None  # when the enlargement under way began
        self._enlarging_seconds = 0.0  # spent enlarging: kept off the job's clock
        self.tiles = Eta(lambda: self.clock() - self._enlarging_seconds)
        self._enlargement: tuple[int, Eta] | None = None  # (its step, its pace)

    def _enlargement_over(self, now: float) -> None:
        if self._enlarging_since is not None:
            self._enlarging_seconds += now - self._enlarging_since
            self._enlarging_since = None

    def line(self, done: int, total: int, stage=None) -> str:
        """"tile 5/20, about 40 s left"; with a diffusion `Stage`: "step 2 of 2: pass A, tile 12/22, about
        3 min left", or "step 1 of 2: enlarging, tile 3 of 9, about 4 s left in this enlargement"."""
        now = self.clock()
        if stage is not None and stage.enlarging:
            if self._enlargement is None or self._enlargement[0] != stage.step:
                self._enlargement = (stage.step, Eta(self.clock))
            if self._enlarging_since is None:
                self._enlarging_since = now
            left = self._enlargement[1].left(stage.done, stage.total)
            if stage.done >= stage.total:  # its last tile: the job's clock runs again
                self._enlargement_over(now)
            eta = f", {say_duration(left)} left in this enlargement" if left is not None else ""
            return f"{stage.label}, tile {stage.done} of {stage.total}{eta}"
        self._enlargement_over(now)  # one that ended without a last report (e.g. resumed past it)
        left = self.tiles.left(done, total)
        eta = f", {say_duration(left)} left" if left is not None else ""
        return f"{stage.label + ', ' if stage is not None else ''}tile {done}/{total}{eta}"
