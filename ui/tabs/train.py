"""Train tab: start a LoRA run from a preset, watch its loss, samples and checkpoints; stop, kill, resume.

Runs are child processes (`blk.train.process`); this tab only reads their
folders, so a browser refresh or an app restart re-attaches to them.
"""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr

from ui.context import StudioContext
from ui.form_memory import remember_form

PRESETS = Path(__file__).resolve().parents[2] / "presets"


# The Advanced fields: (config section, key, label), bound to TrainConfig. Each field's control follows its type
# in the schema, and its values come after the GPUs field in the form, in this order (API callers rely on it).
ADVANCED = (
    ("adapter", "kind", "Adapter"), ("adapter", "factor", "LoKr factor (-1: auto)"),
    ("adapter", "dropout", "Adapter dropout"), ("adapter", "init_from", "Start from a LoRA file"),
    ("schedule", "batch_size", "Batch size"), ("schedule", "gradient_accumulation", "Gradient accumulation"),
    ("optimizer", "ema_decay", "EMA decay (0: off)"), ("data", "flip", "Horizontal flip"),
    ("data", "shuffle_tokens", "Shuffle tokens"), ("data", "keep_tokens", "Keep first N tokens"),
    ("data", "caption_dropout", "Caption dropout"), ("model", "int8_base", "int8 base"),
    ("model", "gradient_checkpointing", "Gradient checkpointing"), ("data", "cache_latents", "Cache latents"),
    ("checkpoints", "dtype", "Checkpoint dtype"),
    ("data", "shuffle_orders", "Shuffle orders per caption (0: new each step)"),
)
# How the accordion lays them out, row by row: the on/off switches share a row of their own that wraps, so that
# each label stays whole beside its box in a narrow window.
ADVANCED_ROWS = (("kind", "factor", "dropout"), ("init_from",), ("batch_size", "gradient_accumulation", "ema_decay"),
                 ("keep_tokens", "shuffle_orders", "caption_dropout", "dtype"),
                 ("flip", "shuffle_tokens", "int8_base", "gradient_checkpointing", "cache_latents"))
BASIC_FIELDS = 15  # model … gpus: form_from_preset's values before the advanced ones
# The basic fields' names in the browser's form memory, in the form's order (the Advanced ones go by their keys).
FORM_MEMORY_NAMES = ("model", "resolutions", "rank", "alpha", "optimizer", "lr", "steps", "schedule", "prompts",
                     "sample_every", "checkpoint_every", "keep", "validation_images", "validation_every", "gpus")

