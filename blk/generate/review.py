"""Review: checkpoints × prompts × seeds × LoRA strengths as one labelled grid.

Every cell is an ordinary generation (same pipeline, same seeds as Sketch),
cached as a PNG named by the hash of everything that decides its pixels —
model, LoRA content (sha256), scale, prompt, seed, steps, guidance, size, and
the device, dtype, int8 weights and VAE tiling it ran with — so re-opening a
grid, or a grid that shares cells with an earlier one, does not generate
again, and cells made another way never mix into one grid. A grid's PNG is
named by a hash of its cells, labels and settings too, so asking again for an
unchanged grid writes no new file. Review has no
memory controls: it runs on the pipeline Sketch already loaded, with its
memory options, so moving between the tabs never loads the base again. A
run's review files live in `runs/RUN/review/`; a review of loose LoRA files in
`outputs/review/`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blk import __version__
from blk.errors import UserError
from blk.generate.metadata import save_png
from blk.generate.sketch import MAX_SEED, STRENGTH_RANGE, Cancelled, Lora, Sketcher, SketchRequest, lora_label
from blk.generate.text_to_image import TextToImage
from blk.models.device import MemoryOptions, pick_dtype
from blk.models.pipelines import LoadedPipeline, lora_sha256
from blk.models.registry import resolve
from blk.train.pins import CHECKPOINT_NAME

LABEL_PX = 14  # label text height in the grid
MAX_CELLS = 400
DEFAULT_SEED = 1  # a grid's seed when none is given and no run gives its sample seed (the CLI and the tab alike)


def parse_seeds(text: str | None, what: str = "Seeds") -> list[int]:
    """Seeds typed as `1,2,3` (or `1 2 3`), repeats dropped; empty text gives []. Out of range is said, as
    torch would otherwise fail deep in generation."""
    seeds = _number_list(text, int, what, "1,2,3")
    wrong = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if wrong:
        raise UserError(f"{what} are whole numbers from 0 to {MAX_SEED}; {wrong[0]} is not.")
    return seeds


def parse_strengths(text: str | None, what: str = "Strengths") -> list[float]:
    """LoRA strengths typed as `0.6,0.8,1.0`, repeats dropped; empty text gives []. Sketch's slider range."""
    strengths = _number_list(text, float, what, "0.6,0.8,1.0")
    low, high = STRENGTH_RANGE
    wrong = [value for value in strengths if not (math.isfinite(value) and low <= value <= high)]
    if wrong:
        raise UserError(f"{what} go from {low:g} to {high:g}, as on Sketch's sliders; {wrong[0]:g} is outside.")
    return strengths


def _number_list(text: str | None, kind, what: str, example: str) -> list:
    parts = [part for part in re.split(r"[,;\s]+", str(text or "")) if part]
    try:
        numbers = [kind(part) for part in parts]
    except ValueError:
        raise UserError(f"{what} are a comma-separated list of numbers, like {example}; "
                        f"got “{str(text).strip()}”.") from None
    return list(dict.fromkeys(numbers))  # a repeat would only make the same cells twice


@dataclass(frozen=True)
class Row:
    lora: Path | None  # None: the base model without any LoRA
    scale: float = 1.0

    def label(self, several_scales: bool, with_run: bool = False) -> str:
        """`step 250` for a checkpoint, the file's stem for any other LoRA; `with_run` prefixes the run's (or
        folder's) name, for grids whose rows would otherwise read the same."""
        if self.lora is None:
            return "base (no LoRA)"
        name = Path(self.lora).name
        match = CHECKPOINT_NAME.match(name)
        text = f"step {int(match.group(1))}" if match else Path(name).stem
        if with_run:
            text = f"{_owner(Path(self.lora))}/{text}"
        return f"{text} @ {self.scale:g}" if several_scales else text  # ASCII: the built-in font has no ×


@dataclass(frozen=True)
class Column:
    prompt: str
    seed: int

    def label(self) -> str:
        """The full prompt and the seed; `column_headers` fits it to the cell's width when the grid is drawn."""
        return f"{self.prompt or '(empty prompt)'}\nseed {self.seed}"


