"""Argument types for the command line: a number out of range is refused when the command is read, in one line
(`error: argument --steps: …`), before any model loads, instead of failing deep in a job or being silently
changed (a negative seed became a random one, `--steps -5` trained nothing and said "finished")."""

from __future__ import annotations

import argparse
import math


def whole(low: int, high: int | None = None):
    """A whole number from `low` to `high` (no upper bound when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is outside the range ({span})")
        return value
    return parse


def number(low: float | None = None, high: float | None = None, above: float | None = None):
    """A finite number, at least `low` (or more than `above`) and at most `high`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (low is not None and value < low) or (above is not None and value <= above) or \
                (high is not None and value > high):
            bounds = [f"at least {low:g}" if low is not None else "", f"above {above:g}" if above is not None else "",
                      f"at most {high:g}" if high is not None else ""]
            raise argparse.ArgumentTypeError(f"{value:g} is outside the range ({', '.join(b for b in bounds if b)})")
        return value
    return parse