# The form's labels by schema path, so that a mistake names the field the artist sees ("Steps must be at least 1.").
LABELS = {
    "data.dataset": "Dataset", "model.name": "Base model", "data.resolutions": "Bucket sizes (px)",
    "adapter.rank": "Rank", "adapter.alpha": "Alpha", "optimizer.name": "Optimizer", "optimizer.lr": "Learning rate",
    "schedule.steps": "Steps", "schedule.lr_schedule": "Schedule", "sampling.prompts": "Sample prompts",
    "sampling.every": "Samples every N steps", "checkpoints.every": "Checkpoint every N steps",
    "checkpoints.keep": "Keep newest", "data.validation_images": "Validation images (held out)",
    "data.validation_every": "Validation loss every N steps", "schedule.gpus": "GPUs",
    **{f"{section}.{key}": label for section, key, label in ADVANCED},
}
# The form's number fields (by their form memory names) and where each goes in the schema.
NUMBER_FIELDS = {"rank": "adapter.rank", "alpha": "adapter.alpha", "lr": "optimizer.lr", "steps": "schedule.steps",
                 "sample_every": "sampling.every", "checkpoint_every": "checkpoints.every",
                 "keep": "checkpoints.keep", "validation_images": "data.validation_images",
                 "validation_every": "data.validation_every", "gpus": "schedule.gpus"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml") if not p.name.startswith(("caption-", "upscale-")))


def run_names(context: StudioContext) -> list[str]:
    from blk.train.process import list_runs

    return [r.name for r in list_runs(context.workspace)]


def form_from_preset(context: StudioContext, name: str):
    from blk.train.config import TrainConfig, load_config

    config = load_config(PRESETS / f"{name}.yaml") if name else TrainConfig()
    if context.demo:  # the tiny models stand in for real ones, at sizes and lengths a CPU manages
        tiny = "tiny-sdxl" if config.model.name == "sdxl" else "tiny-flux"
        config.model.name, config.model.int8_base = tiny, False
        config.data.resolutions, config.sampling.size, config.sampling.steps = [64], 64, 2
        config = demo_length(config)
    c = config
    return (c.model.name, ", ".join(str(r) for r in c.data.resolutions), c.adapter.rank, c.adapter.alpha,
            c.optimizer.name, c.optimizer.lr, c.schedule.steps, c.schedule.lr_schedule,
            "\n".join(c.sampling.prompts), c.sampling.every, c.checkpoints.every, c.checkpoints.keep,
            c.data.validation_images, c.data.validation_every, min(c.schedule.gpus, max(gpu_count(), 1)),
            *(getattr(getattr(c, section), key) for section, key, _ in ADVANCED))


DEMO_STEPS = 60  # a demo run's length: a minute or two on a CPU, where a preset's 6000 steps took hours
DEMO_EVERY = 10  # the fewest steps between a demo run's samples, checkpoints and validations


def demo_length(config):
    """The preset shortened for demo mode: DEMO_STEPS steps, with samples, checkpoints and validation at the
    same share of the run (at least every DEMO_EVERY steps) and curriculum stages scaled with it."""
    if config.schedule.steps <= DEMO_STEPS:
        return config
    share = DEMO_STEPS / config.schedule.steps

    def every(n: int) -> int:
        return n if n <= 0 else min(max(DEMO_EVERY, round(n * share)), DEMO_STEPS)

    config = config.with_steps(DEMO_STEPS)
    config.sampling.every, config.checkpoints.every = every(config.sampling.every), every(config.checkpoints.every)
    config.data.validation_every = every(config.data.validation_every)
    return config


def advanced_field(section: str, key: str, label: str, value, visible: bool = True):
    """The control for one TrainConfig field, chosen by its type in the schema (choices from its Literal)."""
    import typing

    from blk.train.config import TrainConfig

    kind = TrainConfig.model_fields[section].annotation.model_fields[key].annotation
    if typing.get_origin(kind) is typing.Literal:
        return gr.Dropdown(list(typing.get_args(kind)), value=value, label=label, min_width=120, visible=visible)
    if kind is bool:  # in a row of its own kind, as wide as its label (see .blk-switches in ui/theme.py)
        return gr.Checkbox(value, label=label, min_width=120, visible=visible)
    if key == "init_from":
        return gr.Textbox(value, label=label, placeholder="empty: start from random weights",
                          info="A LoRA file in the workspace (diffusers, kohya or ai-toolkit names); "
                               "for LoKr, a LyCORIS file.", visible=visible)
    if kind is str:
        return gr.Textbox(value, label=label, visible=visible)
    return gr.Number(value, label=label, precision=0 if kind is int else None, min_width=120, visible=visible)


def advanced_position(key: str) -> int:
    """Where an Advanced field sits among the Advanced fields (ADVANCED order)."""
    return [k for _, k, _ in ADVANCED].index(key)


def lokr_factor_shown(kind) -> dict:
    """The LoKr factor control's visibility for an adapter type: the factor splits LoKr's Kronecker product
    and means nothing to a LoRA, so it shows for LoKr only."""
    return gr.update(visible=kind == "lokr")


def form_updates_from_preset(context: StudioContext, name: str) -> tuple:
    """What loading a preset sends to the form: its values, with the LoKr factor shown only for a LoKr preset."""
    values = list(form_from_preset(context, name))
    kind = values[BASIC_FIELDS + advanced_position("kind")]
    factor = BASIC_FIELDS + advanced_position("factor")
    values[factor] = gr.update(value=values[factor], visible=kind == "lokr")
    return tuple(values)


def gpu_count() -> int:
    """CUDA GPUs on this machine, asked without loading torch (the GPUs field shows only when there are several)."""
    from blk.models.device import cuda_device_count

    return cuda_device_count()


def config_from_form(context: StudioContext, preset, dataset, model, resolutions, rank, alpha, optimizer, lr, steps,
                     schedule, prompts, sample_every, checkpoint_every, keep, validation_images, validation_every,
                     gpus=1, *advanced):
    """The preset with the form's values on top, validated (UserError with one sentence otherwise).
    `advanced` holds the Advanced fields' values in ADVANCED order; fields left out keep the preset's."""
    from pydantic import ValidationError

    from blk.errors import UserError
    from blk.train.config import TrainConfig, load_config
    from blk.yaml_io import first_error

    context.workspace.named_dataset(dataset)  # confined to the workspace, and it exists
    numbers = dict(rank=rank, alpha=alpha, lr=lr, steps=steps, sample_every=sample_every,
                   checkpoint_every=checkpoint_every, keep=keep, validation_images=validation_images,
                   validation_every=validation_every, gpus=gpus)
    for name, value in numbers.items():  # a field cleared by hand sends None (said as a Python error, naming none)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise UserError(f"{LABELS[NUMBER_FIELDS[name]]} is empty: give it a number.")
    try:
        base = load_config(PRESETS / f"{preset}.yaml") if preset else TrainConfig()
        data = base.model_dump()
        if not (model or "").strip():  # a dropdown cleared by hand sends nothing
            raise UserError("Choose a base model.")
        data["model"].update(name=model.strip())
        data["data"].update(dataset=dataset, resolutions=[int(r) for r in resolutions.replace(",", " ").split()],
                            validation_images=int(validation_images), validation_every=int(validation_every))
        data["adapter"].update(rank=int(rank), alpha=float(alpha))
        data["optimizer"].update(name=optimizer, lr=float(lr))
        data["schedule"].update(lr_schedule=schedule, gpus=int(gpus))
        data["sampling"].update(prompts=[p.strip() for p in prompts.splitlines() if p.strip()], every=int(sample_every))
        data["checkpoints"].update(every=int(checkpoint_every), keep=int(keep))
        for (section, key, _), value in zip(ADVANCED, advanced):  # the schema checks them (types, ranges, choices)
            data[section][key] = value.strip() if isinstance(value, str) else value
        if data["adapter"]["init_from"]:  # a file inside the workspace (or an allowed folder), as an absolute path
            start_from = context.workspace.confine(data["adapter"]["init_from"])
            if not start_from.is_file():
                raise UserError(f"There is no LoRA file at {data['adapter']['init_from']} to start from.")
            data["adapter"]["init_from"] = str(start_from)
        if context.demo and data["sampling"]["size"] > 256:
            data["sampling"].update(size=64, steps=2)
        return TrainConfig.model_validate(data).with_steps(int(steps))  # curriculum stages scale with the steps
    except ValidationError as exc:
        raise UserError(first_error(exc, LABELS)) from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"A number in the form is not valid ({exc}).") from None


