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


SEARCH_LIMIT = 20_000  # directory entries looked at per allowed folder when a LoRA is searched for by name


def find_lora(workspace: Workspace, reference: str | None, sha256: str | None,
              size: int | None = None) -> Path | None:
    """The LoRA file an output PNG names, on this machine, or None.

    Its workspace path first (or, from older PNGs, an absolute path inside the allowed folders), when the file
    there still has the PNG's sha256. Else a file with that hash among the LoRAs the studio lists and the
    files of that name in the allowed folders (moved, renamed, or a copy in models/loras). Only files of the
    same name or, when the PNG says it (`size`), of the same size are hashed: a missing LoRA must not hash every
    checkpoint of every run. A PNG without a hash trusts its path."""
    from blk.errors import UserError
    from blk.models.pipelines import lora_sha256

    def matches(path: Path) -> bool:
        return not sha256 or lora_sha256(path) == sha256

    name = Path(reference).name if isinstance(reference, str) and reference else ""
    if name:
        try:
            named = workspace.confine(reference)
        except (UserError, OSError, ValueError):  # outside the allowed folders, or no path at all
            named = None
        if named is not None and named.is_file() and named.suffix == ".safetensors" and matches(named):
            return named
    if not (isinstance(sha256, str) and sha256):
        return None
    candidates = [path for _, path in available_loras(workspace)] + _named_in_allowed_folders(workspace, name)
    for path in dict.fromkeys(candidates):  # each file once, in the order found
        try:
            worth_hashing = path.name == name or (size is not None and path.stat().st_size == size)
        except OSError:
            continue
        if worth_hashing and lora_sha256(path) == sha256:
            return path
    return None


def _named_in_allowed_folders(workspace: Workspace, name: str) -> list[Path]:
    """Files called `name` in the folders allowed besides the workspace (a LoRA kept in /data/loras), looking
    at no more than `SEARCH_LIMIT` entries in each: an allowed folder may be a whole disk."""
    import os

    if not name.endswith(".safetensors"):
        return []
    found = []
    for root in workspace.allowed_roots()[1:]:
        seen = 0
        for folder, folders, files in os.walk(root):
            folders[:] = [f for f in folders if not f.startswith(".")]
            seen += len(folders) + len(files)
            if name in files:
                found.append(Path(folder) / name)
            if seen > SEARCH_LIMIT:
                break
    return found
