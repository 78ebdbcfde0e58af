"""Commands the studio shows the artist, written for this install.

A sentence that says "run `.venv/bin/pip install …`" is wrong when the environment lives elsewhere
(`BLK_VENV`, or the cache folder the launcher picked), and a bare `python` may be a Python without
our packages. These give the command with the interpreter that runs the studio now: its path inside
the studio's folder when it is there (`.venv/bin/python`, as the README writes it), else in full.
`python -m blk` is run from the studio's folder, as the README says; there `--workspace` defaults to
`./workspace`, so the flag is written only for another workspace (without it the command would
act on, and create, the default one).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1]  # the folder with app.py and blk/
DEFAULT_WORKSPACE = STUDIO / "workspace"  # `python -m blk`'s `--workspace` default, run from the studio's folder


def environment_python() -> str:
    """The running interpreter, as a shell word (not resolved: a venv's python is a link to the base one)."""
    interpreter = Path(sys.executable).absolute()
    try:
        return shlex.quote(interpreter.relative_to(STUDIO).as_posix())
    except ValueError:
        return shlex.quote(str(interpreter))


def blk_command(workspace, *args: str) -> str:
    """`python -m blk [--workspace DIR] ARGS` with this install's Python; `workspace` (a Workspace, a folder,
    or None for a command that does not use one) is named only when it is not the default."""
    words = [environment_python(), "-m", "blk"]
    if workspace is not None:
        root = Path(workspace if isinstance(workspace, (str, os.PathLike)) else workspace.root).expanduser().resolve()
        if root != DEFAULT_WORKSPACE.resolve():
            words += ["--workspace", shlex.quote(str(root))]
    return " ".join(words + [shlex.quote(arg) for arg in args])


def pip_install(*packages: str) -> str:
    """`pip install PACKAGES` into this install's environment."""
    return " ".join([environment_python(), "-m", "pip", "install", *map(shlex.quote, packages)])
