"""What the Train tab shows of a run, computed from its `events.jsonl` (no UI code here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from blk.train.runner import EventLog

SMOOTHING = 0.9  # exponential moving average of the loss


@dataclass
class RunView:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)  # validation loss on held-out images
    steps_per_second: float = 0.0
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0  # time spent training: the attempts' spans, not the pauses between them
    adaptive: bool = False  # the optimizer adapts its step size (Prodigy): `lr` holds d·lr
    samples: list[tuple[str, str]] = field(default_factory=list)  # (path, label) newest first
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    message: str = ""  # the last error or status sentence
    gpu_memory: int = 0  # peak bytes allocated on the GPU so far (0 on a CPU)
    stage: str = ""  # the curriculum stage now active, if any
    samples_by_step: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # step -> (path, label)
    written: dict[int, str] = field(default_factory=dict)  # every checkpoint written, pruned ones included
    notices: list[str] = field(default_factory=list)  # the current attempt's `notice` sentences (e.g. plain AdamW)

    def chosen_steps(self) -> list[int]:
        """The steps worth looking at: those with samples or a checkpoint (kept or pruned)."""
        return sorted(set(self.samples_by_step) | set(self.written))

    def at_step(self, step: int) -> StepView:
        path = self.written.get(step)
        kept = path is not None and Path(path).exists()
        return StepView(step, self.samples_by_step.get(step, []), path if kept else None, path is not None and not kept)


@dataclass
class StepView:
    """One step of a run: its samples and its checkpoint, if one was written (and whether it was pruned since)."""
    step: int
    samples: list[tuple[str, str]]
    checkpoint: str | None  # the file, while it exists
    pruned: bool  # written, then deleted to keep only the newest checkpoints


def continuous(events: list[dict]) -> list[dict]:
    """The events as one unbroken run: a resume at step k continues from the checkpoint of step k, so what the
    attempt before it logged after step k (losses up to the kill, their samples and evals) is dropped — the
    resumed attempt logs those steps again, and a plot must not show them twice. A run started again from
    nothing (killed before its first checkpoint) keeps nothing of the attempt before: it logs step 0 again."""
    kept: list[dict] = []
    for event in events:
        if event["kind"] == "status" and event.get("status") == "resumed":
            kept = [e for e in kept if e["step"] <= event["step"]]
        elif event["kind"] == "status" and event.get("status") == "started":
            kept = [e for e in kept if e["step"] < event["step"]]
        kept.append(event)
    return kept


def attempts(events: list[dict]) -> list[list[dict]]:
    """The events of each trainer that ran, from its start or resume to the status it ended with. What comes
    between an end and the next start is no training time: e.g. the error of a resume that failed while
    loading, written before any "resumed" (`runner._record_failure`). A resume begins at its `launch` event,
    so a resume that fails while loading after a killed attempt (no end written) is an attempt of its own."""
    split: list[list[dict]] = []
    running = launched = False
    for event in events:
        status = event.get("status") if event["kind"] == "status" else None
        begun = status in ("started", "resumed")
        if event["kind"] == "launch" or (begun and not launched) or not (split or running):
            split.append([])
            running = True
        if event["kind"] == "launch":
            launched = True  # its "resumed" (if loading succeeds) continues this attempt
        elif begun:
            launched = False
        if running:
            split[-1].append(event)
        if status in ("stopped", "finished", "error"):
            running = False
    return split


def current_attempt(events: list[dict]) -> list[dict]:
    """The events since the last trainer started or resumed: only its errors say how the run stands now."""
    starts = [i for i, e in enumerate(events) if e["kind"] == "status" and e.get("status") in ("started", "resumed")]
    return events[starts[-1]:] if starts else events


def view_run(folder: Path, total_steps: int) -> RunView:
    logged = EventLog(folder / "events.jsonl").read()
    events = continuous(logged)
    view = RunView()
    average = None
    for event in events:
        kind = event["kind"]
        if kind == "loss":
            average = event["loss"] if average is None else SMOOTHING * average + (1 - SMOOTHING) * event["loss"]
            view.steps.append(event["step"])
            view.loss.append(event["loss"])
            view.smoothed.append(average)
            view.lr.append(event.get("lr", 0.0))
            view.adaptive = view.adaptive or "d" in event
            view.gpu_memory = max(view.gpu_memory, event.get("gpu_memory", 0))
        elif kind == "eval":
            view.eval_steps.append(event["step"])
            view.eval_loss.append(event["loss"])
        elif kind == "sample":
            when = f"step {event['step']}" + (" (Sample now)" if event.get("asked") else "")
            shown = [(str(folder / path), f"{when}: {event['prompts'][index]}")
                     for index, path in enumerate(event.get("paths", []))]
            view.samples[:0] = reversed(shown)
            view.samples_by_step[event["step"]] = shown  # a step sampled again (after a resume): the newest
        elif kind == "stage":
            view.stage = f"stage {event['stage']}" + (f" ({event['name']})" if event.get("name") else "")
        elif kind == "checkpoint":
            view.checkpoints.append((event["step"], str(folder / event["path"])))
            view.written[event["step"]] = str(folder / event["path"])
        elif kind == "error":
            view.message = event["message"]
        elif kind == "notice":
            view.notices.append(event["message"])
        elif kind == "status" and event["status"] in ("started", "resumed"):
            view.message = ""  # an earlier attempt's error is history once the run resumed
            view.notices = []
        elif kind == "status" and not view.message:
            view.message = f"{event['status']} at step {event['step']}"
    losses = [e for e in current_attempt(events) if e["kind"] == "loss"]  # a pause between attempts is no speed
    if len(losses) >= 2:
        recent = losses[-min(len(losses), 20):]
        span = recent[-1]["t"] - recent[0]["t"]
        if span > 0:
            view.steps_per_second = (recent[-1]["step"] - recent[0]["step"]) / span
            remaining = total_steps - recent[-1]["step"]
            view.eta_seconds = remaining / view.steps_per_second if remaining > 0 else 0.0
    view.elapsed_seconds = sum(attempt[-1]["t"] - attempt[0]["t"] for attempt in attempts(logged))
    view.checkpoints = [(s, p) for s, p in view.checkpoints if Path(p).exists()]  # pruned ones are gone
    return view
