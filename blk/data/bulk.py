"""Bulk caption edits with a preview before anything is written, and undo.

Every bulk edit is first a list of `Change`s (image, before, after, the hash it
starts from) that the curator can read. Applying writes each change through the
caption store (conflict-checked, history source `bulk`) and records the action
in `.blk/bulk-actions.jsonl`, so that `undo` can put back what it replaced —
except where someone changed a caption since, which is left alone and reported.
Undo puts back the status too (a machine caption stays machine, an approved one
approved, no caption no caption); the history records it as a `restore`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blk import atomic
from blk.data.captions import CaptionStore, bytes_hash, version_status
from blk.data.scan import meta_dir
from blk.errors import CaptionConflict, UserError


@dataclass(frozen=True)
class Change:
    image: str
    before: str
    after: str
    base_hash: str


@dataclass
class BulkResult:
    action_id: str
    applied: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unapproved: list[str] = field(default_factory=list)  # approved before, "edited" now: to be checked again


def _changes(store: CaptionStore, images: list[str], edit) -> list[Change]:
    changes = []
    for image in images:
        caption = store.read(image)
        after = edit(caption.text)
        if after != caption.text:
            changes.append(Change(image, caption.text, after, caption.hash))
    return changes


def preview_replace(store: CaptionStore, images: list[str], find: str, replace: str, regex: bool = False,
                    ignore_case: bool = False) -> list[Change]:
    if not find:
        raise UserError("Type what to find first.")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        pattern = re.compile(find if regex else re.escape(find), flags)
    except re.error as exc:
        raise UserError(f"The pattern {find!r} is not a valid regular expression ({exc}).") from None
    if not regex:
        replace = replace.replace("\\", "\\\\")  # plain text: no group references
    try:
        return _changes(store, images, lambda text: pattern.sub(replace, text))
    except (re.error, IndexError) as exc:
        raise UserError(f"The replacement {replace!r} does not fit the pattern ({exc}).") from None


def preview_affix(store: CaptionStore, images: list[str], prefix: str = "", suffix: str = "") -> list[Change]:
    def edit(text: str) -> str:
        if prefix and not text.startswith(prefix):
            text = prefix + text
        if suffix and not text.endswith(suffix):
            text = text + suffix
        return text

    return _changes(store, images, edit)


def preview_trigger(store: CaptionStore, images: list[str], trigger: str, add: bool = True) -> list[Change]:
    """Add the trigger word as the first token (`trigger, …`) or remove it wherever it stands."""
    trigger = trigger.strip()
    if not trigger:
        raise UserError("Type the trigger word first.")
    word = re.compile(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)[,;:]?\s*", re.IGNORECASE)

    def edit(text: str) -> str:
        if add:
            return text if word.search(text) else (f"{trigger}, {text}" if text else trigger)
        # only a caption that has the word changes: one without it (an imported file's final newline and all)
        # is left as it is, and keeps its status
        return word.sub("", text).strip() if word.search(text) else text

    return _changes(store, images, edit)


class BulkLog:
    """Applies previews and keeps what each bulk action replaced, for undo."""

    def __init__(self, dataset: str | Path):
        self.store = CaptionStore(dataset)
        self.path = meta_dir(Path(dataset).resolve()) / "bulk-actions.jsonl"

    def apply(self, changes: list[Change], label: str) -> BulkResult:
        result = BulkResult(uuid.uuid4().hex[:12])
        done = []
        statuses = {image: status for image, (_, status) in self.store.snapshot([c.image for c in changes]).items()}
        for change in changes:
            try:
                self.store.save(change.image, change.after, change.base_hash, source="bulk")
                result.applied.append(change.image)
                done.append({**asdict(change), "before_status": statuses[change.image]})
                if statuses[change.image] == "approved":
                    result.unapproved.append(change.image)
            except CaptionConflict:
                result.conflicts.append(change.image)
        entry = {"id": result.action_id, "t": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": label, "changes": done}
        atomic.append_line(self.path, json.dumps(entry, ensure_ascii=False))
        return result

    def actions(self) -> list[dict]:
        return atomic.read_jsonl(self.path)

    def undo(self, action_id: str | None = None) -> BulkResult:
        """Put back what an action (default: the last one not undone) replaced."""
        actions = self.actions()
        undone = {a["undoes"] for a in actions if "undoes" in a}
        candidates = [a for a in actions if "undoes" not in a and a["id"] not in undone]
        if action_id:
            candidates = [a for a in candidates if a["id"] == action_id]
        if not candidates:
            raise UserError("There is no bulk action to undo.")
        action = candidates[-1]
        result = BulkResult(uuid.uuid4().hex[:12])
        for change in action["changes"]:
            current = self.store.read(change["image"])
            if current.text != change["after"]:
                result.conflicts.append(change["image"])  # changed since: leave the newer text
                continue
            status = change.get("before_status") or self._status_before(change)
            if status == "none":  # there was no caption file: back to none (the history keeps the text)
                self.store.remove(change["image"], current.hash)
            else:
                self.store.save(change["image"], change["before"], current.hash, source="restore", status=status)
            result.applied.append(change["image"])
        entry = {"id": result.action_id, "t": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "label": f"undo {action['label']}", "undoes": action["id"], "changes": []}
        atomic.append_line(self.path, json.dumps(entry, ensure_ascii=False))
        return result

    def _status_before(self, change: dict) -> str:
        """For actions logged without `before_status`: the newest status the history gave the old text."""
        if not change["base_hash"]:
            return "none"
        text_hash = bytes_hash(change["before"].encode("utf-8"))
        for entry in reversed(self.store.versions(change["image"])):
            if not entry.get("conflict") and not entry.get("removed") and entry.get("sha256") == text_hash:
                return version_status(entry)
        return "edited"