@dataclass
class GridSpec:
    model: str
    checkpoints: list[Path]
    prompts: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    scales: list[float] = field(default_factory=lambda: [1.0])
    include_base: bool = False
    width: int = 1024
    height: int = 1024
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str = ""
    # the options to load with when the model is not loaded on this device yet; when it is (by Sketch), its
    # options are used as they are (`reuse_loaded_memory`), so switching tabs never reloads it; cell_key
    # records the ones that change pixels
    memory: MemoryOptions = MemoryOptions()
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps, as Sketch (the workspace's settings.device in the UI)
    reuse_loaded_memory: bool = True

    def rows(self) -> list[Row]:
        base = [Row(None, 0.0)] if self.include_base else []
        return base + [Row(Path(c), float(s)) for c in self.checkpoints for s in self.scales]

    def columns(self) -> list[Column]:
        return [Column(p, int(s)) for p in (self.prompts or [""]) for s in self.seeds]


@dataclass
class GridResult:
    image: object  # PIL image of the whole labelled grid
    cells: list[list[Path]]  # cached cell PNGs, [row][column]
    row_labels: list[str]
    column_labels: list[str]
    generated: int  # cells made now
    cached: int  # cells found in the cache


def review_folder(workspace, run_dir: Path | None) -> Path:
    return Path(run_dir) / "review" if run_dir else workspace.outputs("review")


class Reviewer:
    """Makes grid cells through a `Sketcher` (sharing its loaded pipeline) and caches them."""

    def __init__(self, sketcher: Sketcher):
        self.sketcher = sketcher

    def cell(self, spec: GridSpec, row: Row, column: Column, cache_dir: Path, on_step=None) -> tuple[Path, bool]:
        """The cell's cached PNG, generated first when missing; (path, was_generated)."""
        with self.sketcher.lock:
            memory = spec.memory
            if spec.reuse_loaded_memory:
                model = resolve(spec.model, self.sketcher.workspace)
                memory = self.sketcher.cache.loaded_options(model, spec.device) or spec.memory
            request = SketchRequest(
                model=spec.model, prompt=column.prompt, negative_prompt=spec.negative_prompt,
                loras=[Lora(row.lora, row.scale)] if row.lora is not None else [], seed=column.seed,
                width=spec.width, height=spec.height, steps=spec.steps, guidance=spec.guidance, memory=memory,
                device=spec.device)
            loaded, text, _ = self.sketcher.prepare(request)
            text = TextToImage(**{**asdict(text), "seed": column.seed})
            path = Path(cache_dir) / "cells" / f"{cell_key(loaded, row, text)}.png"
            if path.exists():
                return path, False
            image = self.sketcher._generate(loaded, text, on_step or (lambda step, total: None))
            save_png(path, image, self.sketcher.parameters(loaded, text, request))
            return path, True

    def grid(self, spec: GridSpec, cache_dir: Path, progress=None, cancel: threading.Event | None = None) -> GridResult:
        """All cells (cached or generated), assembled with labels. `progress(done_cells, total_cells)`."""
        rows, columns = spec.rows(), spec.columns()
        if not rows:
            raise UserError("Choose at least one checkpoint (or include the base model).")
        if len(rows) * len(columns) > MAX_CELLS:
            raise UserError(f"{len(rows)}×{len(columns)} cells is more than {MAX_CELLS}; choose fewer checkpoints, "
                            "prompts, seeds or strengths.")
        total = len(rows) * len(columns)
        cells, generated = [], 0
        for r, row in enumerate(rows):
            cells.append([])
            for c, column in enumerate(columns):
                done = r * len(columns) + c

                def on_step(step, steps, done=done):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"Cancelled; {done} of {total} cells are cached for next time.")
                    if progress is not None:
                        progress(done + step / steps, total)

                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"Cancelled; {done} of {total} cells are cached for next time.")
                path, made = self.cell(spec, row, column, cache_dir, on_step)
                cells[-1].append(path)
                generated += made
                if progress is not None:
                    progress(done + 1, total)
        several = len(spec.scales) > 1
        row_labels = [row.label(several) for row in rows]
        if len(set(row_labels)) < len(row_labels):  # e.g. step 8 of two runs: say whose
            row_labels = [row.label(several, with_run=row_labels.count(label) > 1)
                          for row, label in zip(rows, row_labels)]
        column_labels = [column.label() for column in columns]
        image = assemble(cells, row_labels, column_labels)
        return GridResult(image, cells, row_labels, column_labels, generated, total - generated)


