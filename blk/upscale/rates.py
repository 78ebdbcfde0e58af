"""How long a tile took last time, per path, model and tile size: the time estimate before a job starts.

Measured on this machine by earlier jobs (no guess from a table that would be
wrong for every other card), kept in `outputs/upscale/.rates.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from blk import atomic
from blk.workspace import Workspace


def _path(workspace: Workspace) -> Path:
    return workspace.outputs("upscale") / ".rates.json"


def rate_key(path: str, model: str, tile: int | None) -> str:
    return f"{path}|{Path(str(model)).name}|{tile or 'auto'}"


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


def say_duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


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
