"""`dataset check`: everything worth knowing before training on a folder.

Counts; bad files with reasons; images without captions; caption token counts
per text encoder, with the chosen model's own tokenizers, and the captions
over budget; exact duplicates (same content hash) and near-duplicates
(perceptual hash); trigger-word coverage; non-UTF-8 captions; captions drifting
from the caption style's few-shot examples (`drift`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blk import atomic
from blk.data import images
from blk.data.captions import CaptionStore
from blk.data.scan import ImageRecord, meta_dir, scan
from blk.data.word_stats import whole_word
from blk.errors import BadImage

NEAR_DUPLICATE_BITS = 6  # pHash Hamming distance (of 64) at or under which images may be near-duplicates
NEAR_DUPLICATE_COLOUR_GAP = 12.0  # and mean colour difference (0-255) of their 4×4 grids at or under this
SIGNATURE_VERSION = 2  # of `.blk/similarity.json`; 2: transparency flattened over the caption background


@dataclass(frozen=True)
class TextEncoderBudget:
    name: str  # e.g. "CLIP-L (tokenizer)"
    subfolder: str
    limit: int


def encoder_budgets(family: str, model_name: str) -> list[TextEncoderBudget]:
    """Token budgets as the pipelines use them (T5 is 256 for schnell, 512 for dev)."""
    if family == "flux":
        t5_limit = 256 if "schnell" in model_name else 512
        return [TextEncoderBudget("CLIP-L", "tokenizer", 77), TextEncoderBudget("T5-XXL", "tokenizer_2", t5_limit)]
    return [TextEncoderBudget("CLIP-L", "tokenizer", 77), TextEncoderBudget("OpenCLIP-bigG", "tokenizer_2", 77)]


@dataclass
class TokenStats:
    encoder: str
    limit: int
    max: int = 0
    mean: float = 0.0
    over_budget: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class CheckReport:
    dataset: str
    model: str
    images: int = 0
    usable: int = 0  # files that decode (bad files are not)
    trainable: int = 0  # usable and big enough for a training bucket (too_small are not)
    blocking_training: list[str] = field(default_factory=list)  # trainable but uncaptioned: the trainer refuses
    captioned: int = 0
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    uncaptioned: list[str] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)  # usable, but under a training bucket's 64 px: left out
    caption_warnings: list[tuple[str, str]] = field(default_factory=list)
    orphan_captions: list[str] = field(default_factory=list)
    unread_files: list[str] = field(default_factory=list)  # neither an image the studio reads nor a caption
    tokens: list[TokenStats] = field(default_factory=list)
    exact_duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    trigger: str | None = None
    trigger_from_style: bool = False  # no word was given: the caption style's was checked
    trigger_missing: list[str] = field(default_factory=list)
    drift_basis: str = ""  # what the few-shot examples look like; empty: the style has none
    drifting: list[tuple[str, str]] = field(default_factory=list)  # (image, how its caption drifts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        lines = [
            f"Dataset {self.dataset} (tokens counted for {self.model})",
            f"  images: {self.images}  usable: {self.usable}  captioned: {self.captioned}  "
            f"trainable: {self.trainable}"
            + (f" ({len(self.too_small)} usable but too small, listed below)" if self.too_small else ""),
        ]
        if not self.images:  # the trainer refuses it: said, not left to a row of zeros
            lines.append("  No images in this folder: add images (PNG, JPEG, WebP, TIFF…) before captioning or "
                         "training.")
        if self.blocking_training:  # the trainer refuses the whole dataset then: said first, not only listed below
            lines.append(f"  Training will not start yet: {len(self.blocking_training)} image(s) have no caption "
                         "(listed below); caption them or move them out first.")

        def section(title, items, fmt):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend("  " + fmt(item) for item in items)

        section("Bad files", self.bad_files, lambda x: x[1])
        section("Images without a caption", self.uncaptioned, str)
        section("Too small to train on (left out)", self.too_small, str)
        section("Caption warnings", self.caption_warnings, lambda x: x[1])
        section("Captions without an image", self.orphan_captions, str)
        section("Files not used (the studio reads PNG, JPEG, WebP, TIFF and BMP)", self.unread_files, str)
        for stats in self.tokens:
            lines.append(f"Tokens, {stats.encoder} (budget {stats.limit}): max {stats.max}, mean {stats.mean:.1f}")
            section(f"  over budget for {stats.encoder}", stats.over_budget, lambda x: f"{x[0]}: {x[1]} tokens")
        section("Exact duplicates", self.exact_duplicates, lambda g: " = ".join(g))
        section("Near-duplicates", self.near_duplicates, lambda x: f"{x[0]} ~ {x[1]} (distance {x[2]})")
        if self.trigger:
            covered = self.captioned - len(self.trigger_missing)
            whose = " (the caption style's)" if self.trigger_from_style else ""
            lines.append(f"Trigger word {self.trigger!r}{whose}: in {covered} of {self.captioned} captions")
            section("  captions without the trigger", self.trigger_missing, str)
        if self.drift_basis:
            section(f"Captions drifting from the few-shot examples ({self.drift_basis})", self.drifting,
                    lambda x: f"{x[0]}: {x[1]}")
        elif self.captioned:
            lines.append("Caption drift: not checked, the caption style has no few-shot examples.")
        # what was looked for and not found, said: a silent report read as "not checked"
        clear = [name for name, items in (
            ("bad files", self.bad_files), ("images without a caption", self.uncaptioned),
            ("captions without an image", self.orphan_captions), ("exact duplicates", self.exact_duplicates),
            ("near-duplicates", self.near_duplicates),
            ("captions over a token budget", [x for stats in self.tokens for x in stats.over_budget]),
            *((("captions drifting from the examples", self.drifting),) if self.drift_basis else ())) if not items]
        if clear and self.images:
            lines.append("None found: " + ", ".join(clear) + ".")
        return "\n".join(lines)


def check_dataset(dataset: str | Path, tokenizers: dict[str, object] | None = None, budgets=(),
                  model_name: str = "", trigger: str | None = None) -> CheckReport:
    """Build the report. `tokenizers` maps a budget's subfolder to a loaded tokenizer. Without a `trigger`
    the caption style's is checked, so the word is set once, where the captions are written."""
    from blk.data.trigger import style_trigger
    from blk.train.data import too_small  # the trainer's own rule for what no bucket can take

    dataset = Path(dataset).resolve()
    records = scan(dataset)
    store = CaptionStore(dataset)
    given = (trigger or "").strip()
    trigger = given or style_trigger(dataset) or None
    report = CheckReport(str(dataset), model_name, images=len(records), trigger=trigger,
                         trigger_from_style=bool(trigger and not given))

    captions: dict[str, str] = {}
    for record in records:
        if not record.ok:
            report.bad_files.append((record.rel, record.error))
            continue
        report.usable += 1
        small = too_small(record.rel, record.width, record.height)
        if small:
            report.too_small.append(f"{record.rel} ({record.width}×{record.height} px)")
        else:
            report.trainable += 1
        caption = store.read(record.rel)
        if caption.warning:
            report.caption_warnings.append((record.caption_rel(), caption.warning))
        if caption.text.strip():
            captions[record.rel] = caption.text
        else:
            report.uncaptioned.append(record.rel)
            if not small:  # the trainer leaves small images out before it asks for captions
                report.blocking_training.append(record.rel)
    report.captioned = len(captions)
    report.orphan_captions = _orphan_captions(dataset, records)
    report.unread_files = _unread_files(dataset)

    for budget in budgets:
        tokenizer = (tokenizers or {}).get(budget.subfolder)
        if tokenizer is not None:
            report.tokens.append(_token_stats(budget, tokenizer, captions))

    usable = [r for r in records if r.ok]
    report.exact_duplicates = _exact_duplicates(usable)
    report.near_duplicates = _near_duplicates(dataset, usable)
    if trigger:
        pattern = whole_word(trigger)  # the Words panel's rule too
        report.trigger_missing = [rel for rel, text in captions.items() if not pattern.search(text)]
    _check_drift(report, dataset, captions, trigger)
    return report


