"""What the Train tab shows of a run: its state and loss series across errors and resumes (from events.jsonl as
the runner writes it), and the tab's handlers for a sample clicked, a page loaded and the log-scale toggle."""

import json
import os
import subprocess
import sys
import time

import gradio as gr
import pytest
from PIL import Image

from blk import atomic
from blk.train.config import TrainConfig, save_config
from blk.train.monitor import view_run
from blk.train.process import run_info
from tests.conftest import make_noise_dataset
from ui.context import StudioContext
from ui.tabs import train

OOM = "Out of memory at step 4: try an int8 base, gradient checkpointing or a lower rank."


class Events:
    """Writes events.jsonl lines exactly as `runner.EventLog` does (t, step, kind, fields), with a chosen clock."""

    def __init__(self, folder, t=1000.0):
        self.path, self.t = folder / "events.jsonl", t

    def __call__(self, kind, step, dt=1.0, **fields):
        self.t += dt
        atomic.append_line(self.path, json.dumps({"t": self.t, "step": step, "kind": kind, **fields}))

    def losses(self, steps, base):
        for step in steps:
            self("loss", step, loss=base + step / 100, lr=1e-4)


def run_folder(root, name="r", steps=5):
    folder = root / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "samples").mkdir()
    config = TrainConfig()
    config.schedule.steps = steps
    save_config(config, folder / "config.yaml")
    return folder


def checkpoint(log, folder, step):
    path = f"checkpoints/step-{step:06d}.safetensors"
    (folder / path).write_bytes(b"x")
    log("checkpoint", step, path=path)


def saved_state(folder, step):
    """state/ as a checkpoint of `step` leaves it (what a resume restores: `runner.saved_step` reads its step)."""
    from blk.train.runner import STATE_FILES

    (folder / "state").mkdir(exist_ok=True)
    for name in STATE_FILES:
        (folder / "state" / name).write_bytes(b"x")
    (folder / "state" / "trainer.json").write_text(json.dumps({"step": step}))


def sample(log, folder, step, **asked):
    paths = [f"samples/step-{step:06d}-0.png"]
    Image.new("RGB", (8, 8)).save(folder / paths[0])
    log("sample", step, paths=paths, prompts=["a cube"], **asked)


def ended_pid() -> int:
    """The pid of a process that has ended (and been reaped): a run whose trainer is gone."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def killed_after_oom_and_resumed(folder, finish: bool):
    """started → steps 1-3 (checkpoint at 2) → out of memory during step 4 → resumed at 2 → steps 3-5."""
    log = Events(folder)
    log("status", 0, status="started", model="tiny-flux", images=3)
    log.losses([1, 2], base=1.0)
    checkpoint(log, folder, 2)
    sample(log, folder, 2)
    log.losses([3], base=1.0)
    sample(log, folder, 3)
    log("error", 3, message=OOM)
    log("status", 3, status="error", latent_encodes=3, text_encodes=3)
    log("status", 2, dt=60, status="resumed", model="tiny-flux", images=3)
    log.losses([3, 4] + ([5] if finish else []), base=0.5)
    sample(log, folder, 3)
    if finish:
        checkpoint(log, folder, 5)
        log("status", 5, status="finished", latent_encodes=0, text_encodes=0)
    return log


def test_a_run_that_erred_then_resumed_and_finished_is_finished(tmp_path):
    folder = run_folder(tmp_path)
    killed_after_oom_and_resumed(folder, finish=True)
    info = run_info(folder)
    assert (info.status, info.step, info.steps) == ("finished", 5, 5)
    view = view_run(folder, 5)
    assert view.steps == [1, 2, 3, 4, 5]  # step 3 once: the resumed attempt's, not the killed one's too
    assert view.loss == pytest.approx([1.01, 1.02, 0.53, 0.54, 0.55])
    assert view.lr == [1e-4] * 5 and len(view.smoothed) == 5
    assert "Out of memory" not in view.message and view.message == "finished at step 5"
    assert view.chosen_steps() == [2, 3, 5]
    assert view.at_step(3).samples == [(str(folder / "samples/step-000003-0.png"), "step 3: a cube")]
    assert [label for _, label in view.samples] == ["step 3: a cube", "step 2: a cube"]  # the stale step 3 is gone


def test_a_resumed_run_killed_again_is_killed_not_erred(tmp_path):
    """Its only error belongs to the attempt before the resume; the plot keeps only steps the run kept."""
    folder = run_folder(tmp_path)
    killed_after_oom_and_resumed(folder, finish=False)
    atomic.write_json(folder / "process.json", {"pid": ended_pid(), "started": 0, "processes": 1})
    info = run_info(folder)
    assert (info.status, info.step) == ("killed", 4)
    view = view_run(folder, 5)
    assert view.steps == [1, 2, 3, 4] and view.message == ""


def test_an_error_right_at_the_resumed_checkpoint_is_history(tmp_path):
    """Out of memory in the step after a checkpoint logs the error at the checkpoint's step, which the resume keeps."""
    folder = run_folder(tmp_path, steps=4)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    checkpoint(log, folder, 2)
    log("error", 2, message=OOM)
    log("status", 2, status="error")
    log("status", 2, status="resumed")
    log.losses([3, 4], base=0.5)
    log("status", 4, status="finished")
    assert run_info(folder).status == "finished"
    assert view_run(folder, 4).message == "finished at step 4"


def test_an_error_after_the_resume_counts(tmp_path):
    folder = run_folder(tmp_path)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    checkpoint(log, folder, 2)
    log("status", 2, status="stopped")
    log("status", 2, status="resumed")
    log.losses([3], base=1.0)
    log("error", 3, message=OOM)
    log("status", 3, status="error")
    assert run_info(folder).status == "error"
    assert view_run(folder, 5).message == OOM


def test_every_resume_drops_what_its_attempt_before_logged_after_the_checkpoint(tmp_path):
    """Two kills: the series is one line of steps, and steps/s is measured over the latest attempt only (the
    hour between attempts is no training speed)."""
    folder = run_folder(tmp_path, steps=10)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses(range(1, 6), base=1.0)
    checkpoint(log, folder, 4)
    log("status", 4, dt=3600, status="resumed")
    log.losses(range(5, 8), base=2.0)
    checkpoint(log, folder, 6)
    log("eval", 6, loss=0.7)
    log("eval", 7, loss=0.6)
    log("status", 6, dt=3600, status="resumed")
    log.losses(range(7, 9), base=3.0)
    view = view_run(folder, 10)
    assert view.steps == list(range(1, 9))
    assert view.loss == pytest.approx([1.01, 1.02, 1.03, 1.04, 2.05, 2.06, 3.07, 3.08])
    assert (view.eval_steps, view.eval_loss) == ([6], [0.7])
    assert view.steps_per_second == pytest.approx(1.0)  # one step a second in the latest attempt
    assert view.eta_seconds == pytest.approx(2.0)
    assert run_info(folder).step == 8


def test_a_run_started_again_from_nothing_shows_its_step_0_once(tmp_path):
    """Killed before its first checkpoint, a run starts again at step 0: its step-0 sample and eval are logged
    again, and the earlier attempt's must not show beside them."""
    folder = run_folder(tmp_path, steps=4)
    log = Events(folder)
    log("status", 0, status="started")
    sample(log, folder, 0)
    log("eval", 0, loss=0.9)
    log.losses([1], base=1.0)
    log("status", 0, status="started")
    sample(log, folder, 0)
    log("eval", 0, loss=0.8)
    view = view_run(folder, 4)
    assert (view.steps, view.eval_steps, view.eval_loss) == ([], [0], [0.8])
    assert len(view.samples) == 1 and len(view.samples_by_step[0]) == 1


def test_a_live_trainer_is_starting_running_or_ended_by_what_it_said(tmp_path):
    """The process is alive (this test's own pid) in every case: the events since it was spawned decide. A trainer
    that wrote its last status is done while its interpreter exits, so the tab says "finished" at once."""
    folder = run_folder(tmp_path, steps=2)
    spawned = lambda at: atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": at})  # noqa: E731
    log = Events(folder, t=1000.0)
    spawned(1000.0)
    assert run_info(folder).status == "starting"
    log("status", 0, status="started")
    log.losses([1], base=1.0)
    assert run_info(folder).status == "running"
    log.losses([2], base=1.0)
    log("status", 2, status="finished")
    assert run_info(folder).status == "finished"
    spawned(log.t + 10)  # resumed for more steps: the new trainer is loading
    assert run_info(folder).status == "starting"
    log("status", 2, dt=20, status="resumed")
    assert run_info(folder).status == "running"


