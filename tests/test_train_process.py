"""Runs as child processes: stop gracefully, kill -9, resume; the folder tells the app everything."""

import json
import time

import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.train.config import Stage, StageSource, TrainConfig
from blk.train.process import (is_running, kill_run, list_runs, request_samples, resume_run, run_info, start_run,
                               stop_run)
from blk.train.runner import EventLog


@pytest.fixture
def workspace_with_data(tmp_path, shared_workspace):
    import shutil

    from blk.workspace import Workspace

    workspace = Workspace(tmp_path / "workspace")
    shutil.rmtree(workspace.models)
    shutil.copytree(shared_workspace.models, workspace.models)
    folder = workspace.datasets / "inks"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"ink{i}.png")
        (folder / f"ink{i}.txt").write_text(f"an ink study {i}")
    return workspace


def flux_lora(path, rank: int):
    """A LoRA file of one FLUX module, its header as one of rank `rank` says it (zero weights)."""
    from safetensors.numpy import save_file

    module = "transformer.transformer_blocks.0.attn.to_q"
    save_file({f"{module}.lora_A.weight": np.zeros((rank, 32), np.float32),
               f"{module}.lora_B.weight": np.zeros((32, rank), np.float32)}, str(path))
    return path


def tiny_config(steps: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "proc", "model": {"name": "tiny-flux"}, "data": {"dataset": "inks", "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"steps": steps}, "checkpoints": {"every": 2, "keep": 3}})


def wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    raise AssertionError("timed out")


def checkpoints(folder):
    return sorted((folder / "checkpoints").glob("step-*.safetensors"))


def test_kill_minus_nine_then_resume(workspace_with_data):
    from safetensors.torch import load_file

    workspace = workspace_with_data
    folder = start_run(tiny_config(400), workspace)
    wait_for(lambda: len(checkpoints(folder)) >= 2)
    assert request_samples(folder) == f"{folder.name} has no sample prompts; try its checkpoints in Sketch instead."
    kill_run(folder)
    wait_for(lambda: not is_running(folder), 30)
    info = run_info(folder)
    assert info.status == "killed" and info.step >= 4
    for path in checkpoints(folder):
        assert load_file(str(path))  # every checkpoint on disk is whole
    resume_run(workspace, folder, steps=info.step + 3)
    wait_for(lambda: run_info(folder).status == "finished")
    final = run_info(folder)
    assert final.step == info.step + 3
    statuses = [e["status"] for e in EventLog(folder / "events.jsonl").read() if e["kind"] == "status"]
    assert statuses[0] == "started" and statuses[-2:] == ["resumed", "finished"]
    assert not [p for p in folder.rglob("*") if p.name.startswith(".blk-tmp")]
    assert [r.name for r in list_runs(workspace)] == [folder.name]


def test_a_run_stopped_before_its_trainer_wrote_config_yaml_resumes(workspace_with_data):
    """Killed in its first seconds (Kill while "starting"), a run folder holds only the Train tab's request.yaml:
    the resume said config.yaml cannot be read, for good. It now starts again from step 0 in that folder."""
    from blk.train.config import save_config

    folder = workspace_with_data.runs / "early"
    folder.mkdir(parents=True)
    save_config(tiny_config(2), folder / "request.yaml")  # what start_run writes before the trainer starts
    resume_run(workspace_with_data, folder)
    wait_for(lambda: run_info(folder).status in ("finished", "error"), 120)
    assert run_info(folder).status == "finished" and run_info(folder).step == 2, (folder / "trainer.log").read_text()
    events = EventLog(folder / "events.jsonl").read()
    assert any("starts again from step 0" in e.get("message", "") for e in events if e["kind"] == "notice")
    assert (folder / "config.yaml").is_file()


def test_graceful_stop_saves_the_current_step(workspace_with_data):
    workspace = workspace_with_data
    config = tiny_config(400)
    config.sampling.prompts, config.sampling.steps, config.sampling.size = ["an ink"], 2, 64  # no scheduled samples
    folder = start_run(config, workspace)
    wait_for(lambda: run_info(folder).step >= 3)
    assert run_info(folder).status == "running"
    assert request_samples(folder).startswith(f"Samples of {folder.name} come at the end of its current step")
    wait_for(lambda: [e for e in EventLog(folder / "events.jsonl").read() if e["kind"] == "sample"], 120)
    stop_run(folder)
    wait_for(lambda: not is_running(folder), 120)
    info = run_info(folder)
    assert info.status == "stopped"
    sample, = [e for e in EventLog(folder / "events.jsonl").read() if e["kind"] == "sample"]
    assert sample["asked"] and (folder / sample["paths"][0]).is_file()
    assert request_samples(folder) == f"{folder.name} is not running. Its checkpoints can be tried in Sketch or Review."
    assert checkpoints(folder)[-1].name == f"step-{info.step:06d}.safetensors"


def test_a_run_that_cannot_start_says_why(workspace_with_data, tmp_path):
    """What the trainer would refuse is one sentence before a run folder exists — some of it it found only after
    loading the model, in a run that then stayed in the Run list as failed."""
    from safetensors.numpy import save_file

    workspace = workspace_with_data

    def refused(change, words: str) -> None:
        config = tiny_config(4)
        change(config)
        with pytest.raises(UserError, match=words) as raised:
            start_run(config, workspace)
        assert "\n" not in str(raised.value)
        assert not workspace.runs.exists() or not list(workspace.runs.iterdir())

    refused(lambda c: setattr(c.data, "dataset", "no-such-dataset"), "no-such-dataset is not a folder")
    refused(lambda c: setattr(c.model, "name", "no-such-model"), "Unknown model 'no-such-model'")
    refused(lambda c: setattr(c.data, "validation_images", 3), "leaves none to train on")  # inks has 3 images
    refused(lambda c: setattr(c.data, "stages", [Stage(sources=[StageSource(folder="singles")])]),
            "singles")  # the Stencil preset's first stage, in a dataset without that folder
    sdxl_lora = tmp_path / "kohya-sdxl.safetensors"  # kohya's names for an SDXL UNet module
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 8), np.float32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": np.zeros((8, 4), np.float32)},
              str(sdxl_lora))
    refused(lambda c: setattr(c.adapter, "init_from", str(sdxl_lora)), "is a SDXL LoRA and the base model is FLUX")
    refused(lambda c: setattr(c.adapter, "init_from", str(tmp_path / "moved.safetensors")),
            "There is no LoRA file at .*moved.safetensors")
    # found, before, only once the model had loaded and every caption was encoded: a failed run in the list
    (tmp_path / "damaged.safetensors").write_bytes(b"\xff" * 440)
    refused(lambda c: setattr(c.adapter, "init_from", str(tmp_path / "damaged.safetensors")),
            "damaged.safetensors is not a readable .safetensors LoRA")
    refused(lambda c: setattr(c.adapter, "init_from", str(flux_lora(tmp_path / "rank8.safetensors", rank=8))),
            "rank8.safetensors has rank 8 but this adapter has rank 4; set the rank to 8 to start from it.")
    refused(lambda c: c.model.base_loras.append(str(tmp_path / "damaged.safetensors")), "damaged.safetensors")

    folder = start_run(tiny_config(1), workspace, name="conceptor-flux-dev-ink studies")
    assert folder.name.startswith("conceptor-flux-dev-ink-studies-")  # a dataset's space leaves the folder name
    wait_for(lambda: run_info(folder).status == "finished", 120)

