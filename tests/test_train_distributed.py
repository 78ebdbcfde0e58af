"""Several GPUs: the same `python -m blk train` under `accelerate launch`, data parallel.

Here two trainer processes on the CPU (gloo; `CPU_PROCESSES` lets `start_run` launch them on a machine without
GPUs), through the real `start_run`, `stop_run` and `resume_run`: they must train exactly what one process
with twice the gradient accumulation trains, write the run folder once, stop together and resume together;
and a run resumes on fewer processes (or more) with the accumulation that keeps a step's micro-batches.
"""

import json
import shutil

import pytest
import torch

from blk.errors import UserError
from blk.train.config import TrainConfig, load_config, save_config
from blk.train.data import Curriculum, Item, StagePlan
from blk.train.distributed import CPU_PROCESSES, World
from blk.train.process import check_gpus, is_running, kill_run, resume_run, run_info, start_run, stop_run, train_command
from blk.train.runner import EventLog, micro_batch, run
from tests.conftest import make_noise_dataset, run_blk
from tests.test_train_process import wait_for


def dp_config(gpus: int, accumulation: int, steps: int = 200) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "dp", "model": {"name": "tiny-flux"},
        "data": {"dataset": "inks", "resolutions": [64], "validation_images": 1, "validation_every": 2,
                 "caption_dropout": 0.3, "shuffle_tokens": True},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"steps": steps, "seed": 5, "gpus": gpus, "gradient_accumulation": accumulation},
        "sampling": {"every": 3, "prompts": ["a cube"], "steps": 2, "size": 64},
        "checkpoints": {"every": 2, "keep": 50}})


@pytest.fixture
def workspace_with_data(tmp_path, shared_workspace):
    from blk.workspace import Workspace

    workspace = Workspace(tmp_path / "workspace")
    shutil.rmtree(workspace.models)
    shutil.copytree(shared_workspace.models, workspace.models)
    make_noise_dataset(workspace.datasets / "inks", count=5)
    return workspace


def items(count: int, prefix: str = "img") -> list[Item]:
    return [Item(f"{prefix}{i}.png", f"sha{prefix}{i}", f"caption {i}", 64, 64) for i in range(count)]


def test_micro_batches_of_two_processes_are_those_of_one_with_twice_the_accumulation():
    assert [list(World(rank, 2).micro_batches(1)) for rank in (0, 1)] == [[0], [1]]
    assert [list(World(rank, 2).micro_batches(3)) for rank in (0, 1)] == [[0, 1, 2], [3, 4, 5]]
    assert list(World().micro_batches(2)) == [0, 1]

    single = dp_config(1, 2)
    pool = items(7)
    plans = [StagePlan(0, "singles", ["."], [items(3, "s")], [1.0]),
             StagePlan(3, "pairs", [".", "p"], [items(3, "s"), items(4, "p")], [0.5, 0.5])]
    for curriculum_of in (lambda a: None, lambda a: Curriculum(plans, seed=5, accumulation=a, batch_size=1)):
        one = curriculum_of(2)  # what the runner builds for 1 process × accumulation 2 …
        two = curriculum_of(2)  # … and for 2 processes × accumulation 1 (plan_curriculum multiplies)
        for step in range(8):
            alone = [micro_batch(single, pool, one, step, m, 2) for m in World().micro_batches(2)]
            shared = [micro_batch(single, pool, two, step, m, 2) for rank in (0, 1) for m in World(rank, 2).micro_batches(1)]
            assert alone == shared
            assert alone[0].noise_seed != alone[1].noise_seed  # a rank that trained its neighbour's would show


def test_more_gpus_than_the_machine_has_is_one_sentence_before_anything_starts(workspace, monkeypatch):
    from blk.models.device import cuda_device_count

    monkeypatch.delenv(CPU_PROCESSES, raising=False)
    wanted = max(cuda_device_count() + 1, 2)
    with pytest.raises(UserError, match=f"asks for {wanted} GPUs but this machine has"):
        check_gpus(wanted)
    config = dp_config(wanted, 1)
    with pytest.raises(UserError, match="GPUs but this machine"):
        start_run(config, workspace)
    assert not list(workspace.runs.iterdir())  # no run folder left behind
    with pytest.raises(Exception, match="greater than or equal to 1"):
        dp_config(0, 1)
    single = train_command(workspace, ["R.yaml"], 1)
    assert single[1:] == ["-m", "blk", "--workspace", str(workspace.root), "train", "R.yaml"]
    several = train_command(workspace, ["R.yaml"], 4)
    launch = several.index("accelerate.commands.launch")
    assert several[launch + 1:launch + 4] == ["--multi_gpu", "--num_processes", "4"]
    assert several[-6:] == single[1:]  # the same command, under accelerate launch