def stages_note(preset, config) -> str:
    """A sentence when the form's step count moved the preset's curriculum stage starts or its warmup; else ''."""
    from blk.train.config import load_config

    if not preset:
        return ""
    before = load_config(PRESETS / f"{preset}.yaml")
    note = ""
    old = [s.start for s in before.data.stages]
    new = [s.start for s in config.data.stages]
    if old != new:
        note += (f" The curriculum stages were scaled to {config.schedule.steps} steps: they start at steps "
                 f"{', '.join(map(str, new))} (the preset's {', '.join(map(str, old))} of "
                 f"{before.schedule.steps}).")
    if before.schedule.warmup_steps != config.schedule.warmup_steps:
        note += (f" The warmup was scaled with the run: {config.schedule.warmup_steps} of "
                 f"{config.schedule.steps} steps (the preset's {before.schedule.warmup_steps} of "
                 f"{before.schedule.steps}).")
    return note


def start(context: StudioContext, preset, dataset, *form):
    from blk.errors import UserError
    from blk.train.process import start_run

    try:
        config = config_from_form(context, preset, dataset, *form)
        refuse_while_training(context)
        left_out = left_out_note(context, dataset)  # scanned first, so the trainer finds the scan cached
        other_family = family_note(context, preset, config)  # before the trainer starts: a failure here is Start's
        folder = start_run(config, context.workspace, name=f"{preset or 'run'}-{dataset}")
    except UserError as exc:
        return gr.update(), f"**{exc}**"
    freed = context.release_gpu("the training run")  # once it starts (its model loads in seconds, not at once)
    return (gr.Dropdown(choices=run_names(context), value=folder.name),
            f"Started {folder.name}." + (f" {freed}" if freed else "") + stages_note(preset, config)
            + other_family + left_out)


def family_note(context: StudioContext, preset, config) -> str:
    """A sentence when the Base model is of the other family than the preset's (its values were chosen for that
    one); '' otherwise."""
    from blk.train.config import load_config
    from blk.train.process import other_family_notice

    notice = other_family_notice(load_config(PRESETS / f"{preset}.yaml"), config.model.name, context.workspace) \
        if preset else ""
    return f" {notice}" if notice else ""


def refuse_while_training(context: StudioContext) -> None:
    """One run at a time: a second Start (a double click, or a new run while one trains) ran two trainers on one
    GPU's memory, the first one out of sight in the Run list; nor beside Estimate's probe (a separate listener,
    or another window), which then measured both. The command line can still start more."""
    from blk.errors import UserError
    from blk.train.process import list_runs, probe_running

    live = [info for info in list_runs(context.workspace) if info.status in LIVE]
    if live:
        raise UserError(f"{live[0].name} is still training (step {live[0].step} of {live[0].steps}): stop it, or "
                        "wait for it to finish, before starting another run.")
    if probe_running(context.workspace):
        raise UserError("An estimate is running (it loads the model and trains a few steps): wait for its answer "
                        "before starting, resuming or estimating a run.")


def left_out_note(context: StudioContext, dataset: str, shown: int = 5) -> str:
    """The files the run leaves out, unreadable or too small, one sentence each (the first few), so the artist
    learns before the loss plot why fewer images train than the folder holds (a damaged file was said only in
    the trainer's log)."""
    from blk.train.data import left_out_images

    sentences = left_out_images(context.workspace.named_dataset(dataset))
    more = len(sentences) - shown
    return "".join(f"  \n{s}" for s in sentences[:shown]) + (f"  \n…and {more} more like them." if more > 0 else "")


def estimate(context: StudioContext, preset, dataset, *form):
    """A short probe in a child process. Yields status lines."""
    from blk.errors import UserError
    from blk.train.process import check_dataset, probe_in_child

    try:
        config = config_from_form(context, preset, dataset, *form)
        refuse_while_training(context)  # the probe beside a live run measured both and said "will not fit"
        check_dataset(config, context.workspace)  # what Start refuses, said as Start says it, before a model loads
    except UserError as exc:
        yield f"**{exc}**"
        return
    note = stages_note(preset, config)
    freed = context.release_gpu("the probe")
    yield "Probing a few steps with these settings (the model loads first)…" + (f" {freed}" if freed else "") + note
    fits, sentence = probe_in_child(config, context.workspace)
    yield (sentence if fits else f"**{sentence}**") + note


def _folder(context: StudioContext, name: str) -> Path:
    from blk.train.process import run_folder

    return run_folder(context.workspace, name)