def test_a_run_typed_on_the_command_line_is_live_in_the_tab_and_one_trainer_at_a_time(workspace_with_data, tmp_path):
    """`studio.py train` (the README's) wrote no process.json: the Train tab showed the live run as "unknown", its
    Kill reached nothing and its Resume started a second trainer in the same folder. A trainer now records itself;
    Kill reaches it although it shares the shell's process group (killpg of its pid would have failed)."""
    import subprocess
    import sys

    from blk.train.config import save_config
    from blk.train.monitor import view_run
    from blk.train.process import PROJECT_ROOT, train_environment

    workspace = workspace_with_data
    save_config(tiny_config(400), tmp_path / "typed.yaml")
    folder = workspace.runs / "typed"
    blk = [sys.executable, "-m", "blk", "--workspace", str(workspace.root), "train"]
    with open(tmp_path / "typed.log", "wb") as log:
        typed = subprocess.Popen([*blk, str(tmp_path / "typed.yaml"), "--run-dir", str(folder)], cwd=PROJECT_ROOT,
                                 env=train_environment(), stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: run_info(folder).step >= 2)
    assert run_info(folder).status == "running" and is_running(folder)
    with pytest.raises(UserError, match="running already"):
        resume_run(workspace, folder)
    second = subprocess.run([*blk, "--resume", str(folder)], cwd=PROJECT_ROOT, env=train_environment(),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and "typed is training already" in second.stderr
    assert kill_run(folder) == "Killed typed; resume continues from its last checkpoint."
    assert typed.wait(timeout=60) == -9
    assert run_info(folder).status == "killed"

    # a resume whose config.yaml no longer reads (edited by hand) says so where the Train tab looks
    config = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(config.replace("  lr:", "  learning_rate:", 1))
    broken = subprocess.run([*blk, "--resume", str(folder)], cwd=PROJECT_ROOT, env=train_environment(),
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "learning_rate" in broken.stderr
    info = run_info(folder)
    assert info.status == "error" and "learning_rate" in view_run(folder, info.steps).message


def test_a_command_line_run_refused_before_it_starts_leaves_no_folder(workspace_with_data, tmp_path):
    """The trainer records itself once its folder exists: recording first made the folder of a run refused for a
    mistyped dataset, and the retry into the same --run-dir was refused as "already holds a run"."""
    from blk.train.config import save_config
    from tests.conftest import run_blk

    config = tiny_config(2)
    config.data.dataset = "no-such-dataset"
    save_config(config, tmp_path / "typo.yaml")
    folder = workspace_with_data.runs / "typo"
    for _ in range(2):  # the retry is refused for the same reason, not for the folder
        refused = run_blk("--workspace", str(workspace_with_data.root), "train", str(tmp_path / "typo.yaml"),
                          "--run-dir", str(folder))
        assert refused.returncode != 0 and "no-such-dataset" in refused.stderr and "already holds" not in refused.stderr
        assert not folder.exists()


def test_the_command_line_refuses_a_starting_lora_before_its_run_folder_and_caches(workspace_with_data, tmp_path):
    """`python -m blk train` (no Train tab check before it) found a LoRA of another rank or family only after
    loading the model and encoding every caption, and left a run folder holding the failure; the other family's
    sentence was cut to "…is not a LoRA for flux: Incompatible keys detected: "."""
    from safetensors.numpy import save_file

    from blk.train.config import save_config
    from tests.conftest import run_blk

    sdxl = tmp_path / "kohya-sdxl.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 8), np.float32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": np.zeros((8, 4), np.float32)},
              str(sdxl))
    for start, sentence in ((flux_lora(tmp_path / "rank8.safetensors", rank=8), "error: rank8.safetensors has "
                             "rank 8 but this adapter has rank 4; set the rank to 8 to start from it."),
                            (sdxl, "error: kohya-sdxl.safetensors is a SDXL LoRA and the base model is FLUX: it will "
                             "not load there (choose a SDXL base model, or remove it).")):
        config = tiny_config(2)
        config.adapter.init_from = str(start)
        save_config(config, tmp_path / "start.yaml")
        folder = workspace_with_data.runs / "started"
        refused = run_blk("--workspace", str(workspace_with_data.root), "train", str(tmp_path / "start.yaml"),
                          "--run-dir", str(folder))
        assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == sentence
        assert not folder.exists()
        assert not list((workspace_with_data.datasets / "inks").rglob("*.safetensors"))  # no caption encoded


