"""LoRA files the studio knows about, for pickers: run checkpoints and the LoRA folders.

Run checkpoints come first, newest run first, so "the LoRA I just trained"
is at the top. Files under `models/loras/` (the artist's own, or from other
tools) and `outputs/loras/` (checkpoints exported from Review) follow.
"""

from __future__ import annotations

from pathlib import Path

from blk.workspace import Workspace


def lora_folders(workspace: Workspace) -> list[Path]:
    return [workspace.models / "loras", workspace.outputs("loras")]


def available_loras(workspace: Workspace) -> list[tuple[str, Path]]:
    """(label, path) pairs: 'RUN/step-000250.safetensors' for checkpoints, the file name otherwise."""
    found: list[tuple[str, Path]] = []
    runs = sorted((p for p in workspace.runs.glob("*/checkpoints") if p.is_dir()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in runs:
        for path in sorted(folder.glob("step-*.safetensors"), reverse=True):
            found.append((f"{folder.parent.name}/{path.name}", path))
    for folder in lora_folders(workspace):
        for path in sorted(folder.glob("*.safetensors")):
            found.append((path.name, path))
    return found
