"""Checkpoints a curator chose to keep: `runs/RUN/pinned.json`, honoured by the runner's pruning.

Pins live in their own file, not in config.yaml, because the curator pins
from the Review tab while the run may still be training: the runner reads
this file at every prune, so a pinned checkpoint survives even then.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

from blk import atomic
from blk.errors import UserError

PINS_FILE = "pinned.json"
CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})\.safetensors$")


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_NAME.match(Path(path).name)
    if not match:
        raise UserError(f"{Path(path).name} is not a run checkpoint (step-NNNNNN.safetensors).")
    return int(match.group(1))


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, file) of the checkpoints a run has on disk now, oldest first."""
    files = sorted((Path(run_dir) / "checkpoints").glob("step-*.safetensors"))
    return [(checkpoint_step(f), f) for f in files if CHECKPOINT_NAME.match(f.name)]


def pinned_steps(run_dir: Path) -> set[int]:
    path = Path(run_dir) / PINS_FILE
    if not path.exists():
        return set()
    try:
        return {int(s) for s in json.loads(path.read_text()).get("steps", [])}
    except (ValueError, TypeError, AttributeError):
        return set()  # a damaged pin file pins nothing; the config's pins still hold


def pin(run_dir: Path, step: int, pinned: bool = True) -> set[int]:
    """Pin (or unpin) one checkpoint of a run; returns the pinned steps."""
    steps = pinned_steps(run_dir)
    checkpoint = Path(run_dir) / "checkpoints" / f"step-{step:06d}.safetensors"
    gone = UserError(f"{Path(run_dir).name} has no checkpoint at step {step} (it may have been pruned).")
    if pinned:
        if not checkpoint.exists():
            raise gone
        steps.add(int(step))
    else:
        steps.discard(int(step))
    atomic.write_json(Path(run_dir) / PINS_FILE, {"steps": sorted(steps)})
    if pinned and not checkpoint.exists():  # pruned by the trainer between the look and the pin: not kept after all
        steps.discard(int(step))
        atomic.write_json(Path(run_dir) / PINS_FILE, {"steps": sorted(steps)})
        raise gone
    return steps


def export_checkpoint(checkpoint: Path, folder: Path, name: str | None = None) -> Path:
    """Copy a checkpoint out under a name that says where it came from: RUN-step-002500.safetensors."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint.name} no longer exists (it may have been pruned).")
    stem = name or f"{checkpoint.parent.parent.name}-{checkpoint.stem}"
    stem = re.sub(r"[^\w.-]+", "-", stem).strip(".-") or "lora"
    target = Path(folder) / (stem if stem.endswith(".safetensors") else f"{stem}.safetensors")
    Path(folder).mkdir(parents=True, exist_ok=True)
    # exported before: the same content is that file (whichever -N it went to); other content (a step rewritten
    # by a resume) goes beside it, never over it
    for number in itertools.count(1):
        candidate = target if number == 1 else target.with_name(f"{target.stem}-{number}{target.suffix}")
        if not candidate.exists():
            target = candidate
            break
        if _same_bytes(candidate, checkpoint):
            return candidate
    with open(checkpoint, "rb") as source, atomic.atomic_open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    return target


def _same_bytes(a: Path, b: Path) -> bool:
    import filecmp

    return filecmp.cmp(a, b, shallow=False)