def control(context: StudioContext, name: str, action: str, to_step=None) -> str:
    """Stop, kill, sample now or resume the chosen run; `to_step` (resume only) trains it on to that step — a
    finished run longer, a stopped one further than it was set to go."""
    from blk.errors import UserError
    from blk.train.process import (kill_run, request_samples, resume_run, resume_target_problem, run_info,
                                   saved_config, shortened_sentence, stop_run)
    from blk.train.runner import saved_step

    if not name:
        return "Choose a run."
    try:
        folder = _folder(context, name)
        if action == "sample":
            return request_samples(folder)
        if action == "stop":
            return stop_run(folder)
        if action == "kill":
            return kill_run(folder)
        info = run_info(folder)
        start = saved_step(folder)  # its last checkpoint: after a kill, the events go further
        target = int(to_step or 0)
        if target < 0:
            return "“Resume to step” is a step number: 0 (the run's own steps) or more."
        if target and (problem := resume_target_problem(name, start, info.status == "finished", info.steps,
                                                         target, "“Resume to step”", logged=info.step)):
            return problem.replace("leave it out", "set it to 0")
        if info.status == "finished" and not target:  # a resume would load the last checkpoint and end at once
            return (f"{name} already trained all its {info.steps} steps: to train it longer, set “Resume to step” "
                    f"above {info.steps} and click Resume.")
        refuse_while_training(context)  # another run: one at a time on the GPU, as Start
        config = saved_config(folder)
        shortened = shortened_sentence(config, target) if target and config else ""
        regrouped = resume_run(context.workspace, folder, steps=target or None)  # a sentence on other GPUs
        going = f" to step {target}" if target else ""
        again = f" (steps {start + 1}–{info.step} are trained again)" if info.step > start else ""
        where = f"its checkpoint at step {start}" if again and start else f"step {start}"
        return " ".join(part for part in (f"Resuming {name} from {where}{going}{again}…", shortened, regrouped)
                        if part)
    except UserError as exc:
        return f"**{exc}**"


LIVE = ("running", "starting")  # a trainer process exists: it can be stopped, killed or asked for samples


def control_buttons(context: StudioContext, name: str):
    """Stop, Kill, Resume and Sample now as the chosen run allows: Stop, Kill and Sample now act only on a live
    trainer, so they are greyed otherwise, and Kill is red only while there is something to kill. Resume is
    greyed while the trainer runs and clickable on a finished run: with "Resume to step" it trains it longer."""
    from blk.errors import UserError
    from blk.train.process import live_elsewhere, run_info

    try:
        status = run_info(_folder(context, name)).status if name else None
    except UserError:  # a name outside the runs folder, or a run removed: nothing to act on
        status = None
    live = status in LIVE
    resumable = status is not None and not live and not live_elsewhere(context.workspace, name)
    return (gr.Button(interactive=live), gr.Button(interactive=live, variant="stop" if live else "secondary"),
            gr.Button(interactive=resumable), gr.Button(interactive=live))


# The loss plot's lines, each always in its colour (a validation line appearing later shifts none of them).
SERIES_COLOURS = {"loss": "#93b5e1", "smoothed": "#1f4e9c", "validation": "#e07b28"}
# The x axis spans at least this many steps, so that its ticks fall on whole steps: Vega asks for about one tick
# per 40 px, and under 0.71 steps a tick it steps by halves, so 20 steps stay whole on plots up to 1130 px wide
# (30, before, stretched a 20-step run's axis to 30).
WHOLE_STEPS = 20


def step_span(total: int, last: int) -> list[int]:
    """The plots' x range: the whole run from step 0 (the line grows towards its end), and never so few steps
    that the axis ticks would fall between steps (1.2, 1.4, …)."""
    return [0, max(total, last, WHOLE_STEPS)]


def watch(context: StudioContext, name: str, log_scale: bool):
    """The loss and learning-rate plots, status line, samples and checkpoints of one run."""
    import pandas as pd

    from blk.errors import UserError
    from blk.timespan import duration
    from blk.train.monitor import view_run
    from blk.train.process import run_info, trainer_log_tail

    def loss_frame(steps, values, series):
        # No data is None, never an empty frame: after an empty frame, Gradio 6's LinePlot draws
        # no coloured lines for later data (seen with this app's timer updates).
        if not steps:
            return None
        return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "loss": pd.Series(values, dtype="float64"),
                             "series": pd.Series(series, dtype="str")})

    def plots(loss, lr, span, adaptive=False):
        return (gr.LinePlot(value=loss, x_lim=span, y_title=loss_axis(log_scale)),
                gr.LinePlot(value=lr, x_lim=span, y_title=lr_axis(adaptive)))

    if not name:
        return (*plots(None, None, step_span(0, 0)), "No run selected.", [], "")
    try:
        folder = _folder(context, name)
    except UserError as exc:  # a run removed, or a name that is no run: said at every tick, not raised
        return (*plots(None, None, step_span(0, 0)), f"**{exc}**", [], "")
    info = run_info(folder)
    view = view_run(folder, info.steps)
    series = ["loss"] * len(view.steps) + ["smoothed"] * len(view.steps) + ["validation"] * len(view.eval_steps)
    loss = loss_frame(view.steps * 2 + view.eval_steps, view.loss + view.smoothed + view.eval_loss, series)
    if log_scale and loss is not None:
        import numpy as np

        loss["loss"] = np.log10(loss["loss"].clip(lower=1e-12))
    lr = pd.DataFrame({"step": view.steps, "lr": view.lr}) if view.steps else None
    running = info.status == "running"  # a stopped, finished or killed run has no time left to tell
    eta = f", about {duration(view.eta_seconds)} left" if view.eta_seconds and running else ""
    memory = f", GPU memory {view.gpu_memory / 2**30:.1f} GB peak" if view.gpu_memory else ""
    stage = f", {view.stage}" if view.stage else ""
    # the speed is of a run that trains: while a trainer loads (a start or a resume) it was the last attempt's, and
    # an ended run has none
    pace = {"starting": "loading the model, ", "running": f"{view.steps_per_second:.2f} steps/s, "}.get(info.status, "")
    status = (f"**{info.status}** — step {info.step} of {info.steps}{stage}, {pace}"
              f"{duration(view.elapsed_seconds)} elapsed{eta}{memory}.")
    for notice in view.notices:
        status += f"  \n{notice}"
    said = f"{info.status} at step {info.step}"  # the status line says that already
    if view.message and info.status in ("error", "stopped", "killed") and view.message != said:
        status += f"  \n{view.message}"
    if info.status == "error":
        tail = trainer_log_tail(folder, 5)
        last = tail.splitlines()[-1] if tail else ""
        # the log's last line, unless it is the command line's "error: " and the reason said just above
        if "error:" in tail and last.removeprefix("error: ").strip() != view.message.strip():
            status += f"  \n`{last}`"
    checkpoints = checkpoint_list(view.checkpoints)
    return (*plots(loss, lr, step_span(info.steps, info.step), view.adaptive), status, view.samples, checkpoints)