# the Train tab's handlers -----------------------------------------------------------------------------------

def test_a_resuming_run_says_it_is_loading_not_the_last_attempts_speed(workspace):
    context = StudioContext(workspace, demo=True, demo_reason="test")
    folder = run_folder(workspace.runs, steps=4)
    spawned = lambda at: atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": at})  # noqa: E731
    log = Events(folder, t=1000.0)
    spawned(1000.0)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    assert "steps/s" in train.watch(context, "r", False)[2]  # running
    log("status", 2, status="stopped")
    assert "steps/s" not in train.watch(context, "r", False)[2]  # an ended run has no speed
    spawned(log.t + 10)  # resumed: the new trainer is loading the model
    status = train.watch(context, "r", False)[2]
    assert status.startswith("**starting** — step 2 of 4, loading the model, ") and "steps/s" not in status

@pytest.fixture
def context(workspace):
    return StudioContext(workspace, demo=True, demo_reason="test")


def frame(plot):
    """A plot update's data as the browser receives it, back as a frame (None when it has none)."""
    import pandas as pd

    return None if plot.value is None else pd.DataFrame(plot.value["data"], columns=plot.value["columns"])


def test_clicking_a_sample_chooses_its_step(context):
    folder = run_folder(context.workspace.runs)
    log = Events(folder)
    log("status", 0, status="started")
    for step in (0, 5, 10):
        sample(log, folder, step)
    sample(log, folder, 13, asked=True)  # "Sample now"
    checkpoint(log, folder, 10)
    gallery = train.watch(context, "r", False)[3]
    assert [label for _, label in gallery] == ["step 13 (Sample now): a cube", "step 10: a cube", "step 5: a cube",
                                               "step 0: a cube"]
    gallery = gallery[1:]
    clicked = {"image": {"path": gallery[1][0]}, "caption": gallery[1][1]}  # what the gallery's select sends

    update, known = train.pick_sample(context, "r", [], clicked)  # the timer has not listed the steps yet
    assert update.value == 5 and [step for _, step in known] == [0, 5, 10, 13]
    update, again = train.pick_sample(context, "r", known, {"image": {}, "caption": "step 10: a cube"})
    assert update.value == 10 and again == known
    samples, text = train.show_step(context, "r", update.value)  # what the chooser's change then shows
    assert samples[0][0].endswith("step-000010-0.png") and "step-000010.safetensors" in text
    assert train.pick_sample(context, "r", known, {"image": {}, "caption": "a stray caption"}) == (gr.update(), known)
    assert train.pick_sample(context, "r", known, None) == (gr.update(), known)
    assert train.pick_sample(context, "r", known, {"caption": "step 7: a cube"}) == (gr.update(), known)  # no such step
    update, _ = train.pick_sample(context, "r", known, {"caption": "step 13 (Sample now): a cube"})
    assert update.value == 13


def test_a_loaded_page_shows_the_newest_running_run_else_the_newest(context):
    assert train.preselected_run(context) is None
    runs = context.workspace.runs
    for age, name in enumerate(["newest-ended", "running", "old-ended"]):
        folder = run_folder(runs, name)
        Events(folder)("status", 0, status="started")
        pid = os.getpid() if name == "running" else ended_pid()  # this test's own process: alive
        atomic.write_json(folder / "process.json", {"pid": pid, "started": 0, "processes": 1})
        os.utime(folder, (1_000_000 - age * 100,) * 2)
    assert run_info(runs / "running").status == "running"
    assert train.preselected_run(context) == "running"
    update = train.on_load(context)
    assert update.value == "running"
    assert [value for _, value in update.choices] == ["newest-ended", "running", "old-ended"]

    atomic.write_json(runs / "running" / "process.json", {"pid": ended_pid(), "started": 0, "processes": 1})
    os.utime(runs / "running", (1_000_000 - 100,) * 2)  # (the write above made it the newest folder)
    assert train.preselected_run(context) == "newest-ended"


def test_log_scale_plots_log10_of_the_loss_and_titles_the_axis(context):
    folder = run_folder(context.workspace.runs)
    log = Events(folder)
    log("status", 0, status="started")
    for step, loss in enumerate([1.0, 0.1, 0.01], start=1):
        log("loss", step, loss=loss, lr=1e-4)
    log("eval", 3, loss=0.001)
    linear = frame(train.watch(context, "r", False)[0])
    raw = linear[linear["series"] == "loss"]
    assert list(raw["step"]) == [1, 2, 3] and list(raw["loss"]) == pytest.approx([1.0, 0.1, 0.01])
    logged = frame(train.watch(context, "r", True)[0])
    assert list(logged[logged["series"] == "loss"]["loss"]) == pytest.approx([0.0, -1.0, -2.0])
    assert list(logged[logged["series"] == "validation"]["loss"]) == pytest.approx([-3.0])
    assert list(logged["step"]) == list(linear["step"])  # the x axis is untouched

    plot, lr, status, *_ = train.toggle_log_scale(context, "r", True)
    assert plot.y_title == "log₁₀ loss" and list(plot.value["data"][0][:2]) == [1, pytest.approx(0.0)]
    assert list(frame(lr)["lr"]) == [1e-4] * 3 and "step 3" in status
    assert train.toggle_log_scale(context, "r", False)[0].y_title == "loss"
    assert train.toggle_log_scale(context, "", True)[0].value is None  # no run: no frame


def test_the_tab_wires_gallery_clicks_and_page_loads(context):
    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    config = demo.get_config_file()
    name = {c["id"]: c["props"].get("elem_id") or c["props"].get("label") for c in config["components"]}
    wired = {(name.get(target), event): [name.get(o) for o in d["outputs"]]
             for d in config["dependencies"] for target, event in d["targets"]}
    assert "blk-step" in wired[("blk-samples", "select")]
    assert wired[(None, "load")] == ["Run"]
    assert wired[("Log scale", "change")][0] == "blk-loss-plot"


