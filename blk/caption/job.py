"""One captioning job, the same for the CLI and the UI: which dataset, which style, which backend.

`run(job, workspace)` is the recipe: resolve the model, open the backend
(an existing server, a server the studio starts, or transformers in-process),
caption the batch, and stop what it started.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, Field

from blk.caption.batch import BatchResult, Progress, caption_dataset
from blk.caption.style import CaptionStyle, dataset_style, load_style
from blk.errors import UserError
from blk.workspace import Workspace


# Said when no captioning model is named: the test model must never caption a real dataset unasked
NO_CAPTIONER = ("Which captioning model? A folder, or a repo already in the local Hugging Face cache "
                "(e.g. Qwen/Qwen2.5-VL-7B-Instruct); tiny-vlm writes random words, for trying the studio.")


class CaptionJob(BaseModel):
    dataset: str  # a folder, or a dataset name under workspace/datasets
    style: str | None = None  # a style file; default: the dataset's own, else the default style
    backend: Literal["vllm", "transformers"] = "vllm"
    vllm_url: str | None = None  # a server already running; else the studio starts one
    model: str | None = None  # a local folder, a Hugging Face repo in the local cache, or tiny-vlm (random words)
    mode: Literal["missing", "all", "selected"] = "missing"
    selected: list[str] = Field(default_factory=list)
    overwrite: bool = False  # also replace captions a person edited or approved
    concurrency: int = Field(8, ge=1, le=256)
    ignore_eos: bool = False  # fixed-length answers, for tests and benchmarks


def resolve_vlm(name: str, workspace: Workspace) -> Path:
    """A vision-language model's local folder: tiny-vlm, a path, or a repo in the local HF cache."""
    if name == "tiny-vlm":
        from blk.caption.tiny_vlm import ensure_tiny_vlm

        return ensure_tiny_vlm(workspace.models)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a model folder (it has no config.json).")
        return path.resolve()
    registered = workspace.settings.models.get(name)
    if registered and Path(registered).is_dir():
        return Path(registered).resolve()
    if "/" in name and not path.exists():
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if isinstance(found, str):
            return Path(found).parent
    raise UserError(f"The captioning model {name} is not on this machine: give a local folder, "
                    "or download it once with `hf download REPO` on a connected machine.")


def job_style(job: CaptionJob, folder: Path) -> CaptionStyle:
    return load_style(job.style) if job.style else dataset_style(folder)


@contextlib.contextmanager
def open_backend(job: CaptionJob, workspace: Workspace, max_images: int, work_dir: Path, image_size: int = 1024,
                 answer_tokens: int = 300):
    """Yield a backend for the job; a server started here is stopped on exit. A job that needs a model and
    names none is refused: no default captioner writes into a dataset unasked."""
    if job.model is None and (job.backend == "transformers" or not job.vllm_url):
        raise UserError(NO_CAPTIONER)
    if job.backend == "transformers":
        from blk.caption.backends import TransformersBackend

        yield TransformersBackend(resolve_vlm(job.model, workspace), workspace.settings.device, job.ignore_eos)
        return
    from blk.caption.backends import ServerBackend

    if job.vllm_url:
        yield ServerBackend(job.vllm_url, max_concurrency=job.concurrency, ignore_eos=job.ignore_eos)
        return
    from blk.caption.server import ManagedServer, find_vllm_python, server_config

    config = server_config(resolve_vlm(job.model, workspace), find_vllm_python(workspace.settings.vllm_python),
                           max_images, workspace.settings.device, image_size, job.concurrency, answer_tokens)
    with ManagedServer(config, work_dir) as server:
        yield ServerBackend(server.url, max_concurrency=job.concurrency, ignore_eos=job.ignore_eos)


def run(job: CaptionJob, workspace: Workspace, progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None) -> BatchResult:
    from blk.caption.batch import plan

    folder = workspace.dataset_folder(job.dataset)
    style = job_style(job, folder)
    todo, planned = plan(folder, job.mode, job.selected, job.overwrite, skip={e.image for e in style.examples})
    if not todo:  # nothing to caption: no model loads (a server started for nothing, then "captioned 0")
        if not planned.failed and not planned.skipped:
            raise UserError(f"{folder.name} has no images to caption.")
        return planned
    work_dir = folder / ".blk" / "vllm"
    with open_backend(job, workspace, len(style.examples) + 1, work_dir, style.image_size,
                      style.sampling.max_tokens) as backend:
        return caption_dataset(folder, style, backend, job.mode, job.selected, job.overwrite, progress, cancel,
                               planned=(todo, planned))