def checkpoint_list(checkpoints: list[tuple[int, str]]) -> str:
    """The run's checkpoints: their folder once (to copy into ComfyUI or Forge), then a short line per step; the
    full path on every line made 16 lines of the same long folder."""
    if not checkpoints:
        return "No checkpoint yet."
    folders = {str(Path(path).parent) for _, path in checkpoints}
    if len(folders) > 1:
        return "\n".join(f"- step {step}: `{path}`" for step, path in checkpoints)
    # the folder on a line of its own and last: a colon after it went to a line of its own in a narrow window
    return f"Checkpoints, in the folder  \n`{folders.pop()}`\n\n" + "\n".join(
        f"- step {step}: `{Path(path).name}`" for step, path in checkpoints)


def lr_axis(adaptive: bool) -> str:
    """Prodigy keeps lr at 1.0 and adapts d: its plot shows the rate it steps at, d·lr, and says so — briefly:
    the title runs up the 160 px plot's side, where "learning rate (Prodigy: d·lr)" was cut."""
    return "d·lr (Prodigy)" if adaptive else "learning rate"


# What a button said, and the statuses after which it is history (cleared by the timer, not left to mislead).
SETTLED = {"Stopping ": ("stopped", "finished", "error", "killed"),
           "Resuming ": ("finished", "stopped", "error", "killed"),
           "Samples of ": ("finished", "stopped", "error", "killed")}


def settled_note(context: StudioContext, name: str, note: str):
    """The note under the run's buttons, cleared once what it announced is over ("Stopping … after its current
    step…" once stopped; "Resuming …" once the resumed trainer has ended); other notes stay."""
    from blk.train.process import run_info

    begins = next((start for start in SETTLED if (note or "").startswith(start)), None)
    if not name or begins is None:
        return gr.update()
    try:
        folder = _folder(context, name)
        status = run_info(folder).status
    except Exception:  # noqa: BLE001  (a run folder removed meanwhile: the note is history too)
        return ""
    if status in SETTLED[begins] or (begins == "Samples of " and _samples_served(folder, note)):
        return ""
    return gr.update()


def _samples_served(folder: Path, note: str) -> bool:
    """Whether the samples "Sample now" announced for "(step N)" are in (a sample event at step N or later)."""
    from blk.train.runner import EventLog

    match = re.search(r"\(step (\d+)\)", note)
    if not match:
        return False
    asked = int(match.group(1))
    return any(e["kind"] == "sample" and e["step"] >= asked for e in EventLog(folder / "events.jsonl").read())


def loss_axis(log_scale: bool) -> str:
    """The loss plot's y title: the plot has no log axis, so log scale plots log₁₀ of the loss and says so."""
    return "log₁₀ loss" if log_scale else "loss"


def toggle_log_scale(context: StudioContext, name: str, log_scale: bool):
    """The run redrawn at once in the chosen scale, with the loss axis titled to match (not on the next tick)."""
    return watch(context, name, log_scale)


def step_choices(context: StudioContext, name: str, known):
    """The step chooser's choices (steps with samples or checkpoints); unchanged ones are not sent again,
    so a timer tick never disturbs an open dropdown. Returns (dropdown update, choices)."""
    from blk.errors import UserError
    from blk.train.monitor import view_run

    choices = []
    try:
        view = view_run(_folder(context, name), 0) if name else None
    except UserError:  # no such run (`watch` says so)
        view = None
    if view is not None:
        for step in view.chosen_steps():
            at = view.at_step(step)
            label = f"step {step}" + (" · samples" if at.samples else "") + \
                (" · checkpoint" if at.checkpoint else " · checkpoint pruned" if at.pruned else "")
            choices.append((label, step))
    if choices == known:
        return gr.update(), known
    return gr.Dropdown(choices=choices), choices