def test_starting_says_which_images_are_too_small_to_train(context):
    import numpy as np

    folder = context.workspace.datasets / "inks"
    folder.mkdir(parents=True)
    for i, size in enumerate([(64, 64)] + [(32, 80)] * 7):
        Image.fromarray(np.full((size[1], size[0], 3), 20 * i, dtype=np.uint8)).save(folder / f"ink{i}.png")
        (folder / f"ink{i}.txt").write_text("blkstyle, ink")
    note = train.left_out_note(context, "inks")
    lines = note.split("  \n")[1:]
    assert lines[0] == ("inks/ink1.png is 32×80 px, smaller than the 64 px a training bucket needs on each side, "
                        "so training leaves it out.")
    assert len(lines) == 6 and lines[-1] == "…and 2 more like them."
    (folder / "ink2.png").unlink()
    for i in range(3, 8):
        (folder / f"ink{i}.png").unlink()
    assert train.left_out_note(context, "inks").count("training leaves it out") == 1
    (folder / "ink3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # damaged: it was said in the log only
    (folder / "ink3.txt").write_text("blkstyle, ink")
    lines = train.left_out_note(context, "inks").split("  \n")[1:]
    assert len(lines) == 2 and lines[0].startswith("inks/ink3.png is left out of training: ink3.png "), lines
    assert lines[1].startswith("inks/ink1.png is 32×80 px")


def test_notices_show_in_the_status_for_the_current_attempt_only(context):
    """A run's `notice` events (e.g. AdamW 8-bit running as plain AdamW on a CPU) are said beside its status;
    a resume starts a new attempt, whose own notices replace the old ones."""
    folder = run_folder(context.workspace.runs)
    log = Events(folder)
    log("status", 0, status="started")
    log("notice", 0, message="AdamW 8-bit needs a CUDA GPU, so this run on cpu uses plain AdamW.")
    log("loss", 1, loss=0.5, lr=1e-4)
    status = train.watch(context, "r", False)[2]
    assert "uses plain AdamW." in status
    assert view_run(folder, 5).notices == ["AdamW 8-bit needs a CUDA GPU, so this run on cpu uses plain AdamW."]
    checkpoint(log, folder, 1)
    log("status", 1, status="resumed")
    log("notice", 1, message="Resumed on fewer GPUs.")
    assert view_run(folder, 5).notices == ["Resumed on fewer GPUs."]
    assert "plain AdamW" not in train.watch(context, "r", False)[2]


# the Train tab's Advanced fields ----------------------------------------------------------------------------

def lokr_file(path):
    """A LyCORIS LoKr file of one FLUX module, as small as a header can say so."""
    import numpy as np
    from safetensors.numpy import save_file

    stem = "lora_transformer_single_transformer_blocks_0_attn_to_q"
    save_file({f"{stem}.lokr_w1": np.zeros((2, 2), np.float32), f"{stem}.lokr_w2": np.zeros((2, 2), np.float32)},
              str(path))
    return path


def advanced_index(key: str) -> int:
    """Where an Advanced field's value sits in the form (after the basic fields, in ADVANCED order)."""
    return train.BASIC_FIELDS + [k for _, k, _ in train.ADVANCED].index(key)


def test_loading_a_preset_fills_the_advanced_fields(workspace):
    context = StudioContext(workspace, demo=False, demo_reason="")
    form = train.form_from_preset(context, "conceptor-flux-dev")
    assert len(form) == train.BASIC_FIELDS + len(train.ADVANCED)
    assert (form[6], form[9], form[10]) == (6000, 250, 250)  # the paper's length outside demo mode
    advanced = {key: form[advanced_index(key)] for _, key, _ in train.ADVANCED}
    assert advanced == {"kind": "lora", "factor": -1, "dropout": 0.0, "init_from": "", "batch_size": 1,
                        "gradient_accumulation": 1, "ema_decay": 0.99, "flip": True, "shuffle_tokens": True,
                        "keep_tokens": 1, "caption_dropout": 0.05, "int8_base": True, "gradient_checkpointing": True,
                        "cache_latents": True, "dtype": "fp16", "shuffle_orders": 0}
    assert form[advanced_index("int8_base")] is True
    plain = train.form_from_preset(context, None)  # no preset: the schema's defaults
    assert plain[advanced_index("dtype")] == "fp32" and plain[advanced_index("ema_decay")] == 0.0


def test_the_advanced_accordion_is_closed_and_wired_to_presets_and_starts(context):
    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    config = demo.get_config_file()
    components = {c["id"]: c for c in config["components"]}
    name = {i: c["props"].get("elem_id") or c["props"].get("label") for i, c in components.items()}
    accordion = next(c for c in components.values() if c["props"].get("elem_id") == "blk-train-advanced")
    assert accordion["props"]["open"] is False and accordion["props"]["label"] == "Advanced"
    labels = [label for _, _, label in train.ADVANCED]
    by_label = {c["props"].get("label"): c for c in components.values()}
    assert [value for _, value in by_label["Checkpoint dtype"]["props"]["choices"]] == ["fp32", "fp16", "bf16"]
    assert by_label["Adapter"]["props"]["value"] == "lora" and by_label["EMA decay (0: off)"]["props"]["value"] == 0.99
    assert by_label["Shuffle tokens"]["type"] == "checkbox" and by_label["Batch size"]["type"] == "number"
    dependencies = {(name.get(t), event): d for d in config["dependencies"] for t, event in d["targets"]}
    preset_outputs = [name[o] for o in dependencies[("Preset (the paper's settings)", "select")]["outputs"]]
    assert preset_outputs[-len(labels):] == labels
    # only choosing an option loads a preset: `input` also fired when the list was opened and left, and the
    # artist's Steps went back to the preset's
    assert ("Preset (the paper's settings)", "input") not in dependencies
    start_button = next(d for d in config["dependencies"] if d.get("api_name") == "train_start")
    assert [name[i] for i in start_button["inputs"]][-len(labels):] == labels


def test_a_dataset_the_trainer_would_refuse_is_one_sentence_before_a_run_exists(context, monkeypatch):
    """Images without captions (or none to train on) failed the run at step 0, a run folder left in the list."""
    import blk.train.process

    spawned = []
    monkeypatch.setattr(blk.train.process, "_spawn", lambda *args: spawned.append(args))
    folder = make_noise_dataset(context.workspace.datasets / "half", count=4)
    (folder / "img2.txt").unlink()
    (folder / "img3.txt").write_text("  \n")
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    _, note = train.start(context, "conceptor-flux-dev", "half", *form)
    assert note == "**2 image(s) have no caption (img2.png, img3.png); caption them or move them out first.**"
    (context.workspace.datasets / "empty").mkdir()
    assert train.start(context, "conceptor-flux-dev", "empty", *form)[1] == \
        "**empty has no usable images to train on.**"
    assert not spawned and not list(context.workspace.runs.glob("*"))  # no run, no folder


def test_advanced_fields_change_the_config_and_the_saved_request(context, monkeypatch):
    import blk.train.process
    from blk.train.config import load_config

    make_noise_dataset(context.workspace.datasets / "inks")
    (context.workspace.root / "loras").mkdir()
    lokr_file(context.workspace.root / "loras" / "kohya.safetensors")  # Start reads its header
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    for key, value in {"kind": "lokr", "factor": 8, "dropout": 0.1, "init_from": " loras/kohya.safetensors ",
                       "batch_size": 2, "gradient_accumulation": 4.0, "ema_decay": 0.0, "flip": False,
                       "shuffle_tokens": False, "keep_tokens": 2, "caption_dropout": 0.1, "int8_base": True,
                       "gradient_checkpointing": False, "cache_latents": False, "dtype": "bf16"}.items():
        form[advanced_index(key)] = value
    config = train.config_from_form(context, "conceptor-flux-dev", "inks", *form)
    assert (config.adapter.kind, config.adapter.factor, config.adapter.dropout) == ("lokr", 8, 0.1)
    assert config.adapter.init_from == str((context.workspace.root / "loras" / "kohya.safetensors").resolve())
    schedule = config.schedule
    assert (schedule.batch_size, schedule.gradient_accumulation, config.optimizer.ema_decay) == (2, 4, 0.0)
    assert (config.data.flip, config.data.shuffle_tokens, config.data.keep_tokens) == (False, False, 2)
    assert (config.data.caption_dropout, config.data.cache_latents) == (0.1, False)
    assert (config.model.int8_base, config.model.gradient_checkpointing) == (True, False)
    assert config.checkpoints.dtype == "bf16"
    assert config.adapter.rank == 32 and config.optimizer.name == "prodigy"  # the basic fields are untouched

    spawned = []
    monkeypatch.setattr(blk.train.process, "_spawn", lambda *args: spawned.append(args))
    update, note = train.start(context, "conceptor-flux-dev", "inks", *form)
    assert note.startswith("Started conceptor-flux-dev-inks") and len(spawned) == 1
    saved = load_config(context.workspace.runs / update.value / "request.yaml")  # what the trainer resolves
    assert (saved.adapter.kind, saved.schedule.gradient_accumulation, saved.data.flip) == ("lokr", 4, False)
    assert saved.checkpoints.dtype == "bf16" and saved.adapter.init_from == config.adapter.init_from

    basic = form[:train.BASIC_FIELDS]  # API callers that leave the Advanced fields out keep the preset's
    kept = train.config_from_form(context, "conceptor-flux-dev", "inks", *basic)
    assert (kept.adapter.kind, kept.optimizer.ema_decay, kept.checkpoints.dtype) == ("lora", 0.99, "fp16")


@pytest.mark.parametrize("key, value, sentence", [
    ("gradient_accumulation", -1, "Gradient accumulation must be at least 1."),
    ("batch_size", None, "Batch size must be a whole number."),
    ("ema_decay", 1.5, "EMA decay (0: off) must be less than 1."),
    ("factor", 0, "LoKr factor (-1: auto) is -1 (automatic) or a positive number."),
    ("flip", "maybe", "Horizontal flip must be on or off."),
    ("dtype", "fp8", "Checkpoint dtype must be one of 'fp32', 'fp16' or 'bf16'."),
    ("init_from", "loras/missing.safetensors", "There is no LoRA file at loras/missing.safetensors to start from."),
])
def test_an_invalid_advanced_value_is_one_sentence(context, key, value, sentence):
    from blk.errors import UserError

    (context.workspace.datasets / "inks").mkdir(parents=True)
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    form[advanced_index(key)] = value
    with pytest.raises(UserError) as raised:
        train.config_from_form(context, "conceptor-flux-dev", "inks", *form)
    assert str(raised.value) == sentence
    update, note = train.start(context, "conceptor-flux-dev", "inks", *form)
    assert note == f"**{sentence}**" and update == gr.update()
    assert not context.workspace.runs.exists() or list(context.workspace.runs.iterdir()) == []  # nothing started


def test_held_out_images_without_a_validation_loss_are_one_sentence(context, monkeypatch):
    """5 images held out with "Validation loss every N steps" at 0 were kept from training for nothing. Refused
    for a new run; a run begun so (before this check) still resumes."""
    import blk.train.process
    from blk.train.config import load_config

    spawned = []
    monkeypatch.setattr(blk.train.process, "_spawn", lambda *args: spawned.append(args))
    make_noise_dataset(context.workspace.datasets / "inks", count=8)
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    form[train.FORM_MEMORY_NAMES.index("validation_images")] = 5
    form[train.FORM_MEMORY_NAMES.index("validation_every")] = 0
    update, note = train.start(context, "conceptor-flux-dev", "inks", *form)
    assert note.startswith("**5 validation images are held out from training but no validation loss is computed")
    assert update == gr.update() and spawned == []
    assert not context.workspace.runs.exists() or list(context.workspace.runs.iterdir()) == []

    folder = run_folder(context.workspace.runs, "old")  # a run begun so: its config still reads
    config = load_config(folder / "config.yaml")
    config.data.validation_images = 5
    save_config(config, folder / "config.yaml")
    assert load_config(folder / "config.yaml").data.validation_images == 5


@pytest.mark.parametrize("section, values, field", [
    ("schedule", {"timestep_shift": 0}, "schedule.timestep_shift"),  # sigma 0 every step: clean latents
    ("sampling", {"size": 32}, "sampling.size"),  # drawn at 0 px: the step-0 sample crashed
    ("sampling", {"steps": 0}, "sampling.steps"),
    ("optimizer", {"betas": [1.5, 0.999]}, "optimizer.betas.0"),  # refused only when the optimizer was built
    ("optimizer", {"d0": 0}, "optimizer.d0"),  # Prodigy never moves
])
def test_settings_that_would_train_nothing_or_fail_later_are_refused_on_reading(section, values, field):
    from pydantic import ValidationError

    from blk.train.config import TrainConfig

    with pytest.raises(ValidationError) as refused:
        TrainConfig.model_validate({section: values})
    assert ".".join(str(part) for part in refused.value.errors()[0]["loc"]) == field
    with pytest.raises(ValidationError, match="the polynomial schedule decays the learning rate to 1e-07"):
        TrainConfig.model_validate({"optimizer": {"lr": 1e-8}, "schedule": {"lr_schedule": "polynomial"}})


def test_the_lokr_factor_shows_only_for_a_lokr_adapter(context, tmp_path, monkeypatch):
    """The factor splits LoKr's Kronecker product; beside a LoRA it means nothing, so it hides (at build, on an
    adapter-type change and on a preset load) while its value still reaches the config untouched."""
    factor_label = "LoKr factor (-1: auto)"
    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    config = demo.get_config_file()
    components = {c["id"]: c for c in config["components"]}
    name = {i: c["props"].get("elem_id") or c["props"].get("label") for i, c in components.items()}
    factor = next(c for c in components.values() if c["props"].get("label") == factor_label)
    assert factor["props"]["visible"] is False  # the default preset trains a LoRA
    wired = {(name.get(t), event): [name[o] for o in d["outputs"]] for d in config["dependencies"]
             for t, event in d["targets"]}
    assert wired[("Adapter", "change")] == [factor_label]
    assert train.lokr_factor_shown("lokr")["visible"] is True
    assert train.lokr_factor_shown("lora")["visible"] is False

    at = advanced_index("factor")
    lora = train.form_updates_from_preset(context, "conceptor-flux-dev")
    assert lora[at] == {"__type__": "update", "value": -1, "visible": False}
    assert lora[advanced_index("kind")] == "lora" and len(lora) == train.BASIC_FIELDS + len(train.ADVANCED)
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "conceptor-flux-dev.yaml").write_text("adapter: {kind: lokr, factor: 8}\n")  # a LoKr default preset
    monkeypatch.setattr(train, "PRESETS", presets)
    lokr = train.form_updates_from_preset(context, "conceptor-flux-dev")
    assert lokr[at] == {"__type__": "update", "value": 8, "visible": True}
    with gr.Blocks() as demo:  # a page built on a LoKr preset shows the factor from the start
        train.build(context, lambda: [])
    shown = next(b for b in demo.blocks.values() if getattr(b, "label", None) == factor_label)
    assert shown.visible is True and shown.value == 8


