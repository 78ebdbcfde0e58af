"""How the studio says a span of time, the same in every tab: seconds under two minutes, then minutes
under two hours, then hours; and a moment, as a person reads it."""

from __future__ import annotations


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def moment(stamp: str) -> str:
    """A recorded ISO time ("2026-11-27T03:35:16+0000") as read: "2026-11-27 03:35:16" in this machine's
    time zone; a stamp that does not parse is given as it is."""
    from datetime import datetime

    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return str(stamp)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