def test_two_processes_train_what_one_does_with_twice_the_accumulation(workspace_with_data, tmp_path, monkeypatch):
    import psutil
    from safetensors.torch import load_file

    workspace = workspace_with_data
    monkeypatch.setenv(CPU_PROCESSES, "1")
    folder = start_run(dp_config(gpus=2, accumulation=1), workspace)
    assert json.loads((folder / "process.json").read_text())["processes"] == 2
    wait_for(lambda: run_info(folder).step >= 3, 180)
    stop_run(folder)  # SIGTERM to both trainers; rank 0's decision ends both at the same step
    wait_for(lambda: not is_running(folder), 120)
    info = run_info(folder)
    log = (folder / "trainer.log").read_text()
    assert info.status == "stopped", log[-3000:]
    assert "death signal" not in log  # the launcher was left alone: it did not pass SIGTERM on (nor kill them)
    stopped = info.step
    target = (stopped // 2 + 1) * 2  # the first checkpoint after the stop

    resume_run(workspace, folder)  # two processes again (from config.yaml), from state/
    def evaluated_at_target():  # the checkpoint at `target`, then its validation line (written just after it)
        return any(e["kind"] == "eval" and e["step"] == target for e in EventLog(folder / "events.jsonl").read())

    wait_for(lambda: evaluated_at_target() or not is_running(folder), 180)
    launcher = psutil.Process(json.loads((folder / "process.json").read_text())["pid"])
    trainers = launcher.children(recursive=True)
    assert len(trainers) == 2  # one process per "GPU", each in a session of its own
    kill_run(folder)
    gone, alive = psutil.wait_procs([launcher, *trainers], timeout=30)
    assert not alive  # kill ends the trainers too, not only the launcher's process group
    assert run_info(folder).status == "killed"

    # The reference: one process, accumulation 2, stopped and resumed at the same steps, single-threaded like
    # each launched process (torchrun sets OMP_NUM_THREADS=1), so that every micro-batch computes alike.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = tmp_path / "reference"
        run(dp_config(gpus=1, accumulation=2), workspace, reference, stop_after=stopped)
        run(dp_config(gpus=1, accumulation=2), workspace, reference, resume=True, stop_after=target)
    finally:
        torch.set_num_threads(threads)

    for step in (stopped, target):
        name = f"step-{step:06d}.safetensors"
        ours, theirs = load_file(str(folder / "checkpoints" / name)), load_file(str(reference / "checkpoints" / name))
        assert ours.keys() == theirs.keys()
        for key in ours:  # bit-identical here: a sum of two is exact (a + b = b + a); a tolerance for other BLAS
            assert torch.allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-7), key
    before, after = (load_file(str(folder / "checkpoints" / f"step-{s:06d}.safetensors")) for s in (stopped, target))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the resumed steps trained

    events, expected = EventLog(folder / "events.jsonl").read(), EventLog(reference / "events.jsonl").read()
    losses = [e for e in events if e["kind"] == "loss"]
    assert [e["step"] for e in losses] == list(range(1, len(losses) + 1))  # one writer: every step exactly once
    assert len(losses) >= target
    losses, want = losses[:target], [e for e in expected if e["kind"] == "loss"]
    assert [e["images"] for e in losses] == [e["images"] for e in want]  # both processes' images, in order
    assert [e["loss"] for e in losses] == pytest.approx([e["loss"] for e in want], rel=1e-6)
    statuses = [e for e in events if e["kind"] == "status"]
    assert [e["status"] for e in statuses] == ["started", "stopped", "resumed"]
    assert statuses[0]["processes"] == 2 and statuses[2]["processes"] == 2
    for kind in ("eval", "sample", "checkpoint"):  # rank 0 alone validates, samples and saves
        steps = [e["step"] for e in events if e["kind"] == kind]
        assert steps and len(steps) == len(set(steps)), kind
    evals = [e["step"] for e in expected if e["kind"] == "eval"]
    assert [e["step"] for e in events if e["kind"] == "eval"][:len(evals)] == evals
    assert not [e for e in events if e["kind"] == "error"]