# what the artist reads: sentences beside the buttons, form labels, time left ------------------------------

def finished_run(runs, name="r", steps=6):
    """A run that trained all its steps and whose trainer has exited."""
    folder = run_folder(runs, name, steps=steps)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses(range(1, steps + 1), base=1.0)
    checkpoint(log, folder, steps)
    saved_state(folder, steps)
    log("status", steps, status="finished")
    atomic.write_json(folder / "process.json", {"pid": ended_pid(), "started": 0, "processes": 1})
    return folder


def test_resuming_a_finished_run_says_so_and_starts_nothing(context):
    folder = finished_run(context.workspace.runs)
    before = (folder / "process.json").read_text()
    note = train.control(context, "r", "resume")
    assert note == ("r already trained all its 6 steps: to train it longer, set “Resume to step” above 6 and click "
                    "Resume.")
    assert train.control(context, "r", "resume", 6) == \
        "r is at step 6 already: set “Resume to step” above 6 to train it longer."  # finished: no "or 0"
    assert (folder / "process.json").read_text() == before and not (folder / "trainer.log").exists()
    assert run_info(folder).status == "finished"


def test_resume_to_a_later_step_trains_a_finished_run_longer(context):
    """"Resume to step" reaches the trainer as --steps (the CLI's way to train a run longer)."""
    from blk.train.process import is_running

    folder = finished_run(context.workspace.runs)
    assert train.control(context, "r", "resume", 9) == "Resuming r from step 6 to step 9…"
    command = json.loads((folder / "process.json").read_text())["command"]
    assert command[command.index("--steps") + 1] == "9" and command[command.index("--resume") + 1] == str(folder)
    deadline = time.time() + 120
    while is_running(folder) and time.time() < deadline:  # this fake run's checkpoint is no safetensors file
        time.sleep(0.5)
    assert not is_running(folder)

    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    config = demo.get_config_file()
    name = {c["id"]: c["props"].get("elem_id") or c["props"].get("value") for c in config["components"]}
    resume = next(d for d in config["dependencies"] for t, e in d["targets"] if (name.get(t), e) == ("Resume", "click"))
    assert [name[i] for i in resume["inputs"]] == ["r", "blk-resume-to"]  # the run (its value), the step


def test_a_resume_to_a_step_before_the_runs_end_says_what_it_changes(context, monkeypatch):
    """“Resume to step” below the run's planned length ended it early and reshaped its learning rate, silently."""
    import blk.train.process

    from blk.train.config import Stage, StageSource

    spawned = []
    monkeypatch.setattr(blk.train.process, "_spawn", lambda *args: spawned.append(args))
    folder = run_folder(context.workspace.runs, steps=6)
    config = TrainConfig.model_validate({"schedule": {"steps": 6, "lr_schedule": "cosine"}, "data": {"stages": [
        Stage(start=0, sources=[StageSource(folder="a")]).model_dump(),
        Stage(start=5, sources=[StageSource(folder="b")]).model_dump()]}})
    save_config(config, folder / "config.yaml")
    log = Events(folder)
    log("status", 0, status="started")
    log.losses(range(1, 3), base=1.0)
    checkpoint(log, folder, 2)  # a stop saves its step
    saved_state(folder, 2)
    log("status", 2, status="stopped")
    assert train.control(context, "r", "resume", 4) == (
        "Resuming r from step 2 to step 4… It ends at step 4 of the 6 it was planned for; its cosine learning rate "
        "now decays over 4 steps; its curriculum stage from step 5 never starts.")
    assert train.control(context, "r", "resume", 2) == \
        "r is at step 2 already: set “Resume to step” above 2 to train it longer, or set it to 0 to finish its own 6."
    assert train.control(context, "r", "resume", 8) == "Resuming r from step 2 to step 8…"
    assert len(spawned) == 2


def test_stop_kill_and_resume_answer_right_under_their_buttons(context):
    """Their sentences go to a note beneath the buttons in the run column (not under the long form on the left),
    and choosing another run clears it."""
    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    config = demo.get_config_file()
    name = {c["id"]: c["props"].get("elem_id") or c["props"].get("value") or c["props"].get("label")
            for c in config["components"]}
    wired = {(name.get(t), event): [name.get(o) for o in d["outputs"]] for d in config["dependencies"]
             for t, event in d["targets"]}
    for button in ("Stop (save and end)", "Kill", "Resume", "Sample now"):
        assert wired[(button, "click")] == ["blk-run-note"]

    def parent_of(node, child_id):
        for index, child in enumerate(node.get("children", [])):
            if child["id"] == child_id:
                return node, index
            found = parent_of(child, child_id)
            if found:
                return found
        return None

    note_id = next(i for i, n in name.items() if n == "blk-run-note")
    column, at = parent_of(config["layout"], note_id)
    buttons = [name[c["id"]] for c in column["children"][at - 1]["children"]]
    assert buttons == ["Stop (save and end)", "Kill", "Resume", "Sample now"]  # the row just above the note
    assert ("Run", "change") in wired and any(o == ["blk-run-note", "blk-resume-to"] for (n, e), o in wired.items()
                                              if n == "Run")


