"""The curators' grid, engine side: rows of a dataset filtered, sorted and paged.

The UI shows one page at a time, so a dataset of thousands of images stays
responsive: a query reads the scan index, the captions and the history once,
and token counts are cached per caption text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from blk.data.captions import CaptionStore
from blk.data.scan import scan
from blk.data.word_stats import has_term, normalize_term
from blk.errors import UserError

SortKey = Literal["name", "status", "tokens", "length"]


@dataclass(frozen=True)
class GridRow:
    image: str
    caption: str
    status: str  # none | machine | edited | approved
    hash: str  # the caption file's hash when read: saves are checked against it
    tokens: tuple[int, ...]  # per text encoder, in the counter's order
    over_budget: bool
    drift: str = ""  # how the caption drifts from the few-shot examples (asked for with status "drifting")


@dataclass(frozen=True)
class GridQuery:
    status: str = "all"  # all | none | machine | edited | approved | drifting (from the few-shot examples)
    text: str = ""
    regex: bool = False
    sort: SortKey = "name"
    descending: bool = False
    page: int = 1
    page_size: int = 50
    term: str = ""  # a word, tag or phrase: only captions containing it, by blk.data.word_stats's rule


@dataclass(frozen=True)
class GridPage:
    rows: list[GridRow]
    total: int  # rows matching the query
    pages: int
    page: int
    counts: dict[str, int]  # images per status, whole dataset
    note: str = ""  # why a filter shows nothing that it could (no few-shot examples to drift from)


class TokenCounter:
    """Caption token counts per text encoder, with the model's own tokenizers; cached by text."""

    def __init__(self, tokenizers: list[tuple[str, object, int]]):
        self.encoders = tokenizers  # (label, tokenizer, budget)
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def labels(self) -> list[str]:
        return [f"{label} (/{budget})" for label, _, budget in self.encoders]

    def count(self, text: str) -> tuple[int, ...]:
        if text not in self._cache:
            self._cache[text] = tuple(len(tok(text, truncation=False).input_ids) if text else 0
                                      for _, tok, _ in self.encoders)
        return self._cache[text]

    def over(self, counts: tuple[int, ...]) -> bool:
        return any(n > budget for n, (_, _, budget) in zip(counts, self.encoders))


def query_grid(dataset: str | Path, query: GridQuery, counter: TokenCounter | None = None) -> GridPage:
    dataset = Path(dataset).resolve()
    images = [r.rel for r in scan(dataset) if r.ok]
    snapshot = CaptionStore(dataset).snapshot(images)
    counts: dict[str, int] = {}
    for _, status in snapshot.values():
        counts[status] = counts.get(status, 0) + 1
    matcher = _matcher(query)
    term = normalize_term(query.term)
    drifting = query.status == "drifting"
    judge = _drift_judge(dataset) if drifting else None
    rows = []
    for image in images:
        caption, status = snapshot[image]
        drift = judge(image, caption.text) if judge else ""
        if (drifting and not drift) or (not drifting and query.status != "all" and status != query.status):
            continue
        if matcher and not (matcher(caption.text) or matcher(image)):
            continue
        if term and not has_term(caption.text, term):
            continue
        tokens = counter.count(caption.text) if counter else ()
        rows.append(GridRow(image, caption.text, status, caption.hash, tokens, bool(counter and counter.over(tokens)),
                            drift))
    order = {"none": 0, "machine": 1, "edited": 2, "approved": 3}
    keys = {
        "name": lambda r: r.image.lower(),
        "status": lambda r: (order.get(r.status, 9), r.image.lower()),
        "tokens": lambda r: (max(r.tokens) if r.tokens else len(r.caption), r.image.lower()),
        "length": lambda r: (len(r.caption), r.image.lower()),
    }
    rows.sort(key=keys[query.sort], reverse=query.descending)
    size = max(1, query.page_size)
    pages = max(1, -(-len(rows) // size))
    page = min(max(1, query.page), pages)
    note = "The caption style has no few-shot examples, so no caption can drift from them." \
        if drifting and judge is None else ""
    return GridPage(rows[(page - 1) * size: page * size], len(rows), pages, page, counts, note)


def _drift_judge(dataset: Path):
    """(image, caption) → how it drifts from the dataset's few-shot examples ("" when it does not), or None
    when the style has no examples (or cannot be read): `blk.data.drift`'s rules, as the dataset check says."""
    from blk.caption.style import dataset_style
    from blk.data.drift import drift_basis, drift_reasons

    try:
        style = dataset_style(dataset)
    except UserError:
        return None
    trigger = style.post.trigger.strip() or None
    basis = drift_basis([e.caption for e in style.examples], style.post.strip_openings, trigger)
    if basis is None:
        return None
    examples = {e.image for e in style.examples}
    return lambda image, text: "" if image in examples or not text.strip() else \
        "; ".join(drift_reasons(text, basis, trigger))


def _matcher(query: GridQuery):
    if not query.text:
        return None
    if query.regex:
        try:
            pattern = re.compile(query.text, re.IGNORECASE)
        except re.error as exc:
            raise UserError(f"The filter {query.text!r} is not a valid regular expression ({exc}).") from None
        return lambda text: pattern.search(text) is not None
    needle = query.text.lower()
    return lambda text: needle in text.lower()


def model_token_counter(workspace, model_name: str | None = None) -> TokenCounter:
    """Token counter with the tokenizers of a model (default: the first found, else tiny-flux)."""
    from blk.data.check import encoder_budgets
    from blk.models.registry import default_model, resolve
    from blk.models.tokenizers import load_tokenizers

    model = resolve(model_name or default_model(workspace)[0], workspace)
    budgets = encoder_budgets(model.family, model.name)
    loaded = load_tokenizers(model, [b.subfolder for b in budgets])
    return TokenCounter([(b.name, loaded[b.subfolder], b.limit) for b in budgets])
