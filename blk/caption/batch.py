"""Caption a dataset: bounded concurrent requests, per-image failures listed, a person's work kept.

Which images: `missing` (no caption yet), `all` (everything a model may write:
no caption or a machine caption), or `selected` (a list, same rule). Captions
that a person edited or approved are skipped unless `overwrite` is set. A
re-run skips what is finished. Each result is saved atomically as the sidecar,
with history (source: model). When the server stops answering, the batch ends
early and says so; what was finished is kept.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from blk.caption.postprocess import clean_caption
from blk.caption.prompt import build_messages, count_images, prepare_image
from blk.caption.style import CaptionStyle
from blk.data.captions import CaptionStore
from blk.data.scan import scan
from blk.errors import CaptionConflict, UserError

Mode = Literal["missing", "all", "selected"]
OVERWRITABLE = ("none", "machine")


@dataclass
class BatchResult:
    captioned: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, one sentence)
    not_attempted: list[str] = field(default_factory=list)  # after a cancel or a lost server
    stopped_because: str | None = None
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: list[dict] = field(default_factory=list)  # per image: images sent, token counts

    @property
    def images_per_second(self) -> float:
        return len(self.captioned) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    images_per_second: float
    eta_seconds: float | None


def plan(dataset: Path, mode: Mode = "missing", selected: list[str] | None = None, overwrite: bool = False,
         skip: set[str] = frozenset()) -> tuple[list[str], BatchResult]:
    """Which images to caption; bad files and protected captions go straight into the result."""
    store = CaptionStore(dataset)
    result = BatchResult()
    wanted = set(selected or [])
    todo = []
    for record in scan(dataset):
        if mode == "selected" and record.rel not in wanted:
            continue
        if not record.ok:
            result.failed.append((record.rel, record.error))
            continue
        if record.rel in skip:
            result.skipped.append((record.rel, "it is a few-shot example"))
            continue
        status = store.status(record.rel)
        if mode == "missing" and status != "none":
            result.skipped.append((record.rel, "already captioned"))
        elif status not in OVERWRITABLE and not overwrite:
            result.skipped.append((record.rel, f"{status} by a person"))
        else:
            todo.append(record.rel)
    return todo, result


def caption_dataset(dataset: str | Path, style: CaptionStyle, backend, mode: Mode = "missing",
                    selected: list[str] | None = None, overwrite: bool = False,
                    progress: Callable[[Progress], None] | None = None,
                    cancel: threading.Event | None = None,
                    planned: tuple[list[str], BatchResult] | None = None) -> BatchResult:
    """Caption what `plan` finds to do (or `planned`, its answer already in hand: `job.run` plans before it
    starts a backend, and a plan reads every caption's history)."""
    dataset = Path(dataset).resolve()
    todo, result = planned or plan(dataset, mode, selected, overwrite, skip={e.image for e in style.examples})
    store = CaptionStore(dataset)
    cancel = cancel or threading.Event()
    start = time.perf_counter()
    pending = list(reversed(todo))

    def one(rel: str):
        base = store.read(rel).hash
        messages = build_messages(style, dataset, prepare_image(dataset / rel, style.image_size, style.background))
        answer = backend.caption(messages, style.sampling)
        store.save(rel, clean_caption(answer.text, style.post), base, source="model")
        return answer, messages

    with ThreadPoolExecutor(max_workers=max(1, backend.max_concurrency)) as pool:
        running = {}
        while pending or running:
            while pending and len(running) < backend.max_concurrency and not cancel.is_set():
                rel = pending.pop()
                running[pool.submit(one, rel)] = rel
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                rel = running.pop(future)
                try:
                    answer, messages = future.result()
                except CaptionConflict:
                    result.failed.append((rel, f"{rel}: a person changed the caption meanwhile; theirs is kept."))
                except UserError as exc:
                    result.failed.append((rel, f"{rel}: {exc}"))
                    if "stopped answering" in str(exc) or "No captioning server" in str(exc):
                        result.stopped_because = str(exc)
                        cancel.set()
                else:
                    result.captioned.append(rel)
                    result.prompt_tokens += answer.prompt_tokens
                    result.completion_tokens += answer.completion_tokens
                    result.requests.append({"image": rel, "images_sent": count_images(messages),
                                            "prompt_tokens": answer.prompt_tokens,
                                            "completion_tokens": answer.completion_tokens})
            if progress:
                elapsed = time.perf_counter() - start
                done = len(result.captioned) + len([f for f in result.failed if f[0] in todo])
                rate = len(result.captioned) / elapsed if elapsed > 0 else 0.0
                eta = (len(todo) - done) / rate if rate > 0 else None
                progress(Progress(done, len(todo), rate, eta))
    result.not_attempted = list(reversed(pending))
    if cancel.is_set() and result.stopped_because is None and result.not_attempted:
        result.stopped_because = "Stopped by the user."
    result.seconds = time.perf_counter() - start
    return result