def test_time_left_shows_only_while_the_run_runs(context):
    runs = context.workspace.runs
    for name, pid in (("live", os.getpid()), ("halted", ended_pid())):
        folder = run_folder(runs, name, steps=40)
        log = Events(folder)
        log("status", 0, status="started")
        log.losses([1, 2, 3], base=1.0)  # one step a second: 37 steps, 37 s left
        checkpoint(log, folder, 3)
        if name == "halted":
            log("status", 3, status="stopped")
        atomic.write_json(folder / "process.json", {"pid": pid, "started": 0, "processes": 1})
    live = train.watch(context, "live", False)[2]
    assert live.startswith("**running** — step 3 of 40") and "about 37 s left" in live
    halted = train.watch(context, "halted", False)[2]
    assert halted.startswith("**stopped** — step 3 of 40") and "left" not in halted
    finished = train.watch(context, finished_run(runs, "done").name, False)[2]
    assert finished.startswith("**finished**") and "left" not in finished


def test_form_mistakes_name_the_forms_labels(context):
    from blk.errors import UserError

    (context.workspace.datasets / "inks").mkdir(parents=True)
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    for index, value, sentence in ((6, 0, "Steps must be at least 1."),
                                   (5, 0, "Learning rate must be more than 0."),
                                   (11, 0, "Keep newest must be at least 1."),
                                   (2, 0, "Rank must be at least 1."),
                                   (3, 0, "Alpha must be more than 0."),  # an adapter that learns nothing
                                   (1, "", "Bucket sizes (px) must have at least 1 value."),  # every image at its own size
                                   (1, "512, 0", "Bucket sizes (px) must be at least 64.")):
        wrong = list(form)
        wrong[index] = value
        with pytest.raises(UserError) as raised:
            train.config_from_form(context, "conceptor-flux-dev", "inks", *wrong)
        assert str(raised.value) == sentence

    with gr.Blocks() as demo:  # every label a mistake can name is one the form shows
        train.build(context, lambda: [])
    shown = [c["props"].get("label") or "" for c in demo.get_config_file()["components"]]
    for label in train.LABELS.values():
        assert any(s == label or s.startswith(label + " (") for s in shown), label


def test_first_error_keeps_the_yaml_path_where_there_is_no_form(tmp_path):
    """The CLI user edits YAML, so a preset's mistake names its path; a form's labels replace it only when given."""
    from pydantic import ValidationError

    from blk.errors import UserError
    from blk.train.config import TrainConfig, load_config
    from blk.yaml_io import first_error

    (tmp_path / "bad.yaml").write_text("schedule: {steps: 0}\n")
    with pytest.raises(UserError) as raised:
        load_config(tmp_path / "bad.yaml")
    assert str(raised.value) == "bad.yaml: schedule.steps must be at least 1."
    with pytest.raises(ValidationError) as invalid:
        TrainConfig.model_validate({"data": {"resolutions": [512, "big"]}})
    assert first_error(invalid.value) == "data.resolutions.1 must be a whole number."  # pydantic's "unable to parse"
    assert first_error(invalid.value, {"data.resolutions": "Bucket sizes"}) == "Bucket sizes must be a whole number."
    assert first_error(invalid.value, {"schedule.steps": "Steps"}).startswith("data.resolutions.1 must")  # unlabelled
    # a misspelt key gets the nearest setting, a file of no settings says so, and more mistakes are counted
    for text, said in (("chekpoints: {every: 5}\n", "chekpoints is not a setting here (did you mean checkpoints?)."),
                       ("data: {stages: [{sourcs: [{folder: a}]}]}\n",
                        "data.stages.0.sourcs is not a setting here (did you mean data.stages.0.sources?)."),
                       ("- a\n- b\n", "the file holds no settings (a list of `name: value` lines)."),
                       ("schedule: {steps: 0, batch_size: 0}\nzzz: 1\n",
                        "schedule.steps must be at least 1 (2 more mistakes after it).")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(UserError) as raised:
            load_config(tmp_path / "bad.yaml")
        assert str(raised.value) == f"bad.yaml: {said}"


def test_the_estimate_says_short_spans_in_seconds_like_the_status_line():
    from blk.timespan import duration
    from blk.train.probe import Estimate

    gb = 2**30
    assert Estimate(2.21, 13.26, gb, 16 * gb, "cpu").sentence(6) == \
        "About 2.21 s/step, 13 s for 6 steps; peak memory 1.0 GB of 16 GB on cpu."
    assert "10 min for 300 steps" in Estimate(2.0, 600.0, gb, 16 * gb, "cpu").sentence(300)
    assert "3.0 h for 5400 steps" in Estimate(2.0, 10800.0, gb, 16 * gb, "cpu").sentence(5400)
    # too large: the settings still worth changing (`memory_tips`), not a fixed list naming ones already set
    assert Estimate(2.0, 600.0, 30 * gb, 24 * gb, "cuda", tips="a lower rank").sentence(300).endswith(
        "peak memory 30.0 GB of 24 GB on cuda — this will not fit: try a lower rank.")
    assert [duration(s) for s in (13.26, 119, 120, 7199, 7200)] == ["13 s", "119 s", "2 min", "120 min", "2.0 h"]


def test_the_plots_name_their_lines_and_span_whole_steps(context):
    """Legend keys say what each line is; the x axis spans the whole run and at least WHOLE_STEPS steps, so its
    ticks fall on whole steps (a 6-step run drew 1.0 1.2 1.4 …)."""
    finished_run(context.workspace.runs, "short", steps=6)
    folder = run_folder(context.workspace.runs, "long", steps=1000)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2, 3], base=1.0)
    log("eval", 3, loss=0.5)
    loss, lr, *_ = train.watch(context, "short", False)
    assert set(frame(loss)["series"]) == {"loss", "smoothed"} and loss.x_lim == lr.x_lim == [0, train.WHOLE_STEPS]
    finished_run(context.workspace.runs, "twenty", steps=20)
    loss, lr, *_ = train.watch(context, "twenty", False)
    assert loss.x_lim == [0, 20]  # a 20-step run's axis ends at its end (it was drawn to 30)
    loss, lr, *_ = train.watch(context, "long", False)
    assert list(dict.fromkeys(frame(loss)["series"])) == ["loss", "smoothed", "validation"]
    assert loss.x_lim == lr.x_lim == [0, 1000]
    assert set(train.SERIES_COLOURS) == {"loss", "smoothed", "validation"}

    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    plot = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-loss-plot")
    assert plot.color_map == train.SERIES_COLOURS and plot.color_title == ""  # no lone "series" title
    assert plot.show_label is False  # Gradio's label pushed the legend out of the plot's box


def test_the_advanced_checkboxes_have_a_wrapping_row_of_their_own(context):
    assert sorted(k for row in train.ADVANCED_ROWS for k in row) == sorted(k for _, k, _ in train.ADVANCED)
    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    config = demo.get_config_file()
    components = {c["id"]: c for c in config["components"]}

    def rows(node):
        if components.get(node["id"], {}).get("type") == "row":
            yield node
        for child in node.get("children", []):
            yield from rows(child)

    switches = [row for row in rows(config["layout"])
                if "blk-switches" in (components[row["id"]]["props"].get("elem_classes") or [])]
    assert len(switches) == 1
    def leaves(node):  # Gradio wraps a row's form fields in a "form" block
        children = node.get("children")
        return [leaf for child in children for leaf in leaves(child)] if children else [components[node["id"]]]

    kinds = [c["type"] for c in leaves(switches[0])]
    labels = [c["props"]["label"] for c in leaves(switches[0])]
    assert set(kinds) == {"checkbox"} and labels == ["Horizontal flip", "Shuffle tokens", "int8 base",
                                                     "Gradient checkpointing", "Cache latents"]


def test_a_base_model_typed_in_reaches_the_trainer_and_a_wrong_one_is_one_sentence(context):
    """The Base model list takes a name or path typed in: it goes into the config as typed, a wrong one is
    refused with the registry's sentence (here by Estimate's probe), and a list cleared by hand says so."""
    from blk.errors import UserError

    inks = context.workspace.datasets / "inks"
    inks.mkdir(parents=True)
    for i in range(2):  # a dataset Start (and so Estimate, which checks what Start checks first) would take
        Image.new("RGB", (1024, 1024), (40 * i, 0, 0)).save(inks / f"ink{i}.png")
        (inks / f"ink{i}.txt").write_text("blkstyle, ink")
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    form[0] = " my-models/flux-finetune "
    assert train.config_from_form(context, "conceptor-flux-dev", "inks", *form).model.name == "my-models/flux-finetune"
    form[0] = "no-such-model"
    *_, said = train.estimate(context, "conceptor-flux-dev", "inks", *form)
    assert said.startswith("**") and "Unknown model 'no-such-model': use one of flux-dev" in said
    assert "\n" not in said and "Traceback" not in said
    for cleared in (None, "", "  "):
        form[0] = cleared
        with pytest.raises(UserError, match=r"^Choose a base model\.$"):
            train.config_from_form(context, "conceptor-flux-dev", "inks", *form)
    assert train.start(context, "conceptor-flux-dev", "inks", *form)[1] == "**Choose a base model.**"


def test_elapsed_counts_training_not_the_pause_and_a_stop_is_said_once(context):
    """Stopped at step 2 after 3 s of training, resumed 10 minutes later, 3 s more: 6 s elapsed, not 10 min."""
    folder = run_folder(context.workspace.runs, steps=6)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    log("status", 2, status="stopped")
    log("status", 2, dt=600, status="resumed")
    log.losses([3, 4], base=1.0)
    log("status", 4, status="stopped")
    assert view_run(folder, 6).elapsed_seconds == pytest.approx(3.0 + 3.0)
    process = {"pid": ended_pid(), "started": 0}
    atomic.write_json(folder / "process.json", process)
    status = train.watch(context, "r", False)[2]
    assert "6 s elapsed" in status and status.count("stopped") == 1, status


def test_prodigy_plots_the_rate_it_steps_at(context):
    """Prodigy's lr stays 1.0; the runner logs d·lr (and d), and the plot's title says so."""
    folder = run_folder(context.workspace.runs)
    log = Events(folder)
    log("status", 0, status="started")
    for step, d in enumerate([1e-5, 3e-5, 8e-5], start=1):
        log("loss", step, loss=0.5, lr=d, d=d)
    lr = train.watch(context, "r", False)[1]
    assert lr.y_title == "d·lr (Prodigy)" and list(frame(lr)["lr"]) == [1e-5, 3e-5, 8e-5]
    log2 = Events(run_folder(context.workspace.runs, name="adamw"))
    log2("status", 0, status="started")
    log2.losses([1], base=1.0)
    assert train.watch(context, "adamw", False)[1].y_title == "learning rate"


def test_a_buttons_note_is_cleared_once_what_it_announced_is_over(context):
    folder = run_folder(context.workspace.runs)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": 0})  # a live process: running
    stopping = "Stopping r after its current step…"
    assert run_info(folder).status == "running"
    assert train.settled_note(context, "r", stopping) == gr.update()  # not yet
    log("status", 2, status="stopped")
    atomic.write_json(folder / "process.json", {"pid": ended_pid(), "started": 0})
    assert train.settled_note(context, "r", stopping) == ""
    assert train.settled_note(context, "r", "Resuming r from step 2…") == ""
    assert train.settled_note(context, "r", "**Choose a dataset.**") == gr.update()  # other notes stay
    assert train.settled_note(context, "", stopping) == gr.update()


def test_opening_train_chooses_the_dataset_open_in_caption(context):
    """The dataset worked on in Caption becomes Train's when Train has none; a chosen one is kept."""
    from ui.app import build_app, carry_dataset

    assert carry_dataset("inks", None) == gr.update(value="inks") == carry_dataset("inks", "")
    assert carry_dataset("inks", "stones") == gr.update() and carry_dataset(None, None) == gr.update()
    assert carry_dataset(None, None, ["inks"]) == gr.update(value="inks")  # the only one there is
    assert carry_dataset(None, None, ["inks", "stones"]) == gr.update() == carry_dataset(None, "stones", ["inks"])
    config = build_app(context).get_config_file()
    components = {c["id"]: c for c in config["components"]}
    datasets = [i for i, c in components.items() if c["props"].get("label") == "Dataset" and c["type"] == "dropdown"]
    train_tab = next(i for i, c in components.items() if c["type"] == "tabitem" and c["props"].get("label") == "Train")
    carried = [d for d in config["dependencies"] if (train_tab, "select") in [tuple(t) for t in d["targets"]]
               and len(d["inputs"]) == 2]
    assert len(carried) == 1 and carried[0]["outputs"] == [carried[0]["inputs"][1]]
    caption_dataset, train_dataset = carried[0]["inputs"]
    assert train_dataset in datasets and caption_dataset != train_dataset
    assert components[caption_dataset]["type"] == "dropdown"


def test_a_resume_that_failed_while_loading_adds_no_training_time(context):
    """The error of a resume that failed before it started (`_record_failure`, no "resumed" first) sits in the
    pause: it does not stretch the stopped attempt's span to the failure an hour later."""
    folder = run_folder(context.workspace.runs, steps=6)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    log("status", 2, status="stopped")  # 3 s of training
    log("error", 2, dt=3600, message="The model file is missing.")
    log("status", 2, dt=60, status="resumed")
    log.losses([3], base=1.0)  # 1 s more
    assert view_run(folder, 6).elapsed_seconds == pytest.approx(4.0)


def test_the_sample_now_note_clears_once_its_samples_are_in(context):
    folder = run_folder(context.workspace.runs)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2, 3], base=1.0)
    atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": 0})  # still running
    note = "Samples of r come at the end of its current step (step 4)."
    assert train.settled_note(context, "r", note) == gr.update()
    sample(log, folder, 3)  # an earlier step's samples are not the ones asked for
    assert train.settled_note(context, "r", note) == gr.update()
    sample(log, folder, 4, asked=True)
    assert run_info(folder).status == "running" and train.settled_note(context, "r", note) == ""


def test_elapsed_leaves_out_the_pause_after_a_kill_when_the_resume_fails_while_loading(context):
    """Killed at step 2 after 2 s (no end written), resumed 10 minutes later, failed 2 s into loading: 4 s."""
    folder = run_folder(context.workspace.runs, steps=6)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)  # then kill -9: no "stopped"
    log("launch", 0, dt=600)
    log("error", 2, dt=2, message="The model could not be read.")
    view = view_run(folder, 6)
    assert view.elapsed_seconds == pytest.approx(2.0 + 2.0) and view.message == "The model could not be read."
    log("launch", 0, dt=60)  # a resume that loads: its "resumed" continues the attempt its launch began
    log("status", 2, dt=5, status="resumed")
    log.losses([3], base=1.0)
    assert view_run(folder, 6).elapsed_seconds == pytest.approx(2.0 + 2.0 + 6.0)


def test_stop_kill_and_sample_now_act_only_on_a_live_trainer_and_kill_is_red_only_then(context):
    folder = run_folder(context.workspace.runs)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": 0})  # a live process: running

    def states(name):
        # (clickable, colour if set): an update changes only what it names
        return [(b.interactive, b.constructor_args.get("variant")) for b in train.control_buttons(context, name)]

    assert states("r") == [(True, None), (True, "stop"), (False, None), (True, None)]  # stop, kill, resume, sample
    log("status", 2, status="stopped")
    atomic.write_json(folder / "process.json", {"pid": ended_pid(), "started": 0})
    assert states("r") == [(False, None), (False, "secondary"), (True, None), (False, None)]
    assert states("") == states("../../etc") == [(False, None), (False, "secondary"), (False, None), (False, None)]


def test_the_checkpoint_list_names_its_folder_once(tmp_path):
    folder = tmp_path / "runs" / "r" / "checkpoints"
    listed = train.checkpoint_list([(10, str(folder / "step-000010.safetensors")),
                                    (20, str(folder / "step-000020.safetensors"))])
    assert listed == (f"Checkpoints, in the folder  \n`{folder}`\n\n- step 10: `step-000010.safetensors`\n"
                      "- step 20: `step-000020.safetensors`")
    assert train.checkpoint_list([]) == "No checkpoint yet."


def test_try_in_sketch_adds_the_steps_checkpoint_and_opens_sketch(context):
    """From a step of the run to Sketch with its checkpoint in the LoRA list (at strength 1)."""
    from ui.app import build_app, try_in_sketch

    folder = finished_run(context.workspace.runs, "r", steps=6)
    checkpoint = str((folder / "checkpoints" / "step-000006.safetensors").resolve())
    tabs, rows, note = try_in_sketch(context, "r", 6, [])
    assert tabs.constructor_args == {"selected": "sketch"} and rows == [[checkpoint, 1.0]] and note == ""
    tabs, again, _ = try_in_sketch(context, "r", "6", rows)
    assert tabs.constructor_args == {"selected": "sketch"} and again == rows  # not twice
    assert try_in_sketch(context, "r", 3, rows) == (gr.update(), rows,
                                                    "**Step 3 has no checkpoint to try (see above).**")
    assert try_in_sketch(context, "r", None, [])[2] == "**Choose a step with a checkpoint first.**"

    demo = build_app(context)
    button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-step-to-sketch")
    sending, = [f for f in demo.fns.values() if (button._id, "click") in f.targets]
    sketch_rows = sending.inputs[2]
    assert isinstance(sketch_rows, gr.State) and sketch_rows in sending.outputs  # Sketch's own LoRA list
    assert [type(o).__name__ for o in sending.outputs] == ["Tabs", "State", "Markdown"]


def test_one_run_at_a_time_from_the_tab(context):
    """A second Start while a run trains (a double click, or a new run) ran two trainers on one GPU, the first out
    of sight; it is one sentence now, and nothing starts."""
    (context.workspace.datasets / "inks").mkdir(parents=True)
    folder = run_folder(context.workspace.runs, "training-now", steps=40)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2, 3], base=1.0)
    atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": 0, "processes": 1})
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    update, note = train.start(context, "conceptor-flux-dev", "inks", *form)
    assert note == ("**training-now is still training (step 3 of 40): stop it, or wait for it to finish, before "
                    "starting another run.**") and update == gr.update()
    assert [p.name for p in context.workspace.runs.iterdir()] == ["training-now"]


def test_a_resume_to_a_later_step_shows_its_new_length_while_it_loads(context):
    """"starting — step 60 of 60" right after "Resuming … to step 80": the length asked for is shown at once."""
    folder = finished_run(context.workspace.runs, "r", steps=6)
    atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": time.time(), "processes": 1,
                                                "command": ["python", "-m", "blk", "train", "--resume", str(folder),
                                                            "--steps", "9"]})
    info = run_info(folder)
    assert (info.status, info.step, info.steps) == ("starting", 6, 9)
    assert train.watch(context, "r", False)[2].startswith("**starting** — step 6 of 9, loading the model")
    assert train.control(context, "r", "resume", -5) == "“Resume to step” is a step number: 0 (the run's own " \
        "steps) or more."


def test_the_learning_rate_axis_writes_small_rates_readably(context):
    with gr.Blocks() as demo:
        train.build(context, lambda: [])
    plot = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-lr-plot")
    assert plot.y_axis_format == ".2~e"  # 1e-5, 1.5e-5: fixed decimals drew Prodigy's early rates as 0.000


def test_a_pid_given_to_another_process_is_not_the_run(tmp_path):
    """After a reboot the trainer's pid may belong to any process: the run is not running, and Stop and Kill
    leave that process alone (with a pid alone, the run read "running" for ever and Kill signalled it)."""
    from blk.train.process import _identity, is_running, kill_run, stop_run

    folder = run_folder(tmp_path)
    Events(folder)("status", 0, status="started")
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        boot, tick = _identity(stranger.pid).rsplit(":", 1)
        atomic.write_json(folder / "process.json", {"pid": stranger.pid, "started": 0, "processes": 1,
                                                    "identity": f"{boot}:{int(tick) - 100}"})  # began earlier
        assert not is_running(folder)
        assert run_info(folder).status != "running"
        assert stop_run(folder) == "r is not running."
        assert kill_run(folder) == "r is not running."
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that only shares the trainer's pid was signalled"

        atomic.write_json(folder / "process.json", {"pid": stranger.pid, "started": 0, "processes": 1,
                                                    "identity": _identity(stranger.pid)})  # the process it started
        assert is_running(folder)
        assert kill_run(folder).startswith("Killed r")
        assert stranger.wait(10) == -9
    finally:
        if stranger.poll() is None:
            stranger.kill()


def live_run(runs, name, steps=40):
    """A run whose trainer is alive (this test's own process stands for it)."""
    folder = run_folder(runs, name, steps=steps)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2, 3], base=1.0)
    atomic.write_json(folder / "process.json", {"pid": os.getpid(), "started": 0, "processes": 1})
    return folder


def stopped_run(runs, name, steps=6):
    folder = run_folder(runs, name, steps=steps)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2], base=1.0)
    checkpoint(log, folder, 2)
    saved_state(folder, 2)
    log("status", 2, status="stopped")
    atomic.write_json(folder / "process.json", {"pid": ended_pid(), "started": 0, "processes": 1})
    return folder


def test_resume_and_estimate_wait_for_another_live_run(context):
    """Start refused a second run while one trained, but Resume (clickable) and Estimate did not: two trainers, or
    a probe measuring both, on one GPU."""
    live_run(context.workspace.runs, "training-now")
    folder = stopped_run(context.workspace.runs, "b")
    stop, kill, resume, sample_now = train.control_buttons(context, "b")
    assert [stop.interactive, kill.interactive, resume.interactive, sample_now.interactive] == [False] * 4
    refused = ("**training-now is still training (step 3 of 40): stop it, or wait for it to finish, before starting "
               "another run.**")
    assert train.control(context, "b", "resume") == refused
    assert not (folder / "trainer.log").exists() and run_info(folder).status == "stopped"
    (context.workspace.datasets / "inks").mkdir(parents=True)
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    assert list(train.estimate(context, "conceptor-flux-dev", "inks", *form)) == [refused]
    # with no other run alive, b's Resume is clickable again
    (context.workspace.runs / "training-now" / "process.json").unlink()
    assert train.control_buttons(context, "b")[2].interactive is True


@pytest.mark.parametrize("name, outside", [("..", False), ("/etc", True), ("../../x", True),
                                           ("b/checkpoints", False), ("removed", False)])
def test_a_run_name_that_is_no_run_is_one_sentence_everywhere(context, name, outside):
    """The Run dropdown takes typed names and keeps a removed run's until ↻: ".." resumed a "run" in the workspace
    root, "/etc" raised at every timer tick, and a removed run's Resume failed on its log file."""
    stopped_run(context.workspace.runs, "b")
    removed = stopped_run(context.workspace.runs, "removed")
    import shutil

    shutil.rmtree(removed)
    sentence = f"There is no run called {name} in {context.workspace.runs} (removed? ↻ lists the runs again)."
    if outside:
        sentence = f"{name} is outside the workspace ({context.workspace.root}) and the folders allowed in settings."
    assert train.control(context, name, "resume") == f"**{sentence}**"
    assert train.control(context, name, "kill") == f"**{sentence}**"
    assert [b.interactive for b in train.control_buttons(context, name)] == [False] * 4
    assert train.watch(context, name, False)[2] == f"**{sentence}**"
    assert train.step_choices(context, name, None)[1] == []
    assert train.show_step(context, name, 2) == ([], sentence)
    assert not (context.workspace.root / "process.json").exists() and not (context.workspace.root / "trainer.log").exists()


def test_a_long_dataset_name_makes_a_run_folder_that_fits(context, monkeypatch):
    """The run folder is named PRESET-DATASET-DATE: a legal 80-letter Japanese dataset name made a 240-byte stem and
    an `OSError: File name too long` out of Start."""
    import blk.train.process

    monkeypatch.setattr(blk.train.process, "_spawn", lambda *args: None)
    monkeypatch.setattr(blk.train.process, "check_dataset", lambda *args: None)
    folder = blk.train.process.start_run(TrainConfig(), context.workspace, name="conceptor-flux-dev-" + "墨の習作" * 20)
    stem = folder.name.rsplit("-", 2)[0]
    assert folder.is_dir() and len(folder.name.encode()) <= 255 and len(stem.encode()) <= 120
    assert stem.startswith("conceptor-flux-dev-墨の習作") and stem.encode().decode() == stem  # whole letters only


@pytest.mark.parametrize("field, label", [(2, "Rank"), (6, "Steps"), (10, "Checkpoint every N steps"),
                                          (5, "Learning rate")])
