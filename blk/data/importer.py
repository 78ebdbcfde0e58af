"""Bring images (and their captions) into a dataset: the Caption tab's "New dataset" and "Add images".

Files are checked by content, not by name: each is decoded fully before it
is kept (a damaged or hostile file is refused with one sentence), and it is
stored under the extension its content has (a PNG named `.jpg` becomes
`.png`). A `NAME.txt` uploaded with `NAME.png` becomes its caption. Copies
are atomic; nothing already in the dataset is overwritten, and an image whose
content the dataset already holds is not added a second time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from blk import atomic
from blk.data.images import is_image_name, open_image, read_info
from blk.data.scan import scan
from blk.errors import BadImage, UserError
from blk.workspace import Workspace

DATASET_NAME = re.compile(r"^[\w][\w .+-]{0,79}$")
EXTENSION_OF_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp", "MPO": ".jpg"}


@dataclass
class ImportResult:
    folder: Path
    added: list[str] = field(default_factory=list)  # file names in the dataset
    captions: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (uploaded name, one sentence)
    already: list[tuple[str, str]] = field(default_factory=list)  # (uploaded name, the dataset's file of that content)

    def sentence(self) -> str:
        text = f"Added {len(self.added)} image{'s' if len(self.added) != 1 else ''}"
        if self.captions:
            text += f" and {self.captions} caption{'s' if self.captions != 1 else ''}"
        text += f" to {self.folder.name}."
        if self.already:
            shown = ", ".join(f"{name} (as {kept})" if name != kept else name for name, kept in self.already[:5])
            more = f" and {len(self.already) - 5} more" if len(self.already) > 5 else ""
            text += (f" Already in the dataset with the same content, so not added again: {shown}{more}"
                     " (a second copy would train on that image twice as often).")
        if self.failed:
            text += f" {len(self.failed)} file{'s were' if len(self.failed) != 1 else ' was'} refused."
        return text


def dataset_folder_for(workspace: Workspace, name: str, create: bool) -> Path:
    """The dataset's folder under datasets/; a new one needs a plain name (letters, digits, space . + - _)."""
    name = (name or "").strip()
    if not DATASET_NAME.match(name) or name in (".", ".."):
        raise UserError(f"{name!r} is not a usable dataset name: use letters, digits, spaces, . + - or _ "
                        "(at most 80), starting with a letter or digit.")
    folder = workspace.confine(name, base=workspace.datasets)
    if create and folder.exists():
        raise UserError(f"A dataset named {name} already exists; choose another name or add images to it.")
    if not create and not folder.is_dir():
        raise UserError(f"There is no dataset named {name} in workspace/datasets/.")
    return folder


def _free_name(folder: Path, stem: str, suffix: str) -> Path:
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists() or path.with_suffix(".txt").exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[\x00-\x1f/\\]+", " ", Path(name).stem).strip(" .") or "image"
    return stem[:120]


def import_files(workspace: Workspace, name: str, files: list, create: bool = False) -> ImportResult:
    """Copy uploaded images (and same-named .txt captions) into the dataset `name`."""
    folder = dataset_folder_for(workspace, name, create)
    paths = [Path(f if isinstance(f, (str, Path)) else f.name) for f in files or []]
    if not any(is_image_name(p) or p.suffix.lower() != ".txt" for p in paths):
        raise UserError("Choose some images to add (PNG, JPEG, WebP, TIFF, BMP).")
    folder.mkdir(parents=True, exist_ok=True)
    result = ImportResult(folder)
    captions = {p.stem: p for p in paths if p.suffix.lower() == ".txt"}
    # the dataset's images by content (a new one holds none, and a scan would leave its cache in the folder)
    held = {} if create else {r.sha256: r.rel for r in scan(folder) if r.sha256}
    for path in (p for p in paths if p.suffix.lower() != ".txt"):
        try:
            info = read_info(path)
            open_image(path)  # decode it all: truncated or hostile files stop here
        except BadImage as exc:
            result.failed.append((path.name, str(exc)))
            continue
        except OSError as exc:
            result.failed.append((path.name, f"{path.name} could not be read ({exc.strerror or exc})."))
            continue
        suffix = EXTENSION_OF_FORMAT.get(info.format)
        if suffix is None:
            result.failed.append((path.name, f"{path.name} is a {info.format} image; the studio keeps PNG, JPEG, "
                                             "WebP, TIFF and BMP."))
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in held:  # re-added, or twice in one upload: its caption stays as it is
            result.already.append((path.name, held[digest]))
            continue
        target = _free_name(folder, _safe_stem(path.name), suffix)
        atomic.write_bytes(target, data)
        held[digest] = target.name
        result.added.append(target.name)
        caption = captions.get(path.stem)
        if caption is not None:
            try:
                text = caption.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError:
                result.failed.append((caption.name, f"{caption.name} is not UTF-8 text; the image was added "
                                                    "without it."))
                continue
            atomic.write_text(target.with_suffix(".txt"), text.strip() + "\n")
            result.captions += 1
    if create and not result.added:
        try:
            folder.rmdir()  # an empty new dataset helps nobody
        except OSError:
            pass
    return result
