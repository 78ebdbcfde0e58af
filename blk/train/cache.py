"""Disk caches of VAE latents and text embeddings, under the dataset's `.blk/cache/`.

Keys: content hash + model + bucket size + flip for latents; caption text +
model for text embeddings (the model: `model_key`, its place and its encoders'
files). A second run (or epoch) does not encode again.
Counters say how many encodes really ran (tests read them).

`PixelMemory` is the RAM counterpart for runs without the latent cache: each
image's pixels as the VAE takes them (decoded, cropped, resized, augmented,
flattened, channels first) are made once and kept within a byte budget, so such
a run re-encodes with the VAE every step — its point — and only copies them to
the device.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from blk import atomic


class TensorCache:
    """Values by key on disk. A cache that cannot be written (a read-only dataset, a full disk) is no reason to
    stop a run: `on_unwritable` is told once and nothing more is written. The values are then kept in RAM up
    to `memory_if_unwritable` bytes (None: all of them — the text cache, whose encoders leave once it is
    full; latents: a budget, past which the rest are made again each time they are used)."""

    def __init__(self, folder: Path, enabled: bool = True, on_unwritable=None,
                 memory_if_unwritable: int | None = 0):
        self.folder = folder
        self.enabled = enabled  # off: encode every time, write nothing
        self.hits = 0
        self.misses = 0
        self.on_unwritable = on_unwritable
        self.unwritable: str | None = None  # why writing failed, once it has
        self.memory: dict = {}
        self.memory_budget = memory_if_unwritable  # bytes; None: no limit
        self.memory_used = 0

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def get_or_make(self, key: str, make) -> dict:
        from safetensors.torch import load, save

        if not self.enabled:
            self.misses += 1
            return make()
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        path = self._path(key)
        if path.exists():
            try:
                value = load(path.read_bytes())
                self.hits += 1
                _mark_used(path)
                return value
            except Exception:  # a damaged cache file is simply made again
                pass
        value = {name: tensor.detach().cpu().contiguous() for name, tensor in make().items()}
        self.misses += 1
        if self.unwritable is None:
            try:
                atomic.write_bytes(path, save(value))
            except OSError as exc:
                self.unwritable = exc.strerror or str(exc)
                if self.on_unwritable is not None:
                    self.on_unwritable(f"The cache folder {self.folder} cannot be written ({self.unwritable}), so "
                                       f"training goes on without it: its entries are {self._kept()}")
        if self.unwritable is not None:
            self._keep(key, value)
        return value

    def _kept(self) -> str:
        if self.memory_budget is None:
            return "kept in memory instead"
        if self.memory_budget > 0:
            return (f"kept in memory instead, up to {self.memory_budget / 2**30:.1f} GB (past that, encoded again "
                    "every time they are used)")
        return "encoded again every time they are used"

    def _keep(self, key: str, value: dict) -> None:
        """In RAM within the budget; nothing is evicted (as `PixelMemory`: no access pattern thrashes)."""
        size = sum(t.numel() * t.element_size() for t in value.values())
        if self.memory_budget is None or self.memory_used + size <= self.memory_budget:
            self.memory[key] = value
            self.memory_used += size


UNUSED_DAYS = 30  # cache entries no run has read for this long are removed when a run of the dataset starts


def _mark_used(path: Path) -> None:
    """The entry's time is its last use (`prune_unused` reads it); access times are often not kept."""
    import os

    try:
        os.utime(path)
    except OSError:  # a read-only cache: nothing is pruned there either
        pass


def prune_unused(root: Path, days: float = UNUSED_DAYS) -> tuple[int, int]:
    """Remove the cache files under `root` (a dataset's `.blk/cache/`) that no run has read or written for
    `days`: entries of captions since edited, of settings or models no longer used, of old shuffle orders,
    which otherwise stay for good (gigabytes: a T5 text is ~4 MB). Returns (files, bytes) removed. A run
    that uses an entry marks it, so nothing a running or recent run reads is removed."""
    import time

    cutoff, files, size = time.time() - days * 86400, 0, 0
    for path in root.rglob("*.safetensors") if root.is_dir() else []:
        try:
            info = path.stat()
            if info.st_mtime < cutoff:
                path.unlink()
                files, size = files + 1, size + info.st_size
        except OSError:
            continue
    return files, size


CACHE_SOURCES = ("vae", "text_encoder", "tokenizer")  # a diffusers folder's parts the cached values come from


def model_key(model_path: Path, base: Path | None = None) -> str:
    """The name of a model's cache folder: where the model is, and the size and time of every file the
    cached latents and text embeddings come from (a diffusers folder's VAE, text encoders and tokenizers; a
    single file whole; and its `base` folder's). A model replaced at the same path (a new download, another
    fine-tune saved under the name) encodes again instead of training on the old model's latents. Sizes and
    times, not a hash of the content: that would read tens of GB before every run."""
    digest = hashlib.sha256()
    for root in (model_path, base):
        if root is None:
            continue
        root = Path(root).resolve()
        digest.update(str(root).encode())
        for source in _cache_sources(root):
            stat = source.stat()
            digest.update(f"|{source.relative_to(root) if source != root else ''}:{stat.st_size}:"
                          f"{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _cache_sources(root: Path) -> list[Path]:
    if not root.is_dir():
        return [root] if root.exists() else []
    parts = [part for part in root.iterdir() if part.is_dir() and part.name.startswith(CACHE_SOURCES)]
    return sorted(f for part in (parts or [root]) for f in part.rglob("*") if f.is_file())


class PixelMemory:
    """Arrays kept in RAM by key up to `budget` bytes; past it, values are made every time.

    Nothing is evicted: the first images of a dataset stay, the rest are made on demand,
    so memory never exceeds the budget and no pattern of access thrashes. Callers get a copy
    (a few ms for a 1 MP image): nothing they do can change what the next step reads."""

    def __init__(self, budget: int):
        self.budget, self.used, self.values = max(0, int(budget)), 0, {}
        self.hits = self.misses = 0

    def get_or_make(self, key: str, make):
        if key in self.values:
            self.hits += 1
            return self.values[key].copy()
        self.misses += 1
        value = make()
        if self.used + value.nbytes <= self.budget:
            self.values[key] = value
            self.used += value.nbytes
            return value.copy()
        return value


def pixel_budget() -> int:
    """RAM for `PixelMemory`: an eighth of what is available, at most 4 GB (about 250 images at 1 MP)."""
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(available // 8, 4 << 30)