def test_a_run_of_two_processes_resumes_on_one_and_trains_what_it_would_have(workspace_with_data, tmp_path):
    """2 processes × accumulation 1 for 2 steps, then `--resume --gpus 1` (× accumulation 2) to step 4: the weights
    of an uninterrupted 2-process run of 4 steps, and config.yaml says 1 × 2 for the next resume."""
    from safetensors.torch import load_file

    # Every process on the CPU and single-threaded (as torchrun makes each launched one), so that all compute alike.
    env = {CPU_PROCESSES: "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def train(*args: str) -> str:
        done = run_blk("--workspace", str(workspace_with_data.root), "train", *args, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def grouping(folder) -> tuple[int, int]:
        schedule = load_config(folder / "config.yaml").schedule
        return schedule.gpus, schedule.gradient_accumulation

    config = dp_config(gpus=2, accumulation=1, steps=2)
    config.sampling.every = config.data.validation_every = config.data.validation_images = 0  # spare the time
    preset = tmp_path / "dp.yaml"
    preset.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    reference, folder = tmp_path / "reference", tmp_path / "run"
    train(str(preset), "--run-dir", str(reference), "--steps", "4")
    train(str(preset), "--run-dir", str(folder))
    assert grouping(folder) == (2, 1)
    said = train("--resume", str(folder), "--gpus", "1", "--steps", "4")
    assert "Resuming on 1 GPU with gradient accumulation 2 (it trained on 2 with 1)" in said
    assert grouping(folder) == (1, 2)  # what a later resume starts from

    for step in (2, 4):
        name = f"step-{step:06d}.safetensors"
        ours, theirs = load_file(str(folder / "checkpoints" / name)), load_file(str(reference / "checkpoints" / name))
        assert ours.keys() == theirs.keys()
        for key in ours:  # as in the test above: bit-identical here, a tolerance for other BLAS
            assert torch.allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-7), (step, key)
    events, expected = EventLog(folder / "events.jsonl").read(), EventLog(reference / "events.jsonl").read()
    starts = [e for e in events if e["kind"] == "status" and e["status"] in ("started", "resumed")]
    assert [(e["status"], e["processes"], e["accumulation"]) for e in starts] == [("started", 2, 1), ("resumed", 1, 2)]
    losses, want = ([e for e in log if e["kind"] == "loss"] for log in (events, expected))
    assert [e["images"] for e in losses] == [e["images"] for e in want]  # the same micro-batches, in order
    assert [e["loss"] for e in losses] == pytest.approx([e["loss"] for e in want], rel=1e-6)


def test_a_resume_on_gpus_that_do_not_divide_a_steps_micro_batches_is_one_sentence(workspace, capsys):
    from blk.cli import main

    folder = workspace.runs / "dp"
    folder.mkdir(parents=True)
    save_config(dp_config(gpus=2, accumulation=1), folder / "config.yaml")
    saved = (folder / "config.yaml").read_bytes()
    assert main(["--workspace", str(workspace.root), "train", "--resume", str(folder), "--gpus", "3"]) == 2
    assert capsys.readouterr().err.strip() == ("error: This run trains 2 micro-batches a step (2 GPUs × gradient "
                                               "accumulation 1), so it can resume on 1 or 2 GPUs, not 3.")
    assert (folder / "config.yaml").read_bytes() == saved  # nothing changed, nothing started
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_the_app_resumes_on_as_many_gpus_as_the_machine_allows(workspace, monkeypatch):
    from blk.models import device
    from blk.train import process

    folder = workspace.runs / "dp"
    folder.mkdir(parents=True)
    save_config(dp_config(gpus=4, accumulation=1), folder / "config.yaml")  # 4 micro-batches a step: 1, 2 or 4 GPUs
    spawned = []
    monkeypatch.setattr(process, "_spawn", lambda workspace, folder, args, gpus: spawned.append((args, gpus)))
    monkeypatch.delenv(CPU_PROCESSES, raising=False)
    for found, gpus, note in ((8, 4, ""), (4, 4, ""),
                              (3, 2, "Resuming on 2 GPUs with gradient accumulation 2 (it trained on 4 with 1)"),
                              (1, 1, "Resuming on 1 GPU with gradient accumulation 4 (it trained on 4 with 1)"),
                              (0, 1, "Resuming on 1 GPU with gradient accumulation 4")):  # no GPU: on the CPU
        monkeypatch.setattr(device, "cuda_device_count", lambda found=found: found)
        said = resume_run(workspace, folder)
        assert spawned.pop() == (["--resume", str(folder), "--gpus", str(gpus)], gpus), found
        assert said.startswith(note) and bool(said) == bool(note), found


def test_the_train_form_shows_gpus_only_on_a_machine_with_several(workspace, monkeypatch):
    import gradio as gr

    from ui.context import StudioContext
    from ui.tabs import train

    make_noise_dataset(workspace.datasets / "inks")
    context = StudioContext(workspace, demo=True, demo_reason="test")
    for count, shown in ((0, False), (1, False), (4, True)):
        monkeypatch.setattr(train, "gpu_count", lambda count=count: count)
        with gr.Blocks() as blocks:
            train.build(context, lambda: ["inks"])
        field = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "blk-train-gpus")
        assert field.visible is shown and field.value == 1
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    form[14] = 3
    assert train.config_from_form(context, "conceptor-flux-dev", "inks", *form).schedule.gpus == 3
