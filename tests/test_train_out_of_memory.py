"""A training step that really runs out of memory: the run ends with one `error` event naming what to change, and
the checkpoints written before it stay intact and resumable.

Nothing is faked: a child process trains two steps at 64 px (a checkpoint at step 2), then caps its own address
space (RLIMIT_AS) at what it uses plus a margin and resumes the run with a 4096 px bucket. Reloading the tiny
model fits in the margin; the step's first 4096² image arrays (a 256 MiB float32 array, then 512 MiB per VAE
activation) do not, so a real allocation fails inside step 3 (numpy's MemoryError or torch's "can't allocate
memory"). Deterministic: the step needs several times the margin, the reload a fraction of it.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from blk import atomic
from blk.train.config import TrainConfig
from blk.train.runner import EventLog, run
from tests.conftest import ROOT

MARGIN = 512 * 2**20  # bytes of address space the resumed run may add: a reload needs < 128 MiB, step 3 > 1 GiB

CHILD = """
import hashlib, json, resource, sys
from pathlib import Path

import blk  # noqa: F401  (offline environment first)
from blk.train.config import TrainConfig
from blk.train.runner import run
from blk.workspace import Workspace

workspace, run_dir, margin = Workspace(Path(sys.argv[1])), Path(sys.argv[2]), int(sys.argv[3])
config = TrainConfig.model_validate_json(sys.argv[4])
first = run(config, workspace, run_dir, stop_after=2)
saved = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in sorted(run_dir.rglob("*")) if p.is_file() and p.parts[-2] in ("checkpoints", "state")}
with open("/proc/self/status") as status:
    used = int(next(line for line in status if line.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + margin, resource.RLIM_INFINITY))
config.data.resolutions = [4096]
second = run(config, workspace, run_dir, resume=True)
print(json.dumps({"first": [first.status, first.step], "second": [second.status, second.step], "saved": saved}))
"""


SAMPLING_CHILD = """
import json, resource, sys
from pathlib import Path

import blk  # noqa: F401  (offline environment first)
from blk.train.config import TrainConfig
from blk.train.runner import run
from blk.workspace import Workspace

workspace, run_dir, margin = Workspace(Path(sys.argv[1])), Path(sys.argv[2]), int(sys.argv[3])
config = TrainConfig.model_validate_json(sys.argv[4])
first = run(config, workspace, run_dir, stop_after=2)
with open("/proc/self/status") as status:
    used = int(next(line for line in status if line.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + margin, resource.RLIM_INFINITY))
config.sampling.size = 2048  # its VAE decode: 2048² px of activations, several times the margin
second = run(config, workspace, run_dir, resume=True)
from blk.train.probe import probe  # the probe, told by the skipped round's notice: it will not fit
estimate = probe(config, workspace, steps=2)
print(json.dumps({"first": [first.status, first.step], "second": [second.status, second.step],
                  "probe": [estimate.fits, estimate.sentence(4)]}))
"""


def big_image_dataset(folder: Path) -> Path:
    """One 4096 px image (a gradient: a 60 KB file) with its caption: 64 px buckets train it cheaply, 4096 px not."""
    folder.mkdir(parents=True)
    pixels = np.zeros((4096, 4096, 3), np.uint8)
    pixels[..., 0] = np.arange(4096)[None, :] // 16
    pixels[..., 2] = np.arange(4096)[:, None] // 16
    Image.fromarray(pixels).save(folder / "wall.png")
    (folder / "wall.txt").write_text("blkstyle, a painted wall")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the address space from Linux's /proc")
def test_a_step_that_runs_out_of_memory_ends_with_one_error_and_keeps_the_checkpoints(shared_workspace, tmp_path):
    dataset = big_image_dataset(tmp_path / "wall")
    config = TrainConfig.model_validate({
        "name": "oom", "model": {"name": "tiny-flux"}, "data": {"dataset": str(dataset), "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"steps": 4, "seed": 1}, "checkpoints": {"every": 2},
    })
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")  # the CPU allocator, on any machine
    child = subprocess.run([sys.executable, "-c", CHILD, str(shared_workspace.root), str(run_dir), str(MARGIN),
                            config.model_dump_json()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["first"] == ["stopped", 2] and outcome["second"] == ["error", 2]

    events = EventLog(run_dir / "events.jsonl").read()
    errors = [e for e in events if e["kind"] == "error"]
    assert len(errors) == 1, errors
    (error,) = errors
    assert error["reason"] == "out_of_memory" and error["step"] == 2
    assert error["message"] == ("Out of memory at step 3: try an int8 base (model.int8_base), gradient checkpointing "
                                "and smaller bucket sizes; the last checkpoint (step 2) is kept and the run can resume "
                                "from it.")
    assert [e["status"] for e in events if e["kind"] == "status"] == ["started", "stopped", "resumed", "error"]
    assert not [e for e in events if e["kind"] == "loss" and e["step"] > 2]  # step 3 never completed

    saved = outcome["saved"]  # the checkpoint and resume state of step 2, byte for byte as before the failure
    assert "checkpoints/step-000002.safetensors" in saved and "state/adapter.safetensors" in saved
    assert {name: sha256(run_dir / name) for name in saved} == saved
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002.safetensors"]
    assert not (run_dir / "state.old").exists() and not list(run_dir.rglob(atomic.TEMP_PREFIX + "*"))
    assert all(np.isfinite(t.numpy()).all() for t in load_file(str(run_dir / "checkpoints" / "step-000002.safetensors")).values())

    resumed = run(config, shared_workspace, run_dir, resume=True)  # back at 64 px, the run resumes from step 2
    assert (resumed.status, resumed.step) == ("finished", 4)
    assert [e["step"] for e in EventLog(run_dir / "events.jsonl").read() if e["kind"] == "loss"][-2:] == [3, 4]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the address space from Linux's /proc")
def test_samples_that_run_out_of_memory_are_skipped_with_a_notice_and_training_goes_on(shared_workspace, tmp_path):
    """A sample round that ran out of memory ended the run with the training step's advice (int8, smaller
    buckets), and a resume failed again at the next round: the round is skipped, its size named, the run goes on."""
    from tests.conftest import make_noise_dataset

    dataset = make_noise_dataset(tmp_path / "inks", count=2)
    config = TrainConfig.model_validate({
        "name": "oom-samples", "model": {"name": "tiny-flux"}, "data": {"dataset": str(dataset), "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"steps": 4, "seed": 1}, "checkpoints": {"every": 2},
        "sampling": {"every": 2, "prompts": ["blkstyle, a wall"], "steps": 1, "size": 64},
    })
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    child = subprocess.run([sys.executable, "-c", SAMPLING_CHILD, str(shared_workspace.root), str(run_dir),
                            str(MARGIN), config.model_dump_json()], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["first"] == ["stopped", 2] and outcome["second"] == ["finished", 4]
    assert outcome["probe"] == [False, "This will not fit: the probe's samples ran out of memory on cpu at 2048 px; "
                                       "lower the sample size (sampling.size)."]
    events = EventLog(run_dir / "events.jsonl").read()
    assert [e["step"] for e in events if e["kind"] == "sample"] == [0, 2]  # step 4's round: skipped
    notices = [e for e in events if e["kind"] == "notice"]
    assert [n["step"] for n in notices] == [4] and notices[0]["message"].startswith(
        "The samples of step 4 ran out of memory and were skipped; training goes on. A smaller sample size "
        "(sampling.size, now 2048 px) lets them fit.") and notices[0]["reason"] == "out_of_memory"
    assert not [e for e in events if e["kind"] == "error"]
    assert [e["step"] for e in events if e["kind"] == "loss"][-2:] == [3, 4]
    assert (run_dir / "checkpoints" / "step-000004.safetensors").exists()
