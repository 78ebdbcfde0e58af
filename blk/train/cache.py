"""Disk caches of VAE latents and text embeddings, under the dataset's `.blk/cache/`.

Keys: content hash + model + bucket size + flip for latents; caption text +
model for text embeddings. A second run (or epoch) does not encode again.
Counters say how many encodes really ran (tests read them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from blk import atomic


class TensorCache:
    def __init__(self, folder: Path, enabled: bool = True):
        self.folder = folder
        self.enabled = enabled  # off: encode every time, write nothing
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def get_or_make(self, key: str, make) -> dict:
        from safetensors.torch import load, save

        if not self.enabled:
            self.misses += 1
            return make()
        path = self._path(key)
        if path.exists():
            try:
                value = load(path.read_bytes())
                self.hits += 1
                return value
            except Exception:  # a damaged cache file is simply made again
                pass
        value = {name: tensor.detach().cpu().contiguous() for name, tensor in make().items()}
        atomic.write_bytes(path, save(value))
        self.misses += 1
        return value


def model_key(model_path: Path) -> str:
    return hashlib.sha256(str(Path(model_path).resolve()).encode()).hexdigest()[:16]
