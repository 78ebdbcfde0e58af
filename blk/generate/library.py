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


def lora_reference(workspace: Workspace, path: Path) -> str:
    """How an output PNG names a LoRA file: its path inside the workspace (runs/RUN/checkpoints/step-….safetensors),
    else its file name alone. Never the folders of the artist's machine: an image travels, and an absolute path
    tells who made it where (a user name). `find_lora` finds the file again, by this name or by its hash."""
    from blk.workspace import is_within

    resolved, root = Path(path).resolve(), workspace.root.resolve()
    return resolved.relative_to(root).as_posix() if is_within(resolved, root) else resolved.name


def find_lora(workspace: Workspace, reference: str | None, sha256: str | None) -> Path | None:
    """The LoRA file an output PNG names, on this machine, or None.

    Its workspace path first (or, from older PNGs, an absolute path inside the allowed folders), when the file
    there still has the PNG's sha256; else any LoRA the studio lists with that hash (moved, renamed, or a copy
    in models/loras). A PNG without a hash trusts its path."""
    from blk.errors import UserError
    from blk.models.pipelines import lora_sha256

    def matches(path: Path) -> bool:
        return not sha256 or lora_sha256(path) == sha256

    if isinstance(reference, str) and reference:
        try:
            named = workspace.confine(reference)
        except (UserError, OSError, ValueError):  # outside the allowed folders, or no path at all
            named = None
        if named is not None and named.is_file() and named.suffix == ".safetensors" and matches(named):
            return named
    if isinstance(sha256, str) and sha256:
        return next((path for _, path in available_loras(workspace) if lora_sha256(path) == sha256), None)
    return None