def _check_drift(report: CheckReport, dataset: Path, captions: dict[str, str], trigger: str | None) -> None:
    from blk.caption.style import dataset_style
    from blk.data.drift import drifting_captions
    from blk.errors import UserError

    try:
        style = dataset_style(dataset)
    except UserError:  # a broken style file: the grid and the Caption tab say so; nothing to compare with
        return
    examples = {example.image: example.caption for example in style.examples}
    basis, report.drifting = drifting_captions(captions, examples, style.post.strip_openings,
                                               trigger or style.post.trigger.strip() or None)
    report.drift_basis = basis.describe() if basis else ""


def _token_stats(budget: TextEncoderBudget, tokenizer, captions: dict[str, str]) -> TokenStats:
    stats = TokenStats(budget.name, budget.limit)
    counts = {rel: len(tokenizer(text, truncation=False).input_ids) for rel, text in captions.items()}
    if counts:
        stats.max = max(counts.values())
        stats.mean = sum(counts.values()) / len(counts)
    stats.over_budget = sorted(((rel, n) for rel, n in counts.items() if n > budget.limit), key=lambda x: -x[1])
    return stats


def _orphan_captions(dataset: Path, records: list[ImageRecord]) -> list[str]:
    with_image = {r.caption_rel() for r in records}
    orphans = []
    for path in sorted(dataset.rglob("*.txt")):
        rel = path.relative_to(dataset).as_posix()
        if not any(part.startswith(".") for part in Path(rel).parts) and rel not in with_image:
            orphans.append(rel)
    return orphans