def show_step(context: StudioContext, name: str, step):
    """One step's samples and its checkpoint file (or why there is none)."""
    from blk.errors import UserError
    from blk.train.config import load_config
    from blk.train.monitor import view_run

    if not name or step is None or step == "":
        return [], ""
    try:
        folder = _folder(context, name)
    except UserError as exc:
        return [], str(exc)
    at = view_run(folder, 0).at_step(int(step))
    if at.checkpoint:
        text = f"Checkpoint of step {at.step}: `{at.checkpoint}`"
    elif at.pruned:
        try:
            keep = f"only the newest {load_config(folder / 'config.yaml').checkpoints.keep} are kept"
        except Exception:  # noqa: BLE001  (a damaged config only shortens the sentence)
            keep = "only the newest are kept"
        text = (f"The checkpoint of step {at.step} was pruned ({keep}; pin a step in the Review tab, or raise "
                f"“Keep newest”, to keep it).")
    else:
        text = f"No checkpoint was saved at step {at.step}."
    if not at.samples:
        text += " No samples at this step."
    return at.samples, text


def step_checkpoint(context: StudioContext, name: str, step) -> str:
    """The checkpoint file of the chosen step, for "Try in Sketch"; UserError with why there is none (the step
    info above the button already says which: pruned, or never saved)."""
    from blk.errors import UserError
    from blk.train.monitor import view_run

    if not name or step is None or step == "":
        raise UserError("Choose a step with a checkpoint first.")
    at = view_run(_folder(context, name), 0).at_step(int(step))
    if not at.checkpoint:
        raise UserError(f"Step {at.step} has no checkpoint to try (see above).")
    return at.checkpoint


def step_near(choices, selected) -> int | None:
    """The chooser's step nearest the middle of a range dragged across the loss plot ([x0, x1])."""
    steps = [value for _, value in choices or []]
    if not steps or not selected:
        return None
    middle = sum(selected) / len(selected) if isinstance(selected, (list, tuple)) else float(selected)
    return min(steps, key=lambda step: abs(step - middle))


def step_of_sample(selected) -> int | None:
    """The step of a sample clicked in the gallery, read from its caption ("step 10: a cube"), which stays right
    while newer samples push it along the gallery (its index would not); "step 13 (Sample now): …" too."""
    caption = selected.get("caption") if isinstance(selected, dict) else None
    match = re.match(r"step (\d+)( \([^)]*\))?:", caption or "")
    return int(match.group(1)) if match else None


def pick_sample(context: StudioContext, name: str, known, selected):
    """A sample clicked in the gallery chooses its step (choices refreshed when the timer has not caught up)."""
    step = step_of_sample(selected)
    if step is None or not name:
        return gr.update(), known
    if step not in [value for _, value in known or []]:
        _, known = step_choices(context, name, None)
        if step not in [value for _, value in known]:
            return gr.update(), known
    return gr.Dropdown(choices=known, value=step), known


def preselected_run(context: StudioContext) -> str | None:
    """The run a freshly loaded page shows: the newest one still running, else the newest one."""
    from blk.train.process import list_runs

    runs = list_runs(context.workspace)
    live = [r for r in runs if r.status in ("running", "starting")]
    return (live or runs)[0].name if runs else None


def on_load(context: StudioContext):
    """After a browser refresh the run list is fresh and a run is chosen, so its plot shows without a click."""
    return gr.Dropdown(choices=run_names(context), value=preselected_run(context))


def prompts_for_dataset(context: StudioContext, name, text: str, previous: str):
    """(the sample prompts, the trigger word now in them) after choosing a dataset or a preset: prompts that
    start with `previous` (the preset's word, "blkstyle", or the last dataset's) start with this dataset's
    trigger word (its caption style's) instead, so the samples show what the LoRA learns. Prompts the artist
    wrote themselves stay as written."""
    from blk.data.trigger import all_start_with, style_trigger, with_trigger
    from blk.errors import UserError

    try:
        trigger = style_trigger(context.workspace.named_dataset(name)) if name else ""
    except UserError:
        trigger = ""
    lines = (text or "").splitlines()
    rewritten = with_trigger(lines, trigger, previous)
    if rewritten != lines:
        return gr.update(value="\n".join(rewritten)), trigger
    return gr.update(), trigger if trigger and all_start_with(lines, trigger) else previous


def preset_trigger(text: str) -> str:
    """The word a preset's sample prompts start with ("blkstyle"), which a dataset's trigger replaces."""
    from blk.data.trigger import leading_word

    return leading_word((text or "").splitlines()) or ""


