"""Walk a dataset folder into image records.

Every image file (by extension) becomes a record: either usable (size, mode,
alpha, bit depth, content hash) or bad with a reason. A scan never raises for
one bad file. Symlinks that lead outside the dataset are refused; hidden
folders (such as `.blk/`) are skipped. Results are cached in `.blk/index.json`
by (path, size, mtime), so a rescan of a big dataset decodes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from blk import atomic
from blk.data import images
from blk.errors import BadImage
from blk.workspace import is_within

INDEX_VERSION = 2  # 2: sizes as the decoder gives them (rotated TIFFs, PNG EXIF after the pixels)


@dataclass(frozen=True)
class ImageRecord:
    rel: str  # path relative to the dataset root, with forward slashes
    size_bytes: int
    sha256: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    has_alpha: bool = False
    bit_depth: int = 8
    error: str | None = None  # the reason a bad file cannot be used

    @property
    def ok(self) -> bool:
        return self.error is None

    def caption_rel(self) -> str:
        return str(Path(self.rel).with_suffix(".txt").as_posix())


def meta_dir(dataset: Path) -> Path:
    """The dataset's private folder for caches and history."""
    return Path(dataset) / ".blk"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_DIGESTS: dict[tuple, str] = {}  # (real path, device, inode, size, mtime_ns) → sha256


def cached_file_sha256(path: str | os.PathLike) -> str:
    """`file_sha256`, kept per file version (path, inode, size, mtime) in this process: models and LoRAs are
    hashed at every job (a resume key, a PNG's parameters), and a 67 MB upscaler takes ~0.1 s. A file
    changed in place is a new version, so a stale digest is never returned."""
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(Path(path))
    return _DIGESTS[key]


def iter_image_paths(dataset: Path):
    """Yield (path, rel) of every image-named file, sorted, skipping hidden folders and files."""
    for root, dirs, files in os.walk(dataset):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if images.is_image_name(path):
                yield path, path.relative_to(dataset).as_posix()


def inspect(path: Path, rel: str, dataset_root: Path) -> ImageRecord:
    """Decode one file fully and describe it, or record why it is unusable."""
    try:
        if path.is_symlink() and not is_within(path.resolve(), dataset_root):
            return ImageRecord(rel, 0, error=f"{rel} is a link to a file outside the dataset; copy the file in instead.")
        size = path.stat().st_size
    except OSError as exc:
        return ImageRecord(rel, 0, error=f"{rel} cannot be read ({exc.strerror}).")
    try:
        info = images.read_info(path)
        images.open_image(path).close()  # full decode: catches truncation
        return ImageRecord(rel, size, file_sha256(path), info.width, info.height, info.mode,
                           info.has_alpha, info.bit_depth)
    except BadImage as exc:
        return ImageRecord(rel, size, error=str(exc))


def scan(dataset: str | Path, use_cache: bool = True) -> list[ImageRecord]:
    """All image records of a dataset folder, in path order."""
    dataset = Path(dataset).resolve()
    index_path = meta_dir(dataset) / "index.json"
    cached = _load_index(index_path) if use_cache else {}
    records, fresh = [], {}
    for path, rel in iter_image_paths(dataset):
        try:
            st = path.stat()
            key = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            key = None
        hit = cached.get(rel)
        if hit is not None and key is not None and hit.get("key") == key:
            record = ImageRecord(**hit["record"])
        else:
            record = inspect(path, rel, dataset)
        records.append(record)
        if key is not None:
            fresh[rel] = {"key": key, "record": asdict(record)}
    if use_cache and fresh != cached:
        try:
            atomic.write_text(index_path, json.dumps({"version": INDEX_VERSION, "files": fresh}))
        except OSError:
            pass  # a read-only dataset still scans; it just is not cached
    return records


def _load_index(index_path: Path) -> dict:
    try:
        data = json.loads(index_path.read_text(encoding="utf-8"))
        return data["files"] if data.get("version") == INDEX_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
