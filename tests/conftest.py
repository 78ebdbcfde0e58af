"""Shared fixtures. Importing blk first makes the test process offline too."""

import os
import subprocess
import sys
from pathlib import Path

import blk  # noqa: F401  (sets the offline environment before anything else)
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_workspace(tmp_path_factory):
    """A workspace whose tiny models are built once for the whole session."""
    from blk.models.registry import resolve
    from blk.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("shared-workspace"))
    resolve("tiny-flux", workspace)
    resolve("tiny-sdxl", workspace)
    return workspace


@pytest.fixture
def workspace(tmp_path):
    from blk.workspace import Workspace

    return Workspace(tmp_path / "workspace")


def run_blk(*args, cwd=ROOT, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `python -m blk …` as a user would, in a child process."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "blk", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