def build(context: StudioContext, datasets) -> dict:
    default = "conceptor-flux-dev" if "conceptor-flux-dev" in preset_names() else None
    initial = form_from_preset(context, default)
    with gr.Row():
        with gr.Column(scale=2):
            preset = gr.Dropdown(preset_names(), label="Preset (the paper's settings)", value=default)
            # none chosen until the artist (or Caption's choice, on opening the tab) chooses: a first dataset chosen
            # silently sent no change, so its trigger word never reached the sample prompts
            dataset = gr.Dropdown(datasets(), value=None, label="Dataset", allow_custom_value=True)
            # the models found here (of the right kind), or any name or path typed in; a preset sets its own
            model = gr.Dropdown(context.base_models(), value=initial[0], label="Base model", allow_custom_value=True)
            resolutions = gr.Textbox(initial[1], label="Bucket sizes (px)")
            with gr.Row():
                rank = gr.Number(initial[2], label="Rank", precision=0)
                alpha = gr.Number(initial[3], label="Alpha")
            with gr.Row():
                optimizer = gr.Dropdown(["prodigy", "adamw", "adamw8bit"], value=initial[4], label="Optimizer")
                lr = gr.Number(initial[5], label="Learning rate")
            with gr.Row():
                steps = gr.Number(initial[6], label="Steps", precision=0)
                schedule = gr.Dropdown(["constant", "cosine", "polynomial"], value=initial[7], label="Schedule")
            prompts = gr.Textbox(initial[8], label="Sample prompts (one per line)", lines=3)
            with gr.Row():
                sample_every = gr.Number(initial[9], label="Samples every N steps", precision=0)
                checkpoint_every = gr.Number(initial[10], label="Checkpoint every N steps", precision=0)
                keep = gr.Number(initial[11], label="Keep newest", precision=0)
            with gr.Row():
                validation_images = gr.Number(initial[12], label="Validation images (held out)", precision=0)
                validation_every = gr.Number(initial[13], label="Validation loss every N steps", precision=0)
            gpus_here = gpu_count()
            gpus = gr.Number(initial[14], label=f"GPUs (data parallel, of {gpus_here})", precision=0, minimum=1,
                             maximum=max(gpus_here, 1), visible=gpus_here > 1, elem_id="blk-train-gpus",
                             info="Each GPU trains its own micro-batches and they sum their gradients: a step "
                                  "sees GPUs × the batch in about the time one GPU takes for one.")
            with gr.Accordion("Advanced", open=False, elem_id="blk-train-advanced"):
                lokr = initial[BASIC_FIELDS + advanced_position("kind")] == "lokr"
                made = {}
                for row in ADVANCED_ROWS:
                    switches = all(isinstance(initial[BASIC_FIELDS + advanced_position(key)], bool) for key in row)
                    with gr.Row(elem_classes=["blk-switches"] if switches else None):
                        for key in row:
                            section, _, label = ADVANCED[advanced_position(key)]
                            value = initial[BASIC_FIELDS + advanced_position(key)]
                            made[key] = advanced_field(section, key, label, value, visible=key != "factor" or lokr)
                advanced = [made[key] for _, key, _ in ADVANCED]  # the form's order, not the layout's
            with gr.Row():
                probe_button = gr.Button("Estimate time and memory")
                start_button = gr.Button("Start training", variant="primary")
            note = gr.Markdown()
        with gr.Column(scale=3):
            with gr.Row():
                run = gr.Dropdown(run_names(context), label="Run", scale=4, allow_custom_value=True,
                                  elem_classes="blk-run-name")
                refresh = gr.Button("↻", size="sm", scale=0, min_width=40)
            status = gr.Markdown()
            resume_to = gr.Number(0, label="Resume to step (0: the run's own steps; more trains it longer)",
                                  precision=0, elem_id="blk-resume-to")  # a negative one: a sentence
            with gr.Row():
                # greyed until a run is chosen, then as it allows (`control_buttons`)
                stop = gr.Button("Stop (save and end)", size="sm", interactive=False)
                kill = gr.Button("Kill", size="sm", interactive=False)
                resume = gr.Button("Resume", size="sm", interactive=False)
                sample_now = gr.Button("Sample now", size="sm", interactive=False)  # the sample prompts, this step
            control_note = gr.Markdown(elem_id="blk-run-note")  # what the buttons above say, under them
            log_scale = gr.Checkbox(label="Log scale")
            # No label above the plots: Gradio sizes the chart to `height` and the label pushes its legend and
            # x title out of the box; the y titles name them instead.
            loss_plot = gr.LinePlot(x="step", y="loss", color="series", label="Loss", show_label=False, height=260,
                                    y_title=loss_axis(False), color_title="", color_map=SERIES_COLOURS,
                                    x_lim=step_span(0, 0), elem_id="blk-loss-plot")
            # 1e-5 in d3's short exponent form: fixed decimals drew a Prodigy curve's start as "0.000"
            lr_plot = gr.LinePlot(x="step", y="lr", label="Learning rate", show_label=False, height=160,
                                  y_title="learning rate", x_lim=step_span(0, 0), y_axis_format=".2~e",
                                  elem_id="blk-lr-plot")
            samples = gr.Gallery(label="Samples (newest first)", columns=4, height="auto", elem_id="blk-samples",
                                 elem_classes=["blk-thumbs"])
            checkpoints = gr.Markdown()
            gr.Markdown("**A step** — choose one, click a sample above, or drag across the loss plot near it:")
            step_choice = gr.Dropdown([], label="Step", elem_id="blk-step", value=None)
            step_samples = gr.Gallery(label="Samples at this step", columns=4, height=280, object_fit="contain",
                                      elem_id="blk-step-samples", elem_classes=["blk-thumbs"])
            step_info = gr.Markdown(elem_id="blk-step-info")
            with gr.Row():
                to_sketch = gr.Button("Try this checkpoint in Sketch", size="sm", scale=0, min_width=240,
                                      elem_id="blk-step-to-sketch")
                to_sketch_note = gr.Markdown()
            known_steps = gr.State([])

    form = [model, resolutions, rank, alpha, optimizer, lr, steps, schedule, prompts, sample_every,
            checkpoint_every, keep, validation_images, validation_every, gpus,
            *advanced]  # new fields last: API callers may omit them
    prompt_trigger = gr.State(preset_trigger(initial[8]))  # the trigger word the sample prompts start with
    # on the artist's choice of an option only (`select`): a preset put back by form memory must not reset the
    # kept form, nor may opening the list and leaving it (`input` fired then, and Steps went back to the preset's)
    preset.select(lambda p: form_updates_from_preset(context, p), inputs=preset, outputs=form
                  ).then(lambda n, t: prompts_for_dataset(context, n, t, preset_trigger(t)), inputs=[dataset, prompts],
                         outputs=[prompts, prompt_trigger], show_progress="hidden")
    dataset.change(lambda n, t, last: prompts_for_dataset(context, n, t, last), inputs=[dataset, prompts,
                   prompt_trigger], outputs=[prompts, prompt_trigger], show_progress="hidden")
    # the form as the artist left it, back after a reload or an app restart (this browser only)
    remember_form(context, "blk-train-form", {"preset": preset, "dataset": dataset,
                                              **dict(zip(FORM_MEMORY_NAMES, form[:BASIC_FIELDS])),
                                              **{key: field for (_, key, _), field in zip(ADVANCED, advanced)}})
    adapter_kind = advanced[advanced_position("kind")]
    adapter_kind.change(lokr_factor_shown, inputs=adapter_kind, outputs=advanced[advanced_position("factor")],
                        show_progress="hidden")
    start_button.click(lambda *a: start(context, *a), inputs=[preset, dataset] + form, outputs=[run, note],
                       api_name="train_start")
    probe_button.click(lambda *a: (yield from estimate(context, *a)), inputs=[preset, dataset] + form, outputs=note,
                       api_name="train_estimate")
    refresh.click(lambda: (gr.Dropdown(choices=run_names(context)), gr.Dropdown(choices=datasets())),
                  outputs=[run, dataset])
    for button, action in ((stop, "stop"), (kill, "kill"), (sample_now, "sample")):
        button.click(lambda n, action=action: control(context, n, action), inputs=run, outputs=control_note)
    resume.click(lambda n, to: control(context, n, "resume", to), inputs=[run, resume_to], outputs=control_note)
    shown = [loss_plot, lr_plot, status, samples, checkpoints]
    timer = gr.Timer(2.0)
    timer.tick(lambda n, s: watch(context, n, s), inputs=[run, log_scale], outputs=shown, api_name="train_watch",
               show_progress="hidden")
    run.change(lambda n, s: watch(context, n, s), inputs=[run, log_scale], outputs=shown)
    log_scale.change(lambda n, s: toggle_log_scale(context, n, s), inputs=[run, log_scale], outputs=shown,
                     show_progress="hidden")
    timer.tick(lambda n, k: step_choices(context, n, k), inputs=[run, known_steps], outputs=[step_choice, known_steps],
               show_progress="hidden")
    timer.tick(lambda n, note: settled_note(context, n, note), inputs=[run, control_note], outputs=control_note,
               show_progress="hidden")
    controls = [stop, kill, resume, sample_now]
    timer.tick(lambda n: control_buttons(context, n), inputs=run, outputs=controls, show_progress="hidden")
    run.change(lambda n: control_buttons(context, n), inputs=run, outputs=controls, show_progress="hidden")
    def new_run(name):
        _, choices = step_choices(context, name, None)
        return gr.Dropdown(choices=choices, value=None), choices, [], ""

    run.change(new_run, inputs=run, outputs=[step_choice, known_steps, step_samples, step_info])
    # another run's note would mislead, and its “Resume to step” would train this run to that step
    run.change(lambda: ("", 0), outputs=[control_note, resume_to], show_progress="hidden")
    step_choice.change(lambda n, step: show_step(context, n, step), inputs=[run, step_choice],
                       outputs=[step_samples, step_info])

    def pick_from_plot(known, selection: gr.SelectData):
        step = step_near(known, selection.value)
        return gr.update() if step is None else gr.Dropdown(value=step)

    loss_plot.select(pick_from_plot, inputs=known_steps, outputs=step_choice)

    def pick_from_gallery(name, known, selection: gr.SelectData):
        return pick_sample(context, name, known, selection.value)

    samples.select(pick_from_gallery, inputs=[run, known_steps], outputs=[step_choice, known_steps])
    gr.on(None, lambda: on_load(context), outputs=run, show_progress="hidden")  # no triggers: on each page load
    on_show = (lambda: (gr.Dropdown(choices=datasets()), gr.Dropdown(choices=run_names(context)),
                        gr.Dropdown(choices=context.base_models())), [dataset, run, model])
    step_choice.change(lambda: "", outputs=to_sketch_note, show_progress="hidden")  # another step: history
    return {"on_show": on_show, "dataset": dataset, "run": run, "step": step_choice, "to_sketch": to_sketch,
            "to_sketch_note": to_sketch_note}
