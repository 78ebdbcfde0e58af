"""Commands the studio shows the artist, written for this install.

A sentence that says "run `.venv/bin/pip install …`" is wrong when the environment lives elsewhere
(`BLK_VENV`, or the cache folder the launcher picked), and a bare `python` may be a Python without
our packages. These give the command with the interpreter that runs the studio now: its path inside
the studio's folder when it is there (`.venv/bin/python`, as the README writes it), else in full.
`python -m blk` is run from the studio's folder, as the README says.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1]  # the folder with app.py and blk/


def environment_python() -> str:
    """The running interpreter, as a shell word (not resolved: a venv's python is a link to the base one)."""
    interpreter = Path(sys.executable).absolute()
    try:
        return shlex.quote(interpreter.relative_to(STUDIO).as_posix())
    except ValueError:
        return shlex.quote(str(interpreter))


def blk_command(*args: str) -> str:
    """`python -m blk ARGS` with this install's Python."""
    return " ".join([environment_python(), "-m", "blk", *args])


def pip_install(*packages: str) -> str:
    """`pip install PACKAGES` into this install's environment."""
    return " ".join([environment_python(), "-m", "pip", "install", *packages])
