"""Before a run: a short probe that measures seconds per step and peak memory for these settings.

It runs the real recipe for a few steps in a throwaway run folder (model load,
caches, optimizer and all), every step at the dataset's largest bucket size,
then extrapolates the total time and says whether the peak memory fits the
device, so a long run does not fail an hour in. (The time is then the worst
case: a dataset of mostly smaller images trains faster.) A probe
that runs out of memory is the plainest answer: "will not fit", naming the
settings to change.

What a run does besides its steps is measured too, once each at the probe's
last step: a round of samples (with the first prompt only, then counted for
all of them), a validation, a checkpoint. Their time is added for as many
rounds as the run will make, and their memory is in the peak: at 1024 px a
FLUX.1 sample's VAE decode can need more than a training step.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from dataclasses import dataclass

from blk.train.config import TrainConfig
from blk.timespan import duration
from blk.workspace import Workspace

PROBE_STEPS = 4
HEADROOM = 0.9  # warn above this share of the device's memory


@dataclass(frozen=True)
class Estimate:
    seconds_per_step: float
    total_seconds: float
    peak_bytes: int
    device_bytes: int
    device: str
    out_of_memory: str = ""  # the probe itself ran out of memory: the sentence naming what to change
    tips: str = "an int8 base, gradient checkpointing, smaller bucket sizes or a lower rank"  # `memory_tips`
    extra_seconds: float = 0.0  # of `total_seconds`: samples, validation and checkpoints (`overheads`)

    @property
    def fits(self) -> bool:
        return not self.out_of_memory and self.peak_bytes <= HEADROOM * self.device_bytes

    def sentence(self, steps: int) -> str:
        if self.out_of_memory:
            return f"This will not fit: {self.out_of_memory}"
        memory = f"peak memory {self.peak_bytes / 2**30:.1f} GB of {self.device_bytes / 2**30:.0f} GB on {self.device}"
        warning = "" if self.fits else f" — this will not fit: try {self.tips}"
        span = duration(self.total_seconds)  # as the Train tab's status line says it
        extra = f" ({duration(self.extra_seconds)} of it samples, validation and checkpoints)" \
            if self.extra_seconds >= 1 else ""
        return f"About {self.seconds_per_step:.2f} s/step, {span} for {steps} steps{extra}; {memory}{warning}."


def probe(config: TrainConfig, workspace: Workspace, steps: int = PROBE_STEPS) -> Estimate:
    import torch

    from blk.errors import UserError
    from blk.models.device import is_out_of_memory, pick_device
    from blk.train.runner import EventLog, memory_tips, run

    trial = config.model_copy(deep=True)
    trial.schedule.steps = steps
    trial.sampling.prompts = config.sampling.prompts[:1]  # one prompt shows a round's memory and time per prompt
    trial.sampling.every = steps if config.sampling.every else 0  # at step 0 (the baseline: warm-up) and the last
    trial.data.validation_every = steps if config.data.validation_every else 0
    trial.checkpoints.every = steps
    device = pick_device(workspace.settings.device)
    folder = tempfile.mkdtemp(prefix=".probe-", dir=workspace.runs)
    try:
        if device.startswith("cuda"):
            torch.zeros(1, device=device)  # the allocator exists only after a first allocation: reset needs it
            torch.cuda.reset_peak_memory_stats(device)
        out_of_memory = ""
        try:
            run(trial, workspace, folder, largest_only=True)  # the run's most memory and its slowest steps
        except Exception as exc:  # noqa: BLE001  (out of memory outside the steps, e.g. loading the model)
            if not is_out_of_memory(exc):
                raise
            out_of_memory = "before its first step"
        events = EventLog(os.path.join(folder, "events.jsonl")).read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    losses = [e for e in events if e["kind"] == "loss"]
    errors = [e for e in events if e["kind"] == "error"]
    if errors and not out_of_memory and errors[-1].get("reason") == "out_of_memory":
        out_of_memory = f"at step {errors[-1]['step'] + 1}"
    if errors and errors[-1].get("reason") == "not_finite":  # after a first loss too: such a run does not "fit"
        raise UserError(f"The probe's training stopped: {errors[-1].get('cause', 'a loss that is not finite')}; "
                        "lower the learning rate (optimizer.lr).")
    skipped = [e for e in events if e["kind"] == "notice" and e.get("reason") == "out_of_memory"]
    if skipped and not out_of_memory:  # the run skips such samples and goes on; for the probe it is the answer
        return Estimate(0.0, 0.0, 0, 0, device, f"the probe's samples ran out of memory on {device} at "
                        f"{config.sampling.size} px; lower the sample size (sampling.size).")
    peak, total = _memory(device)
    # the run resets the GPU's peak after each step (its events carry each step's own): the largest of those
    peak = max([peak] + [event.get("gpu_memory", 0) for event in losses])
    if out_of_memory:
        return Estimate(0.0, 0.0, peak, total, device,
                        f"the probe ran out of memory on {device} {out_of_memory}; try {memory_tips(config)}.")
    if not losses:  # it failed otherwise before a step (e.g. a NaN loss at once): that sentence is the answer
        raise UserError(errors[-1]["message"] if errors else "The probe ended before its first step.")
    timed = losses[1:] if len(losses) > 2 else losses  # the first step pays for warm-up and caching
    per_step = (timed[-1]["t"] - timed[0]["t"]) / max(len(timed) - 1, 1)
    extra = sum(seconds * count for seconds, count in overheads(config, events, steps))
    return Estimate(per_step, per_step * config.schedule.steps + extra, peak, total, device,
                    tips=memory_tips(config), extra_seconds=extra)


def overheads(config: TrainConfig, events: list[dict], probe_steps: int) -> list[tuple[float, int]]:
    """(seconds each, how many the run makes) of its samples, validations and checkpoints, from the probe's
    last step: each event's time since the one before it (they follow its loss in that order). A sample round
    of the probe drew the first prompt only: the run's rounds draw them all."""
    last = [event for event in events if event["step"] == probe_steps and event["kind"] != "status"]
    took = {later["kind"]: later["t"] - earlier["t"] for earlier, later in zip(last, last[1:])}
    steps = config.schedule.steps
    rounds = {
        "sample": 1 + steps // config.sampling.every if config.sampling.every else 0,
        "eval": 1 + steps // config.data.validation_every if config.data.validation_every else 0,
        "checkpoint": steps // config.checkpoints.every + (1 if steps % config.checkpoints.every else 0),
    }
    per_round = {"sample": len(config.sampling.prompts)}
    return [(took[kind] * per_round.get(kind, 1), count) for kind, count in rounds.items() if kind in took]


def _memory(device: str) -> tuple[int, int]:
    """(peak bytes used so far, the device's bytes): the GPU's allocator, or this process's RSS and the RAM."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
