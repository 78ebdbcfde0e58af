"""Atomic file writes: a reader sees the old file or the new one, never half.

Write to a temporary file in the same folder, fsync, then rename over the
target. Temporaries carry a recognisable prefix (`.blk-tmp-`) so that a crash
leaves nothing that looks like a real output, and cleanup can find them. The
file gets the permissions a plain `open()` would give it (0666 less the umask):
`mkstemp` makes it private (0600), which would hide outputs from the studio's
file server, backup user or a second account.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

TEMP_PREFIX = ".blk-tmp-"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, value) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line durably (for append-only logs such as history.jsonl).

    A single `write` of a line in append mode is not torn by other appenders on
    POSIX for reasonable sizes; fsync makes it survive a crash. If a crash left a
    torn last line (no newline), the new line starts on a line of its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.lseek(fd, end - 1, os.SEEK_SET) >= 0 and os.read(fd, 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, which would race
    with files other threads create meanwhile); Linux shows it in /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _read_umask_once() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _read_umask_once()


def sync_folder(folder: str | os.PathLike, files: bool = True) -> None:
    """fsync every file directly in `folder` (unless `files` is False), then the folder itself (its names): before
    a folder written file by file is renamed into place, so a power cut after the rename cannot leave it with
    empty or torn files."""
    folder = Path(folder)
    for path in sorted(folder.iterdir()) if files else ():
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)  # Windows syncs writable handles
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete lines of an append-only JSONL log; a torn last line from a crash is skipped."""
    try:
        # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 … which JSON leaves
        # unescaped inside strings (ensure_ascii=False), and the entry holding them would be lost
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries
