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


def make_noise_dataset(folder: Path, count: int = 4, trigger: str = "blkstyle") -> Path:
    """A small captioned dataset of random images (the tiny models learn it within a few steps)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"{trigger}, a drawing number {i}, ink")
    return folder


@pytest.fixture(scope="session")
def trained_run(shared_workspace, tmp_path_factory):
    """A finished 12-step tiny-flux run with checkpoints at steps 4, 8 and 12 (about 12 s on 2 cores)."""
    from blk.train.config import TrainConfig
    from blk.train.runner import run

    dataset = make_noise_dataset(tmp_path_factory.mktemp("trained") / "ds")
    config = TrainConfig.model_validate({
        "name": "tiny", "model": {"name": "tiny-flux"},
        "data": {"dataset": str(dataset), "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"steps": 12, "seed": 3}, "checkpoints": {"every": 4, "keep": 8},
        "sampling": {"prompts": ["a cube", "a cloud"], "seed": 1, "steps": 2, "size": 64},
    })
    run_dir = shared_workspace.runs / "tiny-run"
    result = run(config, shared_workspace, run_dir)
    assert result.status == "finished"
    return run_dir


def copy_trained_run(trained_run, destination):
    """A copy of the shared trained run as it was trained: without the review picks, grids and pins that
    other tests leave in it (a test counting ties or pins must not see another test's)."""
    import shutil

    shutil.copytree(trained_run, destination, ignore=shutil.ignore_patterns("review", "pinned.json"))
    return destination


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny networks (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): they gain
    nothing from threads, and on a busy 2-core machine OpenMP's spinning threads made such a module 10×
    slower. Restored afterwards for the other modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
