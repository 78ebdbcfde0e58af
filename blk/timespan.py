"""How the studio says a span of time, the same in every tab: seconds under two minutes, then minutes
under two hours, then hours."""

from __future__ import annotations


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