def test_a_cleared_number_field_is_named(context, field, label):
    """A number field emptied by hand sends None: the sentence was a Python one that named no field."""
    (context.workspace.datasets / "inks").mkdir(parents=True)
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    assert train.FORM_MEMORY_NAMES[field] in train.NUMBER_FIELDS
    form[field] = None
    update, note = train.start(context, "conceptor-flux-dev", "inks", *form)
    assert note == f"**{label} is empty: give it a number.**" and update == gr.update()


def test_a_remembered_number_outside_the_fields_bounds_is_not_put_back(context):
    """GPUs = 2 kept from a machine with two GPUs, on one with one (the field hidden, maximum 1): every Start and
    Estimate failed on a field the artist could not see."""
    from ui.form_memory import restored

    gpus = gr.Number(1, minimum=1, maximum=1, precision=0)
    steps = gr.Number(100, minimum=1, precision=0)
    assert restored(context, {"gpus": 2, "steps": 5000}, {"gpus": gpus, "steps": steps}) == [gr.update(), 5000]
    assert restored(context, {"gpus": 1, "steps": 0}, {"gpus": gpus, "steps": steps}) == [1, gr.update()]


def test_a_resume_whose_config_no_longer_reads_says_why_before_it_starts(context):
    """The README sends the artist to config.yaml after a NaN; a typo there ended the new trainer in a second,
    the sentence only in trainer.log, and the run read "stopped" again."""
    folder = stopped_run(context.workspace.runs, "b")
    text = (folder / "config.yaml").read_text().replace("  lr:", "  learning_rate:", 1)
    assert text != (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(text)
    note = train.control(context, "b", "resume")
    assert note.startswith("**") and "learning_rate" in note and "is not a setting here" in note
    assert not (folder / "trainer.log").exists() and run_info(folder).status == "stopped"


def test_after_a_kill_resume_names_and_checks_the_checkpoint_it_starts_from(context, monkeypatch):
    """Killed at step 14 with its last checkpoint at 10, a run resumes from 10: Resume said "from step 14", and
    “Resume to step” 12, which trains on from 10, was refused as "at step 14 already"."""
    import blk.train.process

    spawned = []
    monkeypatch.setattr(blk.train.process, "_spawn", lambda *args: spawned.append(args))
    folder = run_folder(context.workspace.runs, steps=30)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses(range(1, 11), base=1.0)
    checkpoint(log, folder, 10)
    saved_state(folder, 10)
    log.losses(range(11, 15), base=1.0)
    atomic.write_json(folder / "process.json", {"pid": ended_pid(), "started": 0, "processes": 1})
    assert (run_info(folder).status, run_info(folder).step) == ("killed", 14)
    assert train.control(context, "r", "resume", 10) == ("r resumes from its checkpoint at step 10: set “Resume to "
                                                          "step” above 10 to train it longer, or set it to 0 to "
                                                          "finish its own 30.")
    assert train.control(context, "r", "resume", 12) == (
        "Resuming r from its checkpoint at step 10 to step 12 (steps 11–14 are trained again)… It ends at step 12 "
        "of the 30 it was planned for.")
    assert train.control(context, "r", "resume") == \
        "Resuming r from its checkpoint at step 10 (steps 11–14 are trained again)…"
    assert len(spawned) == 2


def test_a_damaged_starting_lora_is_one_sentence_at_start_and_estimate_before_any_model_loads(context, monkeypatch):
    """A damaged “Start from a LoRA file” passed Start's check (the run failed at step 0, after loading the model),
    and Estimate checked nothing of Start's: it loaded the model, then said the trainer's sentence after "error: "."""
    import blk.train.process

    monkeypatch.setattr(blk.train.process, "_spawn", lambda *args: pytest.fail("a trainer was started"))
    monkeypatch.setattr(blk.train.process, "probe_in_child", lambda *args: pytest.fail("a probe was started"))
    make_noise_dataset(context.workspace.datasets / "inks")
    (context.workspace.root / "loras").mkdir()
    (context.workspace.root / "loras" / "damaged.safetensors").write_bytes(b"\xff" * 440)
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    form[advanced_index("init_from")] = "loras/damaged.safetensors"
    refused = ("**damaged.safetensors is not a readable .safetensors LoRA (damaged, cut short, or another kind of "
               "file).**")
    assert train.start(context, "conceptor-flux-dev", "inks", *form)[1] == refused
    assert list(train.estimate(context, "conceptor-flux-dev", "inks", *form)) == [refused]
    assert not list(context.workspace.runs.iterdir())


def test_the_probe_blocks_starts_while_it_runs_and_its_refusals_read_as_starts(context, monkeypatch):
    """Start and Resume went ahead while Estimate's probe loaded its model (two models on one GPU, and the probe
    measured both); the probe's refusals began with the command line's "error: ". A probe whose app died leaves
    a record of a process that has ended: it blocks nothing."""
    import blk.train.process
    from blk.train.process import PROBE_RECORD, _identity, probe_in_child, probe_running

    runs = context.workspace.runs
    during = []

    class Child:  # the probe's `python -m blk train … --probe`, refusing as it does
        pid, returncode = os.getpid(), 2  # this process stands for it: alive

        def __init__(self, *args, **kwargs):
            pass

        def communicate(self):
            during.append(probe_running(context.workspace))
            during.append(train.control(context, "b", "resume"))
            # Prodigy printed its notice to stdout: the tab showed "Using decoupled weight decay" as the reason
            return "Using decoupled weight decay\n", "notice: something\nerror: inks has no usable images to train on.\n"

    stopped_run(runs, "b")
    with monkeypatch.context() as patched:  # (subprocess is every module's: ended_pid below needs the real one)
        patched.setattr(blk.train.process.subprocess, "Popen", Child)
        assert probe_in_child(TrainConfig(), context.workspace) == (False, "inks has no usable images to train on.")
    assert during == [True, "**An estimate is running (it loads the model and trains a few steps): wait for its "
                            "answer before starting, resuming or estimating a run.**"]
    assert not (runs / PROBE_RECORD).exists() and not probe_running(context.workspace)
    atomic.write_json(runs / PROBE_RECORD, {"pid": (pid := ended_pid()), "identity": _identity(pid)})
    assert not probe_running(context.workspace)  # its app died: the record is stale
    atomic.write_json(runs / PROBE_RECORD, {"pid": os.getpid(), "identity": _identity(os.getpid())})
    (context.workspace.datasets / "inks").mkdir(parents=True)
    form = list(train.form_from_preset(context, "conceptor-flux-dev"))
    assert train.start(context, "conceptor-flux-dev", "inks", *form)[1].startswith("**An estimate is running")


def test_a_failed_runs_reason_is_said_once_and_an_ended_run_has_no_speed(context):
    """The error event's sentence, then the log's "error: " line of the same sentence: the reason came twice,
    under a steps/s of the attempt that had ended."""
    folder = run_folder(context.workspace.runs, steps=40)
    log = Events(folder)
    log("status", 0, status="started")
    log.losses([1, 2, 3], base=1.0)
    reason = "/w/datasets/good is not a folder (nor a dataset in /w/datasets)."
    log("error", 3, message=reason)
    log("status", 3, status="error")
    atomic.write_json(folder / "process.json", {"pid": ended_pid(), "started": 0, "processes": 1})
    (folder / "trainer.log").write_text(f"loading…\nerror: {reason}\n")
    status = train.watch(context, "r", False)[2]
    assert status == f"**error** — step 3 of 40, 5 s elapsed.  \n{reason}"
    (folder / "trainer.log").write_text("Traceback …\nerror: something else went wrong\n")  # another word: said
    assert train.watch(context, "r", False)[2].endswith("`error: something else went wrong`")
    for ended in (stopped_run(context.workspace.runs, "halted"), finished_run(context.workspace.runs, "done")):
        assert "steps/s" not in train.watch(context, ended.name, False)[2]


def test_start_says_when_the_base_model_is_of_the_other_family_than_the_preset(context):
    """The Conceptor Flux preset started on an SDXL model trained with Flux's values without a word."""
    from blk.train.config import TrainConfig

    on_sdxl = TrainConfig.model_validate({"model": {"name": "tiny-sdxl"}})
    note = train.family_note(context, "conceptor-flux-dev", on_sdxl)
    assert note == (" conceptor was made for flux-dev (Flux) and now trains tiny-sdxl (SDXL): its values were chosen "
                    "for Flux; a preset made for SDXL (presets/) may suit it better.")
    assert train.family_note(context, "conceptor-sdxl", on_sdxl) == ""
    assert train.family_note(context, "", on_sdxl) == ""
