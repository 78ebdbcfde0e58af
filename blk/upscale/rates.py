"""How long a tile took last time, per path, model and tile size: the time estimate before a job starts.

Measured on this machine by earlier jobs (no guess from a table that would be
wrong for every other card), kept in `outputs/upscale/.rates.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

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
