"""Training items: images with their captions, in aspect buckets, with caption augmentation.

Buckets keep each image's aspect ratio at a chosen area (e.g. 512², 768², 1024²),
in multiples of 64 px, and never upscale. With several areas (multi-resolution
training, as in ai-toolkit and the paper's 512/768/1024), each image is trained
at every area it fills, so a 2048 px image appears three times and a 600 px one
once; an image smaller than every area is trained at its own size rounded down.
An image under 64 px on a side fits no bucket: it is left out, with a sentence.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from blk.data.captions import CaptionStore
from blk.data.scan import scan
from blk.errors import UserError

MULTIPLE = 64


@dataclass(frozen=True)
class Item:
    image: str  # relative to the dataset
    sha256: str
    caption: str
    width: int  # bucket size the image is resized (and centre-cropped) to
    height: int
    flip: bool = False
    root: str = ""  # the folder `image` is relative to, when not the run's dataset (a curriculum's extra folder)
    variant: int = 0  # 0: the image itself; n ≥ 1: its n-th augmented copy (`blk.train.pixels.jitter_for`)


def bucket_size(width: int, height: int, resolutions: list[int]) -> tuple[int, int]:
    """The largest bucket of an image (see `bucket_sizes`)."""
    return bucket_sizes(width, height, resolutions)[0]


def bucket_sizes(width: int, height: int, resolutions: list[int]) -> list[tuple[int, int]]:
    """The buckets an image is trained at, largest first: one per area it fills, at its aspect ratio, in multiples
    of 64; never larger than the image on either side (upscaling would teach the model blur). An image smaller than
    every area gets its own size rounded down; see `too_small` for images under 64 px."""
    if width < MULTIPLE or height < MULTIPLE:
        raise ValueError(f"a {width}×{height} image fits no bucket of {MULTIPLE} px multiples")
    aspect = width / height
    sizes = []
    for side in sorted(resolutions, reverse=True):
        w = max(MULTIPLE, int(side * math.sqrt(aspect)) // MULTIPLE * MULTIPLE)
        h = max(MULTIPLE, int(side / math.sqrt(aspect)) // MULTIPLE * MULTIPLE)
        if w <= width and h <= height and (w, h) not in sizes:
            sizes.append((w, h))
    return sizes or [(width // MULTIPLE * MULTIPLE, height // MULTIPLE * MULTIPLE)]


def too_small(name: str, width: int, height: int) -> str | None:
    """The sentence for an image too small for any bucket (under 64 px on a side), which training leaves out
    rather than upscale; None when it fits."""
    if width >= MULTIPLE and height >= MULTIPLE:
        return None
    return (f"{name} is {width}×{height} px, smaller than the {MULTIPLE} px a training bucket needs on each side, "
            "so training leaves it out.")


def unreadable(dataset: Path, record) -> str:
    """The sentence for a file of the dataset that cannot be read as an image (damaged, cut short, not an image)."""
    return f"{dataset.name}/{record.rel} is left out of training: {record.error}"


def left_out_images(dataset: Path) -> list[str]:
    """One sentence per file of the dataset that training will leave out: unreadable ones, then the images too
    small for a bucket (the scan is cached)."""
    scanned = scan(dataset)
    return [unreadable(dataset, r) for r in scanned if not r.ok] + \
        [s for r in scanned if r.ok and (s := too_small(f"{dataset.name}/{r.rel}", r.width, r.height))]


def load_items(dataset: Path, resolutions: list[int], flip: bool, root: str = "", variants: int = 0) -> list[Item]:
    """Every usable, captioned image (× its buckets, flip and augmented variants); one sentence if there is nothing
    to train on.

    Files that cannot be read and images too small for a bucket are left out, each with a `warning:` line on
    stderr (the trainer's log and the CLI's terminal, like the runner's other notes before training): a run
    on 6 of a dataset's 12 files said nothing of the other 6."""
    from blk.train.distributed import World

    scanned = scan(dataset)
    records = [r for r in scanned if r.ok]
    if not records:
        raise UserError(f"{dataset.name} has no usable images to train on.")
    if World.from_env().is_main:
        for bad in (r for r in scanned if not r.ok):
            print(f"warning: {unreadable(dataset, bad)}", file=sys.stderr, flush=True)
    small = [(r, s) for r in records if (s := too_small(f"{dataset.name}/{r.rel}", r.width, r.height))]
    if len(small) == len(records):
        raise UserError(f"{dataset.name} has no image of at least {MULTIPLE}×{MULTIPLE} px to train on "
                        f"({len(small)} {'is' if len(small) == 1 else 'are'} smaller).")
    if small and World.from_env().is_main:  # the other data-parallel processes say nothing twice
        for _, sentence in small:
            print(f"warning: {sentence}", file=sys.stderr, flush=True)
    left_out = {r.rel for r, _ in small}
    store = CaptionStore(dataset)
    items, missing = [], []
    for record in (r for r in records if r.rel not in left_out):
        caption = store.read(record.rel).text.strip()
        if not caption:
            missing.append(record.rel)
            continue
        for w, h in bucket_sizes(record.width, record.height, resolutions):
            for variant in range(variants + 1):
                for flipped in (False, True) if flip else (False,):
                    items.append(Item(record.rel, record.sha256, caption, w, h, flip=flipped, root=root,
                                      variant=variant))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{len(missing)} image(s) have no caption ({shown}); caption them or move them out first.")
    return items


def augment_caption(caption: str, rng: random.Random, dropout: float, shuffle: bool, keep: int,
                    orders: list[str] | None = None, pinned: str = "") -> str:
    """Caption dropout (empty caption) and shuffling of comma-separated parts after the first `keep`: a new
    order, or one of `orders` (the caption's `shuffled_orders`) when given. `pinned`: the dataset's trigger
    word, which keeps its place wherever it stands (see `_shuffled`)."""
    if dropout and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    if orders:
        return orders[rng.randrange(len(orders))]
    return _shuffled(caption, rng, keep, pinned)


def _shuffled(caption: str, rng: random.Random, keep: int, pinned: str = "") -> str:
    """The parts after the first `keep` in a new order. Empty parts (", , " or a leading comma) are dropped
    before counting, so they never take the place of the trigger among the kept ones; a part that is the
    trigger keeps its place even after the first `keep` (bulk "Add trigger" leaves a caption that already holds
    the word anywhere as it is, so with keep 1 the first tag stayed put and the trigger moved)."""
    parts = [p.strip() for p in caption.split(",") if p.strip()]
    head, tail = parts[:keep], parts[keep:]
    fixed = {k for k, part in enumerate(tail) if pinned and part.lower() == pinned.lower()}
    movable = [part for k, part in enumerate(tail) if k not in fixed]
    rng.shuffle(movable)
    moved = iter(movable)
    return ", ".join(head + [tail[k] if k in fixed else next(moved) for k in range(len(tail))])


def shuffled_orders(caption: str, count: int, keep: int, pinned: str = "") -> list[str]:
    """`count` orders of `caption`'s comma-separated parts after the first `keep` — the caption as written, then
    orders drawn from a generator seeded by the caption's text alone: the same in every run, resume and seed, so
    runs of one dataset share their cached texts (seeded by the run's seed too, each new seed cached ~15 more T5
    texts per caption: 6 GB more per seed for 100 captions); fewer when the parts have fewer distinct orders."""
    import hashlib

    orders, seen = [caption], {", ".join(p.strip() for p in caption.split(",") if p.strip())}  # as `_shuffled` joins
    draws = random.Random(int(hashlib.sha256(caption.encode()).hexdigest()[:12], 16))
    for _ in range(8 * count):  # a caption of few parts has few orders: stop drawing after a while
        if len(orders) >= count:
            break
        order = _shuffled(caption, draws, keep, pinned)
        if order not in seen:
            orders.append(order)
            seen.add(order)
    return orders


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """A reproducible permutation per epoch, so that a resumed run sees the same data order."""
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def bucket_batches(items: list[Item], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's micro-batches (indices into `items`): the epoch's seeded order, grouped by bucket size and cut
    into batches of `batch_size` (a bucket's last batch may be smaller), then the batches in a seeded order of
    their own. Each item comes once an epoch, and a batch is of one size (latents of two sizes do not stack):
    drawing `batch_size` items and keeping those of the first one's size trained 1.4 items a batch of 4 on a
    dataset of three sizes, and skipped two thirds of it each epoch. One item a batch: the epoch's order."""
    order = epoch_order(len(items), seed, epoch)
    if batch_size == 1:
        return [[index] for index in order]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index in order:
        by_size.setdefault((items[index].width, items[index].height), []).append(index)
    batches = [group[k:k + batch_size] for group in by_size.values() for k in range(0, len(group), batch_size)]
    return [batches[k] for k in epoch_order(len(batches), seed + 1, epoch)]


def batch_count(items: list[Item], batch_size: int) -> int:
    """How many micro-batches `bucket_batches` makes of `items` (the same every epoch)."""
    sizes: dict[tuple[int, int], int] = {}
    for item in items:
        sizes[(item.width, item.height)] = sizes.get((item.width, item.height), 0) + 1
    return sum(-(-n // batch_size) for n in sizes.values())


@dataclass
class StagePlan:
    """A curriculum stage with its items: `pools[i]` is drawn with share `fractions[i]`."""
    start: int
    name: str
    labels: list[str]
    pools: list[list[Item]]
    fractions: list[float]


class Curriculum:
    """Which items each step draws, stage by stage (the paper's Stencil: singles → + pairs → + triples).

    Within a stage the sources take turns by smooth weighted round robin, so each
    gets exactly its fraction of the micro-batches (no randomness to drift), and each
    source is walked in its own seeded batches of one bucket size, epoch by epoch. Everything is a function of
    the step, so a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, stages: list[StagePlan], seed: int, accumulation: int, batch_size: int):
        self.stages, self.seed = stages, seed
        self.accumulation, self.batch_size = accumulation, batch_size
        self._memo: dict[int, tuple[int, list[float], list[int]]] = {}  # stage -> (slots done, credit, counts)

    def stage_index(self, step: int) -> int:
        """The stage that step `step` (0-based: the step being trained) belongs to."""
        return max(i for i, stage in enumerate(self.stages) if stage.start <= step)

    def _source_of(self, index: int, slot: int) -> tuple[int, int]:
        """(source, how many earlier batches that source gave) for the stage's `slot`-th micro-batch."""
        fractions = self.stages[index].fractions
        done, credit, counts = self._memo.get(index, (0, [0.0] * len(fractions), [0] * len(fractions)))
        if slot < done:
            done, credit, counts = 0, [0.0] * len(fractions), [0] * len(fractions)
        credit, counts = list(credit), list(counts)
        chosen = 0
        while done <= slot:
            credit = [c + f for c, f in zip(credit, fractions)]
            chosen = max(range(len(fractions)), key=lambda i: (credit[i], -i))
            credit[chosen] -= 1.0
            counts[chosen] += 1
            done += 1
        self._memo[index] = (done, credit, counts)
        return chosen, counts[chosen] - 1

    def batch(self, step: int, micro: int) -> list[Item]:
        """The items of one micro-batch: a whole batch of one bucket size (`bucket_batches`) from the source
        whose turn it is."""
        index = self.stage_index(step)
        stage = self.stages[index]
        source, draw = self._source_of(index, (step - stage.start) * self.accumulation + micro)
        pool = stage.pools[source]
        epoch, position = divmod(draw, batch_count(pool, self.batch_size))
        seed = self.seed * 31 + index * 7 + source
        return [pool[i] for i in bucket_batches(pool, self.batch_size, seed, epoch)[position]]