def cell_key(loaded: LoadedPipeline, row: Row, text: TextToImage) -> str:
    """Hash of everything that decides a cell's pixels: the same seed on another device or dtype, or with int8
    weights or VAE tiling, gives another image. CPU offload, compile and the attention backend do not enter:
    they change time, and pixels at most by the dtype's rounding."""
    model = loaded.model
    decided = {"model": model.name, "model_path": str(model.path), "family": model.family,
               "lora": lora_sha256(row.lora) if row.lora is not None else None,
               "scale": row.scale if row.lora is not None else None, **asdict(text),
               "device": _device_identity(loaded.device), "dtype": str(pick_dtype(loaded.device)),
               "int8": loaded.memory.int8, "vae_tiling": loaded.memory.vae_tiling}
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:32]


def _device_identity(device: str) -> str:
    """`cuda:1 NVIDIA GeForce RTX 3090`: a GPU's model as well as its index (GPUs differ in their kernels)."""
    if device.startswith("cuda"):
        import torch

        return f"{device} {torch.cuda.get_device_name(int(device.split(':')[1]))}"
    return device


def _owner(path: Path) -> str:
    """The run a checkpoint belongs to (`runs/RUN/checkpoints/…`), else the file's folder."""
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name


def checkpoint_run(path: Path) -> Path | None:
    """The run folder of a run checkpoint (`RUN/checkpoints/step-….safetensors`), else None: pins go there."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" and CHECKPOINT_NAME.match(path.name) else None


def review_label(path: Path, run_dir: Path | None, workspace) -> str:
    """A name for a LoRA that no other LoRA of the review shares (the blind tally is keyed by it): the
    review's own run's checkpoints by file name, another run's as `RUN/step-….safetensors`, any other file
    by its path in the workspace."""
    path = Path(path)
    owner = checkpoint_run(path)
    if owner is not None and run_dir is not None and owner.resolve() == Path(run_dir).resolve():
        return path.name
    if owner is not None and owner.resolve().parent == workspace.runs.resolve():
        return f"{owner.name}/{path.name}"
    try:
        return path.resolve().relative_to(workspace.root.resolve()).as_posix()
    except ValueError:
        return str(path)


def assemble(cells: list[list[Path]], row_labels: list[str], column_labels: list[str]):
    """One image: a header row of column labels, a left column of row labels, cells in between."""
    from PIL import Image, ImageDraw

    from blk.data.images import open_image

    images = [[open_image(path).convert("RGB") for path in row] for row in cells]
    cell_w, cell_h = images[0][0].size
    font = _label_font()
    gap = 4
    left = 16 + max(int(font.getlength(label)) for label in row_labels)
    headers = column_headers(font, column_labels, cell_w)
    top = 16 + (LABEL_PX + 4) * max(len(lines) for lines in headers)
    width = left + len(column_labels) * (cell_w + gap)
    height = top + len(row_labels) * (cell_h + gap)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, lines in enumerate(headers):
        x = left + c * (cell_w + gap)
        draw.multiline_text((x, 8), "\n".join(lines), fill="black", font=font, spacing=4)
    for r, label in enumerate(row_labels):
        y = top + r * (cell_h + gap)
        draw.text((8, y + cell_h // 2 - LABEL_PX // 2), label, fill="black", font=font)
        for c, image in enumerate(images[r]):
            sheet.paste(image, (left + c * (cell_w + gap), y))
    return sheet


def _label_font():
    """DejaVu Sans where the system has it (wide Unicode coverage), else Pillow's built-in font."""
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, LABEL_PX)
        except OSError:
            continue
    return ImageFont.load_default(size=LABEL_PX)


PROMPT_LINES = 2  # a column's prompt wraps to at most this many lines in the header


def column_headers(font, column_labels: list[str], width: int) -> list[list[str]]:
    """The lines drawn above each column: its prompt (the label's first line) wrapped to `PROMPT_LINES` lines of
    `width` pixels, then the rest of the label (the seed). When a prompt does not fit, the words every column's
    prompt starts with (a trigger word, "blkstyle, a") are left out of all of them, marked "...", so that
    narrow columns still tell their prompts apart; the last line is cut with "..." when it is still too long.
    The labels themselves (and the grid PNG's parameters) keep the full prompts."""
    prompts = [label.split("\n")[0] for label in column_labels]
    rests = [label.split("\n")[1:] for label in column_labels]
    if not all(_fits(font, _wrap(font, prompt, width), width) for prompt in prompts):
        shared = _shared_leading_words(prompts)
        if shared:
            prompts = ["..." + " ".join(prompt.split()[shared:]) for prompt in prompts]
    return [[_fit(font, line, width) for line in _wrap(font, prompt, width)] + [_fit(font, line, width) for line in rest]
            for prompt, rest in zip(prompts, rests)]


