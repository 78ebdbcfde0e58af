"""Sidecar captions (`image.png` → `image.txt`) with conflict checks and a full history.

- Every write is atomic; files are saved as UTF-8 (UTF-16/32 and other encodings are read with a
  warning).
- An edit carries the hash of the file it started from (`base_hash`). If the file
  changed meanwhile, the save is refused with `CaptionConflict` — and the refused
  text still goes into the history, so nothing a curator typed is lost.
- `.blk/history.jsonl` is append-only: one JSON line per version, with time,
  source (`original`, `model`, `human`, `bulk`, `restore`), status and the text.
  Any version can be restored.
- Status of a caption: `machine` (written by a model), `edited` (by a person,
  or found on disk), `approved` (a person signed it off). Model runs never
  overwrite edited or approved captions unless asked.
- A restore (History › Restore, or undoing a bulk edit) puts back the status the
  restored version had — a machine caption stays machine, an approved one stays
  approved — and is itself recorded (source `restore`, `restores`: the version's
  id), so the history still shows that it happened.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from blk import atomic
from blk.data.scan import meta_dir
from blk.errors import CaptionConflict, UnsafePath, UserError
from blk.workspace import is_within

SOURCES = ("original", "model", "human", "bulk", "restore")
STATUSES = ("none", "machine", "edited", "approved")
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


@dataclass(frozen=True)
class Caption:
    image: str  # image path relative to the dataset
    text: str
    hash: str  # sha256 of the file's bytes; "" when there is no caption file
    warning: str | None = None  # e.g. the file was not UTF-8

    @property
    def exists(self) -> bool:
        return self.hash != ""


def bytes_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_caption(data: bytes, name: str) -> tuple[str, str | None]:
    """UTF-8 (BOM allowed); UTF-16 or UTF-32 (Windows Notepad's "Unicode") with a warning, as they are saved as
    UTF-8; failing all, Windows-1252 / Latin-1 with a warning."""
    wide = _decode_wide(data)
    if wide is not None:
        text, encoding = wide
        return text, f"{name} is not UTF-8; it was read as {encoding} and will be saved as UTF-8."
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    for encoding in _FALLBACK_ENCODINGS:
        try:
            text = data.decode(encoding)
            return text, f"{name} is not UTF-8; it was read as {encoding} and will be saved as UTF-8."
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")


_BOMS = ((b"\xff\xfe\x00\x00", "utf-32", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32", "UTF-32"),
         (b"\xff\xfe", "utf-16", "UTF-16"), (b"\xfe\xff", "utf-16", "UTF-16"))  # UTF-32 LE before UTF-16 LE


def _decode_wide(data: bytes) -> tuple[str, str] | None:
    """(text, encoding name) of UTF-32 or UTF-16 text: by its BOM, or UTF-16 without one when NULs fill at least
    half the high bytes and none of the low ones (ASCII as UTF-16 also passes as UTF-8: it was read with a NUL
    after every letter). None otherwise."""
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            with contextlib.suppress(UnicodeDecodeError):
                return data.decode(codec), label
    if len(data) < 2 or len(data) % 2:
        return None
    for high, low, codec in ((data[1::2], data[0::2], "utf-16-le"), (data[0::2], data[1::2], "utf-16-be")):
        if 2 * high.count(0) >= len(high) and low.count(0) == 0:
            with contextlib.suppress(UnicodeDecodeError):
                return data.decode(codec), "UTF-16"
    return None


def _status_of(source: str) -> str:
    return "machine" if source == "model" else "edited"


def version_status(entry: dict) -> str:
    """The status a history entry gave its text (older entries without one: from their source)."""
    return entry.get("status") or _status_of(entry.get("source", "human"))


def version_label(entry: dict) -> str:
    """How the History list names a version: its status (machine / edited / approved, or none for a removed
    caption), with how it came about where that is not plain typing: `machine`, `edited`, `approved`,
    `edited (bulk)`, `edited (found on disk)`, `machine (restored)`, `edited (refused)`."""
    status = version_status(entry)
    how = {"bulk": "bulk", "original": "found on disk", "restore": "restored"}.get(entry.get("source", ""))
    notes = [note for note in (how, "refused" if entry.get("conflict") else None) if note]
    return f"{status} ({', '.join(notes)})" if notes else status


def _status(current: Caption, versions: list[dict]) -> str:
    if not current.exists:
        return "none"
    text_hash = bytes_hash(current.text.encode("utf-8"))
    for entry in reversed(versions):
        if not entry.get("conflict") and not entry.get("removed") and entry.get("sha256") == text_hash:
            return version_status(entry)
    return "edited"  # changed outside the studio: a person's work until shown otherwise


class CaptionStore:
    def __init__(self, dataset: str | Path):
        self.root = Path(dataset).resolve()
        self.history_path = meta_dir(self.root) / "history.jsonl"
        self._lock_path = meta_dir(self.root) / "captions.lock"

    def caption_path(self, image: str) -> Path:
        """The sidecar of an image, refusing anything that escapes the dataset."""
        path = (self.root / image).with_suffix(".txt")
        hidden = any(part.startswith(".") for part in path.relative_to(self.root).parts) \
            if is_within(path, self.root) else True  # .blk/ holds the history and caches, never captions
        if hidden or not is_within(path.resolve(), self.root):
            raise UnsafePath(f"{image} is not an image inside this dataset.")
        return path

    def read(self, image: str) -> Caption:
        path = self.caption_path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return Caption(image, "", "")
        except OSError as exc:
            raise UserError(f"{path.name} cannot be read ({exc.strerror}).") from None
        text, warning = decode_caption(data, path.name)
        return Caption(image, text, bytes_hash(data), warning)

    def save(self, image: str, text: str, base_hash: str, source: str = "human", status: str | None = None,
             restores: str | None = None) -> Caption:
        """Write a new caption if the file still has `base_hash`; else refuse (CaptionConflict).

        `status` overrides the one the source implies (a restore puts back the restored version's);
        `restores` names the history version a restore brings back."""
        if source not in SOURCES:
            raise ValueError(f"unknown caption source {source}")
        if status is not None and status not in STATUSES[1:]:
            raise ValueError(f"unknown caption status {status}")
        with self._locked(), self._disk_full_is_a_sentence(image):
            current = self._check_base(image, base_hash, text, source)
            if current.exists and not self._recorded(image, current.text):
                # keep what was there before the studio (or was written by hand since): not yet in the
                # history, and about to be replaced. Refused (conflict) entries do not count.
                self._append(image, current.text, "original")
            data = text.encode("utf-8")
            # the history first, then the file: a crash between the two leaves a version that never
            # reached the file (harmless: status follows the file's hash), never a file whose text the
            # history lacks (a machine caption would then pass for a person's work)
            self._append(image, text, source, status=status, restores=restores)
            atomic.write_bytes(self.caption_path(image), data)
            return Caption(image, text, bytes_hash(data))

    def remove(self, image: str, base_hash: str, source: str = "restore") -> Caption:
        """Delete the caption file (back to no caption, status none) if it still has `base_hash`.

        The text it held stays in the history (recorded first if it was not), and the removal is recorded
        too, so it can be restored like any version."""
        if source not in SOURCES:
            raise ValueError(f"unknown caption source {source}")
        with self._locked(), self._disk_full_is_a_sentence(image):
            current = self._check_base(image, base_hash, None, source)
            if not current.exists:
                return current
            if not self._recorded(image, current.text):
                self._append(image, current.text, "original")
            self._append(image, "", source, status="none", removed=True)
            with contextlib.suppress(FileNotFoundError):
                self.caption_path(image).unlink()
            return Caption(image, "", "")

    def approve(self, image: str, base_hash: str) -> Caption:
        """Sign off the caption as it is on disk (refused if it changed since `base_hash`)."""
        with self._locked(), self._disk_full_is_a_sentence(image):
            current = self._check_base(image, base_hash, None, "human")
            if not current.exists:
                raise UserError(f"{image} has no caption to approve.")
            self._append(image, current.text, "human", status="approved")
            return current

    def status(self, image: str) -> str:
        """none, machine, edited or approved — from the newest history entry matching the file."""
        return _status(self.read(image), self.versions(image))

    def snapshot(self, images: list[str]) -> dict[str, tuple[Caption, str]]:
        """Caption and status of many images, reading the history once (for the grid)."""
        by_image: dict[str, list[dict]] = {}
        for entry in self._history():
            by_image.setdefault(entry.get("image"), []).append(entry)
        result = {}
        for image in images:
            caption = self.read(image)
            result[image] = (caption, _status(caption, by_image.get(image, [])))
        return result

    def _check_base(self, image: str, base_hash: str, text: str | None, source: str) -> Caption:
        current = self.read(image)
        if current.hash != base_hash:
            if text is not None:
                self._append(image, text, source, conflict=True)
            raise CaptionConflict(image, current.text, text if text is not None else current.text)
        return current

    def versions(self, image: str) -> list[dict]:
        """Every recorded version of one caption, oldest first (refused edits included)."""
        return [entry for entry in self._history() if entry.get("image") == image]

    def restore(self, image: str, version_id: str, base_hash: str) -> Caption:
        for entry in self.versions(image):
            if entry["id"] == version_id:
                if entry.get("removed"):
                    return self.remove(image, base_hash)
                return self.save(image, entry["text"], base_hash, source="restore", status=version_status(entry),
                                 restores=version_id)
        raise UserError(f"No version {version_id} in the history of {image}.")

    # internals ---------------------------------------------------------------
    def _recorded(self, image: str, text: str) -> bool:
        text_hash = bytes_hash(text.encode("utf-8"))
        return any(not entry.get("conflict") and not entry.get("removed") and entry.get("sha256") == text_hash
                   for entry in self.versions(image))

    def _append(self, image: str, text: str, source: str, conflict: bool = False, status: str | None = None,
                restores: str | None = None, removed: bool = False) -> None:
        entry = {
            "id": uuid.uuid4().hex[:12],
            "t": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "image": image,
            "source": source,
            "status": status or _status_of(source),
            "text": text,
            "sha256": bytes_hash(text.encode("utf-8")),
        }
        if conflict:
            entry["conflict"] = True
        if restores:
            entry["restores"] = restores
        if removed:
            entry["removed"] = True  # the caption file was deleted: no caption (status none)
        atomic.append_line(self.history_path, json.dumps(entry, ensure_ascii=False))

    def _history(self) -> list[dict]:
        return atomic.read_jsonl(self.history_path)

    @contextlib.contextmanager
    def _disk_full_is_a_sentence(self, image: str):
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(f"The disk holding {self.root.name} is full: the caption of {image} was not saved "
                            "(the one on disk is unchanged); free some space and save again.") from None

    @contextlib.contextmanager
    def _locked(self):
        """Serialise check-then-write across threads and processes (POSIX advisory lock)."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as handle:
            try:
                import fcntl
            except ImportError:  # Windows: single-process app, the check alone applies
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