def test_stop_in_the_first_instant_stops_the_run_and_does_not_kill_it(workspace_with_data):
    """The trainer took SIGTERM only after building its parser, its imports and its config: a Stop right after
    Start killed it, and the run read "killed" at step 0 with nothing said. It takes the signal before the
    parser's imports now (numpy's among the first of them), and ends as a Stop ends it."""
    import signal
    from pathlib import Path

    folder = start_run(tiny_config(400), workspace_with_data)
    pid = int(json.loads((folder / "process.json").read_text())["pid"])

    def handled() -> bool:  # the SIGTERM bit of the signals the process catches (/proc/PID/status, "SigCgt")
        fields = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return bool(int(fields["SigCgt"], 16) >> (signal.SIGTERM - 1) & 1)

    deadline = time.time() + 60
    while not handled():
        assert time.time() < deadline, "the trainer never took SIGTERM"
        time.sleep(0.005)
    assert "_multiarray_umath" not in Path(f"/proc/{pid}/maps").read_text()  # numpy's core: not loaded yet
    assert run_info(folder).status == "starting"
    stop_run(folder)
    wait_for(lambda: not is_running(folder), 180)
    info = run_info(folder)
    assert (info.status, info.step) == ("stopped", 1), (folder / "trainer.log").read_text()[-2000:]
    assert checkpoints(folder)[-1].name == "step-000001.safetensors"
