"""The workspace: where everything the studio reads and writes lives.

    workspace/
      datasets/NAME/        images + sidecar captions; NAME/.blk/ holds caches and history
      runs/RUN/             training runs
      outputs/{sketch,stencil,upscale}/
      models/               tiny models and anything the user points at
      settings.yaml         allowed extra folders, registered local models, device, speed defaults

Paths that come from a user (UI fields, CLI flags) go through `confine()`: they
must resolve, symlinks followed, inside the workspace or a folder the user
allowed in settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from blk import atomic
from blk.errors import UnsafePath, UserError

SUBFOLDERS = ("datasets", "runs", "outputs/sketch", "outputs/stencil", "outputs/upscale", "models")


@dataclass
class Settings:
    """What the user configured; saved as workspace/settings.yaml."""

    allowed_folders: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # name -> local path of a diffusers folder or file
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    vllm_python: str | None = None  # the Python of a vLLM environment made by hand (default: .venv-vllm)
    compile: bool = False  # Sketch, Review and Upscale: compile by default (blk.models.speed)
    attention: str = ""  # Sketch and Review: attention backend for Flux ("" = diffusers' default)

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        known = {k: data[k] for k in ("allowed_folders", "models", "device", "vllm_python", "compile", "attention")
                 if k in data}
        if "attention" in known:
            known["attention"] = known["attention"] or ""  # `attention:` left empty
        if not isinstance(known.get("compile", False), bool) or not isinstance(known.get("attention", ""), str):
            raise ValueError("compile must be true or false, attention a backend name")
        for name, empty in (("models", {}), ("allowed_folders", [])):  # every entry commented out: none
            if name in known and known[name] is None:
                known[name] = empty
        models, folders = known.get("models", {}), known.get("allowed_folders", [])
        if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
            raise ValueError("models must map each name to a path, like `my-flux: /models/my-flux`")
        if not isinstance(folders, list) or not all(isinstance(v, str) for v in folders):
            raise ValueError("allowed_folders must be a list of folders")
        if not isinstance(known.get("device", "auto"), str):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return cls(**known)


class Workspace:
    def __init__(self, root: str | os.PathLike = "workspace"):
        self.root = Path(root).expanduser().resolve()
        for sub in SUBFOLDERS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.settings = self._load_settings()

    # folders -----------------------------------------------------------------
    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def outputs(self, kind: str) -> Path:
        return self.root / "outputs" / kind

    # settings ----------------------------------------------------------------
    @property
    def settings_path(self) -> Path:
        return self.root / "settings.yaml"

    def _load_settings(self) -> Settings:
        if not self.settings_path.exists():
            return Settings()
        try:
            data = yaml.safe_load(self.settings_path.read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise ValueError("not a mapping")
            return Settings.from_dict(data)
        except yaml.YAMLError as exc:  # its own text runs over several lines: the line and the problem, in one
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UserError(f"{self.settings_path} is not valid YAML{where} ({getattr(exc, 'problem', None) or exc}); "
                            "fix or delete it.") from None
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.settings_path} is not valid settings YAML ({exc}); fix or delete it.") from None

    def save_settings(self) -> None:
        s = self.settings
        atomic.write_text(
            self.settings_path,
            yaml.safe_dump({"allowed_folders": s.allowed_folders, "models": s.models, "device": s.device,
                            "vllm_python": s.vllm_python, "compile": s.compile, "attention": s.attention}),
        )

    def dataset_folder(self, value: str) -> Path:
        """A dataset named under datasets/, or a folder path given on the command line."""
        named = self.datasets / value
        folder = named if ("/" not in value and named.is_dir()) else Path(value).expanduser()
        if not folder.is_dir():
            raise UserError(f"{value} is not a folder (nor a dataset in {self.datasets}).")
        return folder.resolve()

    def named_dataset(self, name: str) -> Path:
        """A dataset chosen in the UI: a folder under datasets/, never outside the allowed roots."""
        if not name:
            raise UserError("Choose a dataset first.")
        if name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
            raise UnsafePath(f"{name} is outside the workspace's datasets: a dataset is a folder directly inside "
                             "workspace/datasets/.")
        folder = self.confine(name, base=self.datasets)
        if not folder.is_dir():
            raise UserError(f"There is no dataset named {name} in workspace/datasets/.")
        return folder

    # confinement -------------------------------------------------------------
    def allowed_roots(self) -> list[Path]:
        return [self.root] + [Path(p).expanduser().resolve() for p in self.settings.allowed_folders]

    def confine(self, path: str | os.PathLike, base: Path | None = None) -> Path:
        """Resolve a user-given path; refuse it unless it stays inside an allowed root.

        Relative paths are taken from `base` (default: the workspace root).
        """
        raw = Path(path).expanduser()
        if not raw.is_absolute():
            raw = (base or self.root) / raw
        resolved = raw.resolve()
        if not any(is_within(resolved, root) for root in self.allowed_roots()):
            raise UnsafePath(
                f"{path} is outside the workspace ({self.root}) and the folders allowed in settings."
            )
        return resolved


def check_writable_folder(folder: Path) -> None:
    """One sentence before a job when its results could not be written into `folder` (a file of that name, or
    a place without write permission), instead of an error after the work; nothing is made, so a failed job
    leaves no empty folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder for the results.")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.exists():  # nothing up to the root: a drive or share that is not there
        raise UserError(f"{existing} does not exist, so the folder {folder} cannot be made.")
    if not existing.is_dir():
        raise UserError(f"{existing} is a file, so the folder {folder} cannot be made.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{existing} cannot be written (no permission), so the results cannot go to {folder}.")


def free_path(path: Path, companions: tuple = ()) -> Path:
    """`path`, or NAME-2.ext, NAME-3.ext … beside it when taken: a new result never replaces an earlier one
    (two settings of one job are compared side by side, not lost). `companions` map a name to the files
    written with it (an upscale's print copy), which must be free too."""
    wanted = candidate = Path(path)
    number = 1
    while candidate.exists() or any(companion(candidate).exists() for companion in companions):
        number += 1
        candidate = wanted.with_name(f"{wanted.stem}-{number}{wanted.suffix}")
    return candidate


def is_within(path: Path, root: Path) -> bool:
    """True when `path` is `root` or lies below it (both already resolved)."""
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False