def _shared_leading_words(prompts: list[str]) -> int:
    """How many words all the prompts start with, leaving at least one word of each (0 for a single prompt)."""
    words = [prompt.split() for prompt in prompts]
    if len(set(prompts)) < 2 or not all(words):
        return 0
    count = 0
    limit = min(len(w) for w in words) - 1
    while count < limit and len({w[count] for w in words}) == 1:
        count += 1
    return count


def _wrap(font, text: str, width: int, lines: int = PROMPT_LINES) -> list[str]:
    """Greedy word wrap into at most `lines` lines; whatever is left goes on the last line (uncut)."""
    words, out, current = text.split(), [], ""
    for index, word in enumerate(words):
        trial = f"{current} {word}" if current else word
        if current and font.getlength(trial) > width:
            if len(out) == lines - 1:  # the last line takes the rest
                current = " ".join([current, *words[index:]])
                break
            out.append(current)
            trial = word
        current = trial
    return out + [current]


def _fits(font, lines: list[str], width: int) -> bool:
    return all(font.getlength(line) <= width for line in lines)


def _fit(font, text: str, width: int) -> str:
    """Cut a label to the cell's width, with an ellipsis (ASCII: the built-in font's glyphs), after a whole word
    where one fits ("a figure..." rather than "a figure i..."); inside a word only when no whole word does."""
    if font.getlength(text) <= width:
        return text
    cut = text
    while cut and font.getlength(cut + "...") > width:
        cut = cut[:-1]
    whole = cut.rsplit(" ", 1)[0] if " " in cut and not text[len(cut):].startswith(" ") else cut  # a word cut: out
    return (whole.rstrip(" ,;:") or cut) + "..."


def grid_parameters(result: GridResult, spec: GridSpec) -> dict:
    """What a grid PNG carries of what it shows (rows, columns, settings)."""
    return {"kind": "review-grid", "model": spec.model, "prompts": spec.prompts, "seeds": spec.seeds,
            "scales": spec.scales, "steps": spec.steps, "guidance": spec.guidance,
            "width": spec.width, "height": spec.height, "rows": result.row_labels, "columns": result.column_labels,
            "loras": [{"name": lora_label(p), "sha256": lora_sha256(p)} for p in spec.checkpoints],
            "prompt": " | ".join(spec.prompts)}


def save_grid(result: GridResult, spec: GridSpec, path: Path) -> Path:
    """The grid as one PNG, with what it shows embedded (rows, columns, settings)."""
    return save_png(Path(path), result.image, grid_parameters(result, spec))


def grid_key(result: GridResult, spec: GridSpec) -> str:
    """Hash of everything that decides a grid PNG's bytes: its cells (each named by the hash of what decides its
    pixels), in their places, the parameters it carries (row and column labels among them) and the app's version."""
    decided = {"cells": [[Path(path).name for path in row] for row in result.cells],
               "parameters": grid_parameters(result, spec), "version": __version__}
    return hashlib.sha256(json.dumps(decided, sort_keys=True, default=str).encode()).hexdigest()[:16]


def keep_grid(result: GridResult, spec: GridSpec, folder: Path) -> tuple[Path, bool]:
    """The grid's PNG in `folder`, named `grid-DATE-TIME-KEY.png` by `grid_key`: the file already written for the
    same cells, labels and settings when there is one (asking again for a grid whose cells all came from the
    cache writes nothing), else a new file, written atomically. Returns (path, whether it was written now)."""
    key = grid_key(result, spec)
    folder = Path(folder)
    same = sorted(path for path in folder.glob(f"grid-*-{key}.png") if path.is_file() and path.stat().st_size)
    if same:
        os.utime(same[-1])  # the grid just asked for is the newest in the folder, as a new file would be
        return same[-1], False
    return save_grid(result, spec, folder / f"grid-{time.strftime('%Y%m%d-%H%M%S')}-{key}.png"), True


def run_review_defaults(run_dir: Path) -> dict:
    """A run's model, sample prompts, sampling settings and checkpoints: the Review tab's defaults."""
    from blk.train.config import load_config
    from blk.train.pins import run_checkpoints

    config = load_config(Path(run_dir) / "config.yaml")
    return {"model": config.model.name, "prompts": list(config.sampling.prompts), "seed": config.sampling.seed,
            "steps": config.sampling.steps, "guidance": config.sampling.guidance, "size": config.sampling.size,
            "checkpoints": [path for _, path in run_checkpoints(run_dir)]}

