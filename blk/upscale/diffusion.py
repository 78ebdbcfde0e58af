"""The diffusion path: enlarge, then refine on tiles with img2img and a texture LoRA, in passes.

BLK-Upscale's recipe (RECIPES.md): first enlarge (Real-ESRGAN when a model
file is given, else Lanczos), then pass A injects texture (denoise about
0.3, LoRA 1.0), pass B refines (about 0.2), an optional pass C steadies edges
(about 0.15); prompts are usually empty. Each pass runs img2img on tiles of
one size (Flux's schedule depends on the token count, so every tile must be
the same size), with the same seed for every tile, blended in their overlaps
by the shared tiler (`blk.upscale.tiler`). Where the whole image fits, a
final low-denoise pass over the full frame evens out anything tile-local.

Blending: we blend the tiles' *outputs* with the tiler's raised-cosine
weights (a feathered paste), not the denoiser's predictions at every step
(Mixture of Diffusers). At these low denoise strengths each tile keeps the
enlarged image's structure, so neighbours agree closely and feathering hides
the rest (the tests measure the seam); it also keeps one tile in memory at a
time and reuses the ESRGAN path's out-of-memory halving and disk canvas.

diffusers runs `steps × denoise` steps in img2img; we raise `steps` when that
would be below one.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from blk import __version__
from blk.errors import UserError
from blk.generate.sizes import SIZE_MULTIPLE
from blk.models.device import MemoryOptions
from blk.upscale.canvas import Canvas, output_format, write_png, write_tiff
from blk.upscale.journal import Journal, file_sha256, job_key
from blk.upscale.source import open_input
from blk.upscale.tiler import count_tiles, run_tiles

FINAL_PASS_PIXELS = 2 * 2**20  # the full-frame pass runs when the image is at most this large


@dataclass(frozen=True)
class Pass:
    denoise: float
    lora_scale: float = 1.0


PAPER_PASSES = (Pass(0.30, 1.0), Pass(0.20, 1.0))  # A: inject texture, B: refine
PASS_C = Pass(0.15, 1.0)  # optional: steadies edges


@dataclass
class DiffusionJob:
    input: Path
    output: Path
    model: str  # base model name (Flux or SDXL)
    texture_lora: Path | None = None
    scale: float | None = 2.0  # or:
    size: tuple[int, int] | None = None
    enlarge_model: Path | None = None  # an ESRGAN-family file for the first enlargement; None: Lanczos
    passes: tuple[Pass, ...] = PAPER_PASSES
    tile: int = 1024  # px of the enlarged image: tiles are at most this, all of one size in a pass
    overlap: int = 96
    seed: int = 0
    steps: int | None = None  # None: the model's default
    guidance: float | None = None
    prompt: str = ""
    final_denoise: float | None = 0.1  # None: no full-frame pass
    final_max_pixels: int = FINAL_PASS_PIXELS
    dpi: float | None = None
    memory: MemoryOptions = MemoryOptions()
    device: str = "auto"

    def __post_init__(self):
        self.input, self.output = Path(self.input), Path(self.output)
        self.texture_lora = Path(self.texture_lora) if self.texture_lora else None
        self.enlarge_model = Path(self.enlarge_model) if self.enlarge_model else None


@dataclass
class DiffusionPlan:
    width: int
    height: int
    tiles_per_pass: int
    passes: int
    final_pass: bool
    steps_per_tile: list[int] = field(default_factory=list)  # denoising steps diffusers will run, per pass

    def sentence(self) -> str:
        final = " plus one full-frame pass" if self.final_pass else ""
        return (f"{self.width}×{self.height}: {self.passes} pass{'es' if self.passes != 1 else ''} of "
                f"{self.tiles_per_pass} tile{'s' if self.tiles_per_pass != 1 else ''}{final} "
                f"({sum(self.steps_per_tile) * self.tiles_per_pass} denoising steps in all).")


@dataclass
class DiffusionResult:
    path: Path
    width: int
    height: int
    tiles: int
    seconds: float
    parameters: dict


def effective_steps(steps: int, denoise: float) -> tuple[int, int]:
    """(steps to ask for, steps diffusers will run): img2img runs int(steps × denoise) of them."""
    if not 0 < denoise <= 1:
        raise UserError(f"Denoise must be between 0 and 1; got {denoise:g}.")
    asked = max(steps, math.ceil(1 / denoise))
    return asked, max(1, int(asked * denoise))


def plan(job: DiffusionJob, width: int, height: int, default_steps: int, multiple_of: int = 1) -> DiffusionPlan:
    """What a job will do; `multiple_of` is the model family's size grid (`SIZE_MULTIPLE`), which the
    tile layout rounds to."""
    from blk.upscale.esrgan import target_size

    tw, th = target_size(width, height, job.scale, job.size)
    if not job.passes:
        raise UserError("Choose at least one refinement pass.")
    tile = min(job.tile, tw, th)
    if 2 * job.overlap > tile:
        raise UserError(f"An overlap of {job.overlap} px needs tiles of at least {2 * job.overlap} px.")
    steps = job.steps or default_steps
    return DiffusionPlan(tw, th, count_tiles(tw, th, job.tile, job.overlap, multiple_of, full_size=True), len(job.passes),
                         job.final_denoise is not None and tw * th <= job.final_max_pixels,
                         [effective_steps(steps, p.denoise)[1] for p in job.passes])


def run(job: DiffusionJob, workspace, pipelines=None, progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None, log: Callable[[str], None] | None = None) -> DiffusionResult:
    """Enlarge, refine in passes, write TIFF or PNG with the parameters; returns where and how long.

    Like the ESRGAN path, a killed job resumes from its last finished row of
    tiles when the same job runs again (`blk.upscale.journal`).
    """
    from blk.generate.sketch import generation_defaults
    from blk.models.pipelines import PipelineCache, lora_sha256, set_loras
    from blk.models.registry import resolve

    started = time.monotonic()
    fmt = output_format(job.output)
    model = resolve(job.model, workspace)
    default_steps, default_guidance = generation_defaults(model)
    image = open_input(job.input)
    the_plan = plan(job, image.width, image.height, default_steps, SIZE_MULTIPLE[model.family])
    width, height = the_plan.width, the_plan.height
    total = the_plan.tiles_per_pass * the_plan.passes + the_plan.final_pass
    done = [0]

    def report(n, _pass_total=None):
        if progress is not None:
            progress(done[0] + n, total)

    if job.input.resolve() == job.output.resolve():
        raise UserError("The result would overwrite the input; choose another output name.")
    stages = 1 + len(job.passes)  # stage 0 is the enlargement, then one canvas per pass
    key = job_key({"path": "diffusion", "input_sha256": file_sha256(job.input), "model": model.name,
                   "model_path": str(model.path), "output": str(job.output.resolve()), "size": [width, height],
                   "lora_sha256": lora_sha256(job.texture_lora) if job.texture_lora else None,
                   "enlarge_sha256": file_sha256(job.enlarge_model) if job.enlarge_model else None,
                   "passes": [[p.denoise, p.lora_scale] for p in job.passes], "tile": job.tile,
                   "overlap": job.overlap, "seed": job.seed, "steps": job.steps, "guidance": job.guidance,
                   "prompt": job.prompt, "device": job.device})
    journal = Journal.begin(job.output, key)
    with journal.ending():  # done, cancelled or failed: files removed; Ctrl+C: kept for a resume
        journal.check_files(stages)
        first = min(journal.state["pass"], stages) if journal.resumed else 0
        if journal.resumed:
            done[0] = the_plan.tiles_per_pass * max(0, first - 1)  # the tiler counts the resumed pass's own tiles
            if log:
                log(journal.describe() if 0 < first < stages else "Resuming an interrupted job.")
        if first == 0:
            source = _enlarge(job, image, width, height, journal, cancel)
            journal.pass_done(0)
        else:
            source = journal.reopen(first - 1, width, height, image.channels)
        loaded = (pipelines or PipelineCache()).get(model, task="img2img", device=job.device, memory=job.memory)
        guidance = default_guidance if job.guidance is None else job.guidance
        tile = journal.tile or job.tile  # each axis's tiles fit the image (`spans`); rows and columns may differ
        journal.set_tile(tile)
        for stage in range(max(first, 1), stages):
            one = job.passes[stage - 1]
            set_loras(loaded, [(job.texture_lora, one.lora_scale)] if job.texture_lora else [])
            steps, _ = effective_steps(job.steps or default_steps, one.denoise)
            process = tile_processor(loaded, job.prompt, one.denoise, steps, guidance, job.seed)
            out = journal.open_canvas(stage, width, height, source.channels)
            stats = run_tiles(source, out, process, scale=1, tile=tile, overlap=job.overlap, batch=1,
                              multiple_of=SIZE_MULTIPLE[model.family], full_size=True,  # the model's size
                              progress=report, cancel=cancel,
                              **journal.tiler_hooks(stage, out))
            tile = stats.tile
            journal.pass_done(stage)
            done[0] += the_plan.tiles_per_pass
            journal.forget(source)  # the previous stage is no longer needed
            source = out
        if the_plan.final_pass:
            steps, _ = effective_steps(job.steps or default_steps, job.final_denoise)
            whole = source.read(0, 0, width, height)[None]
            refined = tile_processor(loaded, job.prompt, job.final_denoise, steps, guidance, job.seed)(whole)[0]
            source.write_raw(0, 0, np.clip(np.rint(refined * 65535.0), 0, 65535).astype(np.uint16))
            done[0] = total
            report(0)
        parameters = {
            "job": "upscale", "path": "diffusion", "input": job.input.name, "input_width": image.width,
            "input_height": image.height, "width": width, "height": height, "model": model.name,
            "prompt": job.prompt, "seed": job.seed, "steps": job.steps or default_steps, "guidance": guidance,
            "passes": [{"denoise": p.denoise, "lora_scale": p.lora_scale} for p in job.passes],
            "final_denoise": job.final_denoise if the_plan.final_pass else None, "tile": tile,
            "overlap": job.overlap, "enlarge": job.enlarge_model.name if job.enlarge_model else "lanczos",
            "loras": [{"name": job.texture_lora.name, "sha256": lora_sha256(job.texture_lora)}]
            if job.texture_lora else [],
        }
        dpi = job.dpi or image.dpi
        if fmt == "tiff":
            write_tiff(source, job.output, bits=8, icc=image.icc, dpi=dpi,
                       description=json.dumps(parameters | {"app_version": __version__}, sort_keys=True),
                       software=f"BLK Studio {__version__}", cancel=cancel, temp=journal.temp("out.tif"))
        else:
            write_png(source, job.output, icc=image.icc, dpi=dpi, parameters=parameters)
    return DiffusionResult(job.output, width, height, total, time.monotonic() - started, parameters)


def _enlarge(job: DiffusionJob, image, width: int, height: int, journal: Journal, cancel) -> Canvas:
    """Stage 0, the starting point at the target size: an ESRGAN run (its own tiles) or Lanczos."""
    from blk.upscale.esrgan import EsrganJob, resample
    from blk.upscale.esrgan import run as run_esrgan

    if job.enlarge_model is not None:
        enlarged = journal.temp("enlarged.tif")
        try:
            run_esrgan(EsrganJob(job.input, enlarged, job.enlarge_model, scale=None, size=(width, height),
                                 device=job.device), cancel=cancel)
            bigger = open_input(enlarged)
            canvas = journal.open_canvas(0, width, height, bigger.channels)
            _copy_into(bigger.source, canvas)
        finally:
            enlarged.unlink(missing_ok=True)
        return canvas
    original = journal.adopt(Canvas(journal.temp("original.canvas"), image.width, image.height, image.channels))
    _copy_into(image.source, original)
    path = journal.canvas_path(0)
    path.unlink(missing_ok=True)
    canvas = journal.adopt(resample(original, width, height, path))
    journal.forget(original)
    return canvas


def _copy_into(source, canvas: Canvas, band: int = 256) -> None:
    for y in range(0, source.height, band):
        rows = source.read(0, y, source.width, min(band, source.height - y))
        canvas.write_raw(0, y, np.clip(np.rint(rows * 65535.0), 0, 65535).astype(np.uint16))


def tile_processor(loaded, prompt: str, denoise: float, steps: int, guidance: float, seed: int):
    """The tiler's `process` for img2img: float (N, h, w, 3|4) → same shape; alpha passes through.

    Tiles are padded (edge pixels repeated) to the family's grid and cropped
    back, so any image size works; every tile gets the same seed.
    """
    import torch

    multiple = SIZE_MULTIPLE[loaded.model.family]

    def process(tiles: np.ndarray) -> np.ndarray:
        outs = []
        for tile in tiles:
            h, w = tile.shape[:2]
            ph, pw = -h % multiple, -w % multiple
            rgb = np.pad(tile[..., :3], ((0, ph), (0, pw), (0, 0)), mode="edge")
            tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
            kwargs = dict(prompt=prompt, image=tensor, strength=denoise, num_inference_steps=steps,
                          guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed),
                          output_type="np")
            if loaded.model.family == "flux":
                kwargs |= dict(width=w + pw, height=h + ph)
            out = np.asarray(loaded.pipe(**kwargs).images[0], dtype=np.float32)[:h, :w]
            if tile.shape[2] == 4:
                out = np.concatenate([out, tile[..., 3:]], axis=2)
            outs.append(np.clip(out, 0.0, 1.0))
        return np.stack(outs)

    return process