def _unread_files(dataset: Path) -> list[str]:
    """Files the studio passes over (a GIF, a PSD, notes): listed, so that an artist's animated GIFs are not
    silently missing from training."""
    from blk.data.images import IMAGE_EXTENSIONS

    unread = []
    for path in sorted(dataset.rglob("*")):
        rel = path.relative_to(dataset)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) and \
                path.suffix.lower() not in IMAGE_EXTENSIONS | {".txt"}:
            unread.append(rel.as_posix())
    return unread


def _exact_duplicates(records: list[ImageRecord]) -> list[list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for record in records:
        groups[record.sha256].append(record.rel)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _near_duplicates(dataset: Path, records: list[ImageRecord]) -> list[tuple[str, str, int]]:
    """Pairs that look alike: close perceptual hashes *and* close colours.

    pHash sees structure only, so flat or nearly flat images of different
    colours would all match; the 4×4 colour grid keeps them apart. Exact
    duplicates are listed once, not here.
    """
    signatures = _signatures(dataset, records)
    seen_sha: set[str] = set()
    items = []
    for record in records:
        if record.sha256 in seen_sha or record.sha256 not in signatures:
            continue
        seen_sha.add(record.sha256)
        items.append((record.rel, *signatures[record.sha256]))
    pairs = []
    for i, (rel_a, hash_a, colours_a) in enumerate(items):
        for rel_b, hash_b, colours_b in items[i + 1:]:
            distance = (hash_a ^ hash_b).bit_count()
            if distance <= NEAR_DUPLICATE_BITS and _colour_gap(colours_a, colours_b) <= NEAR_DUPLICATE_COLOUR_GAP:
                pairs.append((rel_a, rel_b, distance))
    return pairs


def _colour_gap(a: list[int], b: list[int]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b)) / max(len(a), 1)


def _signatures(dataset: Path, records: list[ImageRecord]) -> dict[str, tuple[int, list[int]]]:
    """(64-bit pHash, 4×4 RGB grid) per content hash, cached in `.blk/similarity.json`.

    Transparent pixels are seen over the default caption background (a neutral grey, whatever a dataset's
    own style says, so that signatures never depend on it) — not black, which would make a drawing on
    transparency match an all-black image."""
    import imagehash
    from PIL import Image

    from blk.caption.prompt import flatten
    from blk.caption.style import CaptionStyle

    background = CaptionStyle().background
    cache_path = meta_dir(dataset) / "similarity.json"
    try:
        saved = json.loads(cache_path.read_text())
        if saved.get("version") != SIGNATURE_VERSION or saved.get("background") != background:
            raise ValueError("signatures made another way")  # e.g. before transparency was flattened: make anew
        cache = {k: (int(v[0], 16), list(v[1])) for k, v in saved["signatures"].items()}
    except (OSError, ValueError, AttributeError, TypeError, IndexError, KeyError):
        cache = {}
    changed = False
    for record in records:
        if record.sha256 in cache:
            continue
        try:
            with images.open_image(dataset / record.rel, preview=256) as im:
                rgb = flatten(im, background)
                rgb.thumbnail((256, 256))
                grid = list(rgb.resize((4, 4), Image.Resampling.BOX).tobytes())
                cache[record.sha256] = (int(str(imagehash.phash(rgb)), 16), grid)
                changed = True
        except BadImage:
            continue
    if changed:
        try:
            atomic.write_json(cache_path, {"version": SIGNATURE_VERSION, "background": background,
                                           "signatures": {k: [format(h, "016x"), g] for k, (h, g) in cache.items()}})
        except OSError:
            pass
    return cache


def check_for_model(dataset: str | Path, workspace, model_name: str | None = None,
                    trigger: str | None = None) -> CheckReport:
    """The whole check as the CLI and the UI run it: token budgets from the model's own tokenizers."""
    from blk.models.registry import default_model, resolve
    from blk.models.tokenizers import load_tokenizers

    model = resolve(model_name or default_model(workspace)[0], workspace)
    budgets = encoder_budgets(model.family, model.name)
    tokenizers = load_tokenizers(model, [b.subfolder for b in budgets])
    return check_dataset(dataset, tokenizers, budgets, model.name, trigger)
