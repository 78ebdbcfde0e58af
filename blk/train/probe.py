"""Before a run: a short probe that measures seconds per step and peak memory for these settings.

It runs the real recipe for a few steps in a throwaway run folder (model load,
caches, optimizer and all), then extrapolates the total time and says whether
the peak memory fits the device, so a long run does not fail an hour in.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from dataclasses import dataclass

from blk.train.config import TrainConfig
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

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= HEADROOM * self.device_bytes

    def sentence(self, steps: int) -> str:
        hours = self.total_seconds / 3600
        span = f"{hours:.1f} h" if hours >= 1 else f"{self.total_seconds / 60:.0f} min"
        memory = f"peak memory {self.peak_bytes / 2**30:.1f} GB of {self.device_bytes / 2**30:.0f} GB on {self.device}"
        warning = "" if self.fits else (" — this will not fit: turn on int8 base and gradient checkpointing, "
                                        "lower the bucket sizes, or lower the rank")
        return f"About {self.seconds_per_step:.2f} s/step, {span} for {steps} steps; {memory}{warning}."


def probe(config: TrainConfig, workspace: Workspace, steps: int = PROBE_STEPS) -> Estimate:
    import torch

    from blk.models.device import pick_device
    from blk.train.runner import EventLog, run

    trial = config.model_copy(deep=True)
    trial.schedule.steps = steps
    trial.sampling.every = 0
    trial.data.validation_every = 0
    trial.checkpoints.every = steps
    device = pick_device(workspace.settings.device)
    folder = tempfile.mkdtemp(prefix=".probe-", dir=workspace.runs)
    try:
        if device.startswith("cuda"):
            torch.zeros(1, device=device)  # the allocator exists only after a first allocation: reset needs it
            torch.cuda.reset_peak_memory_stats(device)
        run(trial, workspace, folder)
        losses = [e for e in EventLog(os.path.join(folder, "events.jsonl")).read() if e["kind"] == "loss"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    timed = losses[1:] if len(losses) > 2 else losses  # the first step pays for warm-up and caching
    per_step = (timed[-1]["t"] - timed[0]["t"]) / max(len(timed) - 1, 1)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated(device)
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Estimate(per_step, per_step * config.schedule.steps, peak, total, device)
