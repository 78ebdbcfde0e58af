"""The diffusion path: enlarge, then refine on tiles with img2img and a texture LoRA, in passes, step by step.

BLK-Upscale's recipe (RECIPES.md): in steps of 2×–4× until the target size,
first enlarge (Real-ESRGAN when a model file is given, else Lanczos), then pass
A injects texture (denoise about 0.3, LoRA 1.0), pass B refines (about 0.2),
an optional pass C steadies edges (about 0.15); prompts are usually empty.
Each step starts from the previous step's refined image, so every pass works
at most `step`× above a drawing the model has already seen detail in (a
single 16× jump would ask it to invent texture out of blur). Each pass runs
img2img on tiles of one size (Flux's schedule depends on the token count, so
every tile must be the same size), with the same seed for every tile, blended
in their overlaps by the shared tiler (`blk.upscale.tiler`). Where the whole
image fits in memory, a final low-denoise pass over the full frame evens out
anything tile-local; when it runs out of memory it is skipped and the tiled
result kept.

`tile` and `overlap` are pixels of the image a pass refines (the enlarged
image of that step), not of the input: that is the size the model draws at,
and what Flux and SDXL were trained near (512–1536 px).

Stages (each a journal stage, so a killed job resumes after its last finished
row): for every step, its enlargement, then one canvas per pass; then the
full-frame pass, into a canvas of its own (never in place: a resume after it
would refine twice). An ESRGAN enlargement runs the ESRGAN path's passes
(`esrgan.upscale`) straight from the input (first step) or the previous step's
canvas, with the model loaded once per job; its own passes resume by row
through a `child` journal of its stage. No intermediate image file is written
or hashed: the canvases stay 16-bit from the first enlargement on.

Progress: `progress(done, total, stage)` after every batch of tiles. `done`
and `total` count the refinement tiles of the whole job (what the time left
and the rate file follow; an out-of-memory halving of the tile raises
`total` to the smaller tiles' count, so `done` never passes it and never
goes back); `stage` (a `Stage`) says where the job is, with
that stage's own count. An enlargement's tiles are counted in `stage` only
(an ESRGAN tile takes a fraction of a diffusion tile's time; Lanczos has
none), from a first report before its first tile on, so that the minutes an
ESRGAN enlargement of a mural takes are seen to pass.

Blending: we blend the tiles' *outputs* with the tiler's raised-cosine
weights (a feathered paste), not the denoiser's predictions at every step
(Mixture of Diffusers). At these low denoise strengths each tile keeps the
enlarged image's structure, so neighbours agree closely and feathering hides
the rest (the tests measure the seam); it also keeps one tile in memory at a
time and reuses the ESRGAN path's out-of-memory halving and disk canvas.

diffusers runs about `steps × denoise` steps in img2img, so the strength it uses
is what it runs over what it was asked; with few steps (FLUX schnell's 4) that is
far from the denoise asked, so we ask for more steps until it is close
(`effective_steps`).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from blk.data.scan import cached_file_sha256
from blk.errors import UserError, require_file
from blk.generate.sizes import SIZE_MULTIPLE
from blk.models.device import MemoryOptions
from blk.upscale.canvas import (Canvas, check_disk_space, check_outputs, check_png, output_format, print_path,
                               read_icc, write_result)
from blk.upscale.journal import Journal, job_key
from blk.upscale.source import FILL_RADIUS, FilledSource, input_notes, open_input
from blk.upscale.tiler import Cancelled, count_tiles, run_tiles, spans

STEP = 4.0  # the most one step enlarges (the paper: steps of 2×–4×)
TILE_RANGE, OVERLAP_RANGE = (512, 1536), (64, 128)  # what the paper uses with real models (px)
# Full-frame pass, bytes per pixel per byte of the working dtype: the VAE's full-resolution activations
# dominate (128 channels, a few alive at once), with headroom; VAE tiling bounds them (a quarter left).
# An estimate: an out-of-memory error in the pass still only skips it.
FULL_FRAME_BYTES_PER_PIXEL = 2048
PASS_NAMES = "ABCDEFGH"
STEP_RANGE = (1.5, STEP)  # the largest enlargement per step a job may ask (below 1.5× the steps multiply)
MAX_ASKED_STEPS = 100  # `effective_steps` looks no further: 1 / its smallest tolerance
MIN_DENOISE = 1 / MAX_ASKED_STEPS  # 1e-5 asked the model for 100,000 steps, and 1e-6 found none
ENLARGING, FULL_FRAME = "enlarging", "full-frame pass"  # `Stage.what` besides "pass A", "pass B", …


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
    enlarge_model: Path | None = None  # an ESRGAN-family file for each step's enlargement; None: Lanczos
    enlarge_tile: int | None = None  # px of the image the enlargement model reads; None: from free memory
    passes: tuple[Pass, ...] = PAPER_PASSES  # run at every step
    step: float = STEP  # the most one step enlarges; more steps until the target size
    tile: int = 1024  # px of the image a pass refines (not the input): tiles are at most this, one size a pass
    overlap: int = 96  # px of the image a pass refines
    seed: int = 0
    steps: int | None = None  # None: the model's default
    guidance: float | None = None
    prompt: str = ""
    final_denoise: float | None = 0.1  # None: no full-frame pass
    final_max_pixels: int | None = None  # the full-frame pass runs up to this size; None: what free memory allows
    dpi: float | None = None  # None: the input's
    keep_16bit: bool = False  # a 16-bit input gives a 16-bit result (TIFF)
    icc: Path | None = None  # an ICC profile file; None: the input's
    print_dpi: float | None = None  # also write OUT.print.tif: 8-bit RGB, flattened, at this DPI
    print_background: tuple[int, int, int] = (255, 255, 255)  # what transparency is flattened over
    memory: MemoryOptions = MemoryOptions()
    device: str = "auto"

    def __post_init__(self):
        self.input, self.output = Path(self.input), Path(self.output)
        self.texture_lora = Path(self.texture_lora) if self.texture_lora else None
        self.enlarge_model = Path(self.enlarge_model) if self.enlarge_model else None
        self.icc = Path(self.icc) if self.icc else None


@dataclass
class DiffusionPlan:
    width: int
    height: int
    tiles_per_pass: int  # in one pass of the last step (at the target size)
    passes: int  # per step
    final_pass: bool
    steps_per_tile: list[int] = field(default_factory=list)  # denoising steps diffusers will run, per pass
    sizes: list[tuple[int, int]] = field(default_factory=list)  # each step's size; the last is the target
    tiles: list[int] = field(default_factory=list)  # tiles in one pass of each step
    notes: list[str] = field(default_factory=list)  # one-sentence notices (tile sizes, a left-out full-frame pass)
    final_work: int = 0  # the full-frame pass in tile-steps (`work`); 0 without it
    final_steps: int = 0  # denoising steps the full-frame pass runs; 0 without it
    enlarge_work: list[int] = field(default_factory=list)  # each step's enlargement in `enlarge_work`'s unit
    work_done: int = 0  # of `work`, what an interrupted run of the job did already (its resume skips it)
    enlarge_done: int = 0  # of the enlargements' work, likewise

    @property
    def work_left(self) -> int:
        """The denoising still to run, what the time shown counts (a resume's finished passes take no time)."""
        return max(self.work - self.work_done, 0)

    @property
    def enlarge_left(self) -> int:
        return max(sum(self.enlarge_work) - self.enlarge_done, 0)

    @property
    def total_tiles(self) -> int:
        """Tile calls of the whole job (all steps and passes), before any out-of-memory halving."""
        return sum(self.tiles or [self.tiles_per_pass]) * self.passes

    @property
    def work(self) -> int:
        """The job's denoising in tile-steps (one tile through one step), what the time estimate counts: the
        rate file keeps seconds per tile-step, since jobs differ in steps, denoise and passes, not only tiles."""
        return sum(self.tiles or [self.tiles_per_pass]) * sum(self.steps_per_tile) + self.final_work

    def sentence(self) -> str:
        final = " plus one full-frame pass" if self.final_pass else ""
        passes = f"{self.passes} pass{'es' if self.passes != 1 else ''}"
        tiles = self.tiles or [self.tiles_per_pass]
        if len(tiles) > 1:
            sizes = ", ".join(f"{w}×{h}" for w, h in self.sizes)
            what = (f"{self.width}×{self.height} in {len(tiles)} steps ({sizes}): {passes} each of "
                    f"{' + '.join(str(t) for t in tiles)} tiles{final}")
        else:
            what = (f"{self.width}×{self.height}: {passes} of {tiles[0]} tile{'s' if tiles[0] != 1 else ''}"
                    f"{final}")
        steps = f"{sum(self.steps_per_tile) * sum(tiles)} denoising steps " + \
            (f"of tiles and {self.final_steps} of the full frame" if self.final_pass else "in all")
        return " ".join([f"{what} ({steps}).", *self.notes])


@dataclass
class DiffusionResult:
    path: Path
    width: int
    height: int
    tiles: int
    seconds: float
    parameters: dict
    bits: int = 8
    sizes: list[tuple[int, int]] = field(default_factory=list)  # each step's size
    final_pass: bool = False  # whether the full-frame pass was applied
    print_path: Path | None = None
    denoising: tuple[float, int] = (0.0, 0)  # (seconds, tile-steps) of this session's denoising, for `rates.record`
    enlarging: tuple[float, int] = (0.0, 0)  # (seconds, work) of this session's enlargements (`EnlargingClock`)
    denoising_key: str = ""  # the rate file's keys of both, each under its own model's compile state
    enlarging_key: str = ""


@dataclass(frozen=True)
class Stage:
    """Where a running job is, given with every progress report (`run`'s `progress(done, total, stage)`):
    its step, what the step is doing, and that stage's own tile count, which for an enlargement is the
    only count that moves (its tiles are not among the job's `done`/`total`; see the module's docstring)."""

    step: int  # 1-based; the full-frame pass comes after the last step and gives the last
    steps: int
    what: str  # ENLARGING, "pass A", "pass B", …, FULL_FRAME
    done: int  # this stage's tiles done, a resumed run's earlier ones included (an enlargement: all its
    total: int  # model passes'; Lanczos: the whole image as one tile); a total may grow after an OOM halving

    @property
    def enlarging(self) -> bool:
        return self.what == ENLARGING

    @property
    def label(self) -> str:
        """"step 1 of 2: enlarging", "step 2 of 2: pass A", "full-frame pass"."""
        return self.what if self.what == FULL_FRAME else f"step {self.step} of {self.steps}: {self.what}"


def pass_name(k: int) -> str:
    """Pass `k` (1-based) of a step: "A", "B", … (a number past H)."""
    return PASS_NAMES[k - 1] if k <= len(PASS_NAMES) else str(k)


def effective_steps(steps: int, denoise: float, family: str = "flux") -> tuple[int, int]:
    """(steps to ask for, steps diffusers will run): img2img runs about steps × denoise of them
    (`img2img_steps`: exactly as the family's pipeline counts), and its strength is runs / asked. We ask
    for the fewest steps, at least `steps`, whose strength is within 10 % of `denoise` (0.01 at least):
    4 steps at 0.3 run 2 of 4, a strength of 0.5, where 4 of 13 is 0.31."""
    from blk.generate.text_to_image import img2img_steps

    if not MIN_DENOISE <= denoise <= 1:  # below, one step really run needs more than MAX_ASKED_STEPS asked
        raise UserError(f"Denoise must be between {MIN_DENOISE:g} and 1; got {denoise:g}.")
    tolerance = max(0.01, 0.1 * denoise)
    # never fewer than one step really run: `img2img_steps` says 1 where SDXL's int(asked × denoise) runs none
    first = next(a for a in range(max(steps, math.ceil(1 / denoise) - 1), 10**6) if int(a * denoise) >= 1)
    candidates = range(first, max(first, MAX_ASKED_STEPS) + 1)

    def miss(asked: int) -> float:
        return abs(img2img_steps(family, asked, denoise) / asked - denoise)

    asked = next((a for a in candidates if miss(a) <= tolerance), None) or min(candidates, key=miss)
    return asked, img2img_steps(family, asked, denoise)


def step_sizes(width: int, height: int, target: tuple[int, int], step: float) -> list[tuple[int, int]]:
    """Each step's size: the fewest equal steps of at most `step`× (per axis, so --size may change the
    aspect) from the input to `target`; the last is exactly `target`."""
    if not step > 1:
        raise UserError(f"Each step must enlarge: give a step factor above 1, like 2 or 4; got {step:g}.")
    tw, th = target
    fx, fy = tw / width, th / height
    count = max(1, math.ceil(math.log(max(fx, fy)) / math.log(step) - 1e-9))
    return [(round(width * fx ** (k / count)), round(height * fy ** (k / count))) for k in range(1, count)] \
        + [(tw, th)]


def tile_notes(job: DiffusionJob, tiny: bool) -> list[str]:
    """A notice when the tile or overlap is outside what real models work well at (tiny test models
    draw at any size, so none for them); a notice, not an error: it may be a deliberate choice."""
    if tiny or (TILE_RANGE[0] <= job.tile <= TILE_RANGE[1] and OVERLAP_RANGE[0] <= job.overlap <= OVERLAP_RANGE[1]):
        return []
    return [f"Tiles of {job.tile} px with {job.overlap} px overlap are outside what the diffusion path is made "
            f"for ({TILE_RANGE[0]}–{TILE_RANGE[1]} px tiles, {OVERLAP_RANGE[0]}–{OVERLAP_RANGE[1]} px overlap, "
            "in pixels of the enlarged image), so expect weaker texture or visible seams."]


def full_frame_budget(job: DiffusionJob, width: int, height: int, device: str | None = None) -> tuple[int, int]:
    """(bytes the full-frame pass needs about, bytes it may use): half a GPU's free memory, a quarter of
    free RAM (a CPU has no out-of-memory error: the system kills the process), as the tiler's budget."""
    from blk.models.device import pick_device, pick_dtype
    from blk.upscale.tiler import free_memory

    device = device or pick_device(job.device)
    per_pixel = FULL_FRAME_BYTES_PER_PIXEL * pick_dtype(device).itemsize // (4 if job.memory.vae_tiling else 1)
    if job.final_max_pixels is not None:
        return width * height * per_pixel, job.final_max_pixels * per_pixel
    free = free_memory(device)
    return width * height * per_pixel, free // 2 if device.startswith("cuda") else free // 4


def _too_big_note(width: int, height: int, need: int, budget: int) -> str:
    return (f"The full-frame pass is left out: a {width}×{height} frame needs about {need / 2**30:.1f} GB and "
            f"about {budget / 2**30:.1f} GB is free for it; the tiled result is kept.")


def plan(job: DiffusionJob, width: int, height: int, default_steps: int, multiple_of: int = 1,
         family: str = "flux", final_pass: bool | None = None, enlarge_scale: int | None = None) -> DiffusionPlan:
    """What a job will do; `multiple_of` is the model family's size grid (`SIZE_MULTIPLE`), which the
    tile layout rounds to; `family` counts the steps its img2img runs. `final_pass`: whether the full-frame
    pass runs, as the job decided when it began (a resume); None: decided now, from the memory free.
    `enlarge_scale`: the upscaler's scale, for the enlargements' work (not known: no work, so no time for them)."""
    from blk.models.registry import KNOWN_MODELS
    from blk.upscale.esrgan import target_size

    tw, th = target_size(width, height, job.scale, job.size)
    if not job.passes:
        raise UserError("Choose at least one refinement pass.")
    if 2 * job.overlap > job.tile:  # an image smaller than a tile is one tile along that side: no overlap there
        raise UserError(f"An overlap of {job.overlap} px needs tiles of at least {2 * job.overlap} px.")
    if not STEP_RANGE[0] <= job.step <= STEP_RANGE[1]:  # 1.01 made 140 steps of 2404 tiles for a ×4 job
        raise UserError(f"The largest enlargement per step is from {STEP_RANGE[0]:g} to {STEP_RANGE[1]:g}; "
                        f"got {job.step:g}.")
    sizes = step_sizes(width, height, (tw, th), job.step)
    tiles = [count_tiles(w, h, job.tile, job.overlap, multiple_of, full_size=True) for w, h in sizes]
    steps = job.steps or default_steps
    known = KNOWN_MODELS.get(job.model)
    notes = tile_notes(job, bool(known and known.tiny))
    final = job.final_denoise is not None
    if final and final_pass is not None:
        final = final_pass
        if not final:
            notes.append("The full-frame pass is left out, as when this job began (too little memory was free "
                         "for it then); the tiled result is kept.")
    elif final:
        need, budget = full_frame_budget(job, tw, th)
        if need > budget:
            final = False
            notes.append(_too_big_note(tw, th, need, budget))
    final_steps = effective_steps(steps, job.final_denoise, family)[1] if final else 0
    return DiffusionPlan(tw, th, tiles[-1], len(job.passes), final,
                         [effective_steps(steps, p.denoise, family)[1] for p in job.passes], sizes, tiles, notes,
                         final_steps * frame_tiles(job, tw, th), final_steps,
                         enlarge_work((width, height), sizes, enlarge_scale)
                         if job.enlarge_model is None or enlarge_scale else [])


def enlarge_work(source: tuple[int, int], sizes: list[tuple[int, int]], scale: int | None) -> list[int]:
    """Each step's enlargement in the rate file's unit: an upscaler's pixels out of the model (every pass's input
    × scale², `esrgan.pass_inputs`: a ×4 model asked for 2× still runs its whole ×4 and shrinks, twice the work
    per pixel made of a 4× step), Lanczos's pixels made."""
    from blk.upscale.esrgan import pass_inputs

    work, start = [], source
    for size in sizes:
        if scale:
            work.append(sum(w * h * scale * scale for w, h in pass_inputs(*start, scale, size)))
        else:
            work.append(size[0] * size[1])
        start = size
    return work


def frame_tiles(job: DiffusionJob, width: int, height: int) -> int:
    """What one step of the full-frame pass counts in tile-steps: as many as the frame holds tiles by area (a
    step's time grows with its pixels), so that one rate per tile-step times the whole job."""
    return math.ceil(width * height / (min(job.tile, width) * min(job.tile, height)))


def denoising_rate_key(job: DiffusionJob, compiled: bool | None = None) -> str:
    """The rate file's key for a job's denoising (seconds per tile-step): its base model and tile size."""
    from blk.upscale.rates import rate_key

    return rate_key("diffusion", job.model, job.tile, job.memory.compile if compiled is None else compiled)


def enlarge_rate_key(job: DiffusionJob, compiled: bool | None = None) -> str:
    """The rate file's key for a job's enlargements (seconds per unit of `enlarge_work`): its upscaler, or
    Lanczos."""
    from blk.upscale.rates import rate_key

    name = job.enlarge_model.name if job.enlarge_model is not None else "lanczos"
    compiled = job.memory.compile if compiled is None else compiled
    return rate_key("enlarge", name, job.enlarge_tile, compiled and job.enlarge_model is not None)


def model_defaults(name: str, workspace) -> tuple[int, int, str]:
    """(default steps, size grid, family) of a base model without building or loading it: a known model's
    from the registry, another's from its files (`resolve` reads headers only), so Estimate stays instant."""
    from blk.generate.sketch import generation_defaults
    from blk.models.registry import KNOWN_MODELS, resolve

    known = KNOWN_MODELS.get(name)
    if known is not None:
        return known.default_steps, SIZE_MULTIPLE[known.family], known.family
    model = resolve(name, workspace, build_tiny=False)
    return generation_defaults(model)[0], SIZE_MULTIPLE[model.family], model.family


def estimate(job: DiffusionJob, workspace) -> DiffusionPlan:
    """The plan of `job` without running it (the UI's Estimate): reads the input's header and the
    model's defaults; loads no pipeline and builds no tiny model. Where an interrupted run of the job is
    kept at `job.output`, the plan is the one its resume follows (its full-frame decision), with a note on
    where it continues."""
    from blk.models.device import pick_device
    from blk.models.registry import resolve

    check_files(job)
    image = open_input(job.input)
    steps, grid, family = model_defaults(job.model, workspace)
    check_lora_family(job, family)
    scale = upscaler_scale(job)
    the_plan = plan(job, image.width, image.height, steps, grid, family, enlarge_scale=scale)
    if not Journal.path_for(job.output).is_file():
        return the_plan  # nothing to resume: the input is not hashed (seconds for a multi-GB file)
    key = resume_key(job, resolve(job.model, workspace, build_tiny=False), the_plan, cached_file_sha256(job.input),
                     pick_device(job.device))
    per_step = 1 + len(job.passes)
    final = len(the_plan.sizes) * per_step
    state = Journal.peek(job.output, key, final + 1)
    if state is None:
        return the_plan
    decided = state.get("decided", {}).get("final_pass")
    if decided is not None and decided != the_plan.final_pass:
        the_plan = plan(job, image.width, image.height, steps, grid, family, decided, scale)
    stage_tiles = resumed_stage_tiles(job, the_plan, state, grid)
    first = min(state.get("pass", 0), final + 1)
    note = _resume_note(state, first, per_step, len(the_plan.sizes), the_plan.final_pass, stage_tiles)
    the_plan.notes.append(note.replace("Resuming an interrupted job", "Starting resumes the interrupted job", 1))
    count_done(the_plan, state, stage_tiles)
    return the_plan


def resumed_stage_tiles(job: DiffusionJob, the_plan: DiffusionPlan, state: dict, multiple_of: int) -> list[int]:
    """Each stage's tiles as a resume of journal `state` counts them (enlargements 0, the full-frame pass 1 when
    planned): finished passes as many as they took, the rest at the tile size the journal holds (an earlier run's
    out-of-memory halving), the pass it continues from where it stopped. One count for `run` and `estimate`."""
    per_step = 1 + len(job.passes)
    final = len(the_plan.sizes) * per_step
    stage_tiles = [n if k else 0 for n in the_plan.tiles for k in range(per_step)] + [int(the_plan.final_pass)]
    first = min(state.get("pass", 0), final + 1)
    tile = state.get("tile") or job.tile
    if tile != job.tile:  # the stages left are tiled at the halved size
        start = {name: state[name] for name in ("origin_fade", "rows_done", "tiles_done") if name in state}
        for stage in range(first, final):
            if stage % per_step:
                w, h = the_plan.sizes[stage // per_step]
                stage_tiles[stage] = tiles_from(start if stage == first else None, w, h, tile, job.overlap,
                                                multiple_of)
    for stage in range(min(first, final)):
        stage_tiles[stage] = state.get("tiles_of", {}).get(str(stage)) or stage_tiles[stage]
    return stage_tiles


def count_done(the_plan: DiffusionPlan, state: dict, stage_tiles: list[int]) -> None:
    """Set the plan's `work_done` and `enlarge_done` from a resumed job's journal `state`: its finished stages and
    the finished tiles of the stage it continues; `stage_tiles`: `resumed_stage_tiles`."""
    per_step = 1 + the_plan.passes
    final = len(the_plan.sizes) * per_step
    first, tiles_done = state.get("pass", 0), state.get("tiles_done", 0)
    denoised = enlarged = 0
    for stage in range(min(first + 1, final)):
        step, k = divmod(stage, per_step)
        if k == 0:
            enlarged += the_plan.enlarge_work[step] if stage < first and the_plan.enlarge_work else 0
        else:
            tiles = stage_tiles[stage] if stage < first else min(tiles_done, stage_tiles[stage])
            denoised += tiles * the_plan.steps_per_tile[k - 1]
    if first > final:
        denoised += the_plan.final_work
    the_plan.work_done, the_plan.enlarge_done = denoised, enlarged


def resume_key(job: DiffusionJob, model, the_plan: DiffusionPlan, input_sha256: str, device: str) -> str:
    """What decides the job's pixels, hashed: a journal under another key is another job's, started afresh.
    `model`: the resolved base model; `device`: the one picked (not "auto")."""
    from blk.models.device import pick_dtype
    from blk.models.pipelines import lora_sha256

    return job_key({"path": "diffusion", "input_sha256": input_sha256, "model": model.name,
                    "model_path": str(model.path), "output": str(job.output.resolve()),
                    "size": [the_plan.width, the_plan.height], "step_sizes": the_plan.sizes,
                    "lora_sha256": lora_sha256(job.texture_lora) if job.texture_lora else None,
                    "enlarge_sha256": cached_file_sha256(job.enlarge_model) if job.enlarge_model else None,
                    "enlarge_tile": job.enlarge_tile,
                    "passes": [[p.denoise, p.lora_scale] for p in job.passes], "tile": job.tile,
                    "overlap": job.overlap, "seed": job.seed, "steps": job.steps, "guidance": job.guidance,
                    "prompt": job.prompt, "final_denoise": job.final_denoise, "device": device.split(":")[0],
                    "precision": str(pick_dtype(device))})


def upscaler_scale(job: DiffusionJob, load: bool = True) -> int | None:
    """The enlargement model's scale (None without one), from `FACTS` when this process has loaded the file,
    else by loading it once on the CPU (`upscaler_facts`); `load=False`: None when not known without it."""
    from blk.upscale.models import FACTS, upscaler_facts

    if job.enlarge_model is None:
        return None
    if not load:
        known = FACTS.get(FACTS.key(job.enlarge_model))
        return None if known is None or isinstance(known, str) else known.scale
    return upscaler_facts(job.enlarge_model).scale


def check_files(job: DiffusionJob) -> None:
    """The texture LoRA (whole, at a strength in range) and the enlargement model are there: said before any
    work, in Estimate too (a missing upscaler file escaped from the first enlargement as the operating system's
    error)."""
    from blk.generate.sketch import STRENGTH_RANGE
    from blk.models.registry import check_safetensors_whole

    if not job.model:
        raise UserError("Choose a base model.")
    if job.texture_lora is not None:
        require_file(job.texture_lora, "The texture LoRA")
        # unreadable or cut short: said after the enlargement, whose work was then deleted with the job's files
        check_safetensors_whole(job.texture_lora)
        low, high = STRENGTH_RANGE  # as Sketch's: 50 or -7 ran and wrote a picture fallen apart
        for strength in {p.lora_scale for p in job.passes}:
            if not (math.isfinite(strength) and low <= strength <= high):
                raise UserError(f"A LoRA's strength goes from {low:g} to {high:g}; {job.texture_lora.name} has "
                                f"{strength:g}.")
    if job.enlarge_model is not None:
        require_file(job.enlarge_model, "The upscaler model")


def check_lora_family(job: DiffusionJob, family: str) -> None:
    """A texture LoRA made for another family fits none of the model's weights: said before any work (it was
    refused at pass A, after the enlargement had run, and that work was deleted with the job)."""
    from blk.generate.lora_family import family_mismatch

    if job.texture_lora is not None and (problem := family_mismatch(job.texture_lora, family)):
        raise UserError(problem)


def run(job: DiffusionJob, workspace, pipelines=None, progress: Callable[[int, int, Stage], None] | None = None,
        cancel: threading.Event | None = None, log: Callable[[str], None] | None = None,
        on_plan: Callable[[DiffusionPlan], None] | None = None) -> DiffusionResult:
    """Enlarge and refine step by step, write TIFF or PNG (and the print copy) with the parameters;
    returns where and how long. `progress(done, total, stage)`: see the module's docstring. `log`
    receives one-sentence notes; `on_plan` the plan, before any stage runs (its notes follow in `log`,
    so a caller that shows the plan sees them first there).

    Like the ESRGAN path, a killed job resumes from its last finished row of
    tiles when the same job runs again (`blk.upscale.journal`).
    """
    from blk.generate.sketch import generation_defaults
    from blk.models import speed
    from blk.models.device import free_device_memory, is_out_of_memory, pick_device
    from blk.models.pipelines import PipelineCache, lora_sha256, set_loras
    from blk.models.registry import resolve

    started = time.monotonic()
    say = log or (lambda text: None)
    fmt = output_format(job.output)
    check_outputs(job.input, job.output, job.print_dpi, job.dpi)
    check_files(job)
    model = resolve(job.model, workspace)
    check_lora_family(job, model.family)
    default_steps, default_guidance = generation_defaults(model)
    image = open_input(job.input)
    for note in input_notes(job.input):
        say(note)
    multiple = SIZE_MULTIPLE[model.family]
    scale = upscaler_scale(job, load=False)  # the job loads the upscaler once, on its device, when it enlarges
    the_plan = plan(job, image.width, image.height, default_steps, multiple, model.family, enlarge_scale=scale)
    width, height, sizes = the_plan.width, the_plan.height, the_plan.sizes
    bits = 16 if job.keep_16bit and image.bit_depth == 16 else 8
    if fmt == "png":
        check_png(width, height, bits)
    icc = read_icc(job.icc, image.grey) if job.icc else image.icc
    if job.memory.compile and (problem := speed.compile_problem(pick_device(job.device))):
        raise UserError(problem)  # before any work: the enlargement compiles too, ahead of the denoiser's check
    input_sha256 = cached_file_sha256(job.input)
    device = pick_device(job.device)  # what the tiles are drawn on, as the ESRGAN journal keys it: not "auto"
    key = resume_key(job, model, the_plan, input_sha256, device)
    # durable whatever the size (the ESRGAN path's small jobs skip the fsyncs): a row of diffusion tiles takes
    # seconds to minutes, its fsync milliseconds
    journal = Journal.begin(job.output, key, input_id=input_sha256)
    try:
        journal.check_files(len(sizes) * (1 + len(job.passes)) + 1)  # canvases gone: afresh, before the plan shows
        decided = journal.decided("final_pass", the_plan.final_pass)
        if decided != the_plan.final_pass:  # a resume, with more or less memory free than when the job began
            the_plan = plan(job, image.width, image.height, default_steps, multiple, model.family, decided, scale)
        if journal.resumed:
            count_done(the_plan, journal.state, resumed_stage_tiles(job, the_plan, journal.state, multiple))
        if on_plan:
            on_plan(the_plan)
        for note in the_plan.notes:
            say(note)
        for sentence in ([journal.replaced_sentence()] + journal.others_kept()) if log and not journal.resumed else []:
            if sentence:
                log(sentence)
    except BaseException:  # no work yet: a resumed job's files stay for the next run (and the lock is freed)
        journal.suspend() if journal.resumed else journal.discard()
        raise
    # stages: per step its enlargement, then one per pass; then the full-frame pass (`final`)
    per_step = 1 + len(job.passes)
    final = len(sizes) * per_step
    # tiles per stage, as planned; an out-of-memory halving (this run's or a resumed run's) changes them
    stage_tiles = [n if k else 0 for n in the_plan.tiles for k in range(per_step)] + [int(the_plan.final_pass)]
    done = [0]

    def recount(first_stage: int, tile: int) -> None:
        """The pass stages' tile counts from `first_stage` on at `tile` px (after this run's halving; a resumed
        run's is counted by `resumed_stage_tiles`)."""
        for stage in range(first_stage, final):
            if stage % per_step:
                w, h = sizes[stage // per_step]
                stage_tiles[stage] = tiles_from(None, w, h, tile, job.overlap, multiple)

    def tell(stage: int, n: int, of: int) -> None:
        """A progress report from journal stage `stage`, `n` of its `of` tiles done."""
        if progress is None:
            return
        step, k = divmod(stage, per_step)
        if k and stage < final:
            stage_tiles[stage] = of  # the tiler's count, in the layout it runs now (after a halving: more)
        total = sum(stage_tiles)
        if stage == final:
            progress(done[0], total, Stage(len(sizes), len(sizes), FULL_FRAME, n, of))
        else:
            what = f"pass {pass_name(k)}" if k else ENLARGING
            progress(done[0] + (n if k else 0), total, Stage(step + 1, len(sizes), what, n, of))

    used: list = []  # the pipeline once loaded: its offloaded models go back to the CPU when the job ends
    with journal.ending(), _releasing_offloaded(used):  # done, cancelled or failed: files removed; Ctrl+C: kept
        first = min(journal.state["pass"], final + 1) if journal.resumed else 0
        tile = journal.tile or job.tile  # each axis's tiles fit the image (`spans`); rows and columns may differ
        if journal.resumed:
            stage_tiles[:] = resumed_stage_tiles(job, the_plan, journal.state, multiple)
        done[0] = sum(stage_tiles[:first])  # the tiler counts the resumed pass's own tiles
        if journal.resumed:
            say(_resume_note(journal.state, first, per_step, len(sizes), the_plan.final_pass, stage_tiles))
        size_of = lambda stage: sizes[min(stage // per_step, len(sizes) - 1)]  # noqa: E731
        source = journal.reopen(first - 1, *size_of(first - 1), image.channels) if first else None
        loaded = enlarger = None
        guidance = default_guidance if job.guidance is None else job.guidance
        clock = DenoisingClock()
        enlarging = EnlargingClock()  # for the next job's estimate (`enlarge_rate_key`)

        def pipeline():
            nonlocal loaded
            if loaded is None:
                loaded = (pipelines or PipelineCache()).get(model, task="img2img", device=job.device,
                                                            memory=job.memory)
                used.append(loaded)
            return loaded

        journal.set_tile(tile)
        if not journal.resumed:  # before the first tile (a resumed job's canvases are on the disk already)
            if job.enlarge_model is not None:  # loaded now: its scale decides the enlargements' canvases
                enlarger = Enlarger.load(job.enlarge_model, job.device, job.memory.compile, say)
            check_disk_space(job.output, *disk_need(
                (image.width, image.height), sizes, len(job.passes), the_plan.final_pass, image.channels, bits,
                bool(job.print_dpi), enlarger.upscaler.scale if enlarger is not None else None),
                spill_bytes=image.spill_bytes)
        for stage in range(first, final):
            step, k = divmod(stage, per_step)
            w, h = sizes[step]
            if k == 0:
                if job.enlarge_model is not None and enlarger is None:  # once: every step uses it
                    enlarger = Enlarger.load(job.enlarge_model, job.device, job.memory.compile, say)
                enlarging.begin()
                made = _enlarge(job, image, source, w, h, journal, stage, cancel, enlarger,
                                report=lambda n, of, s=stage: (enlarging.report(n, of), tell(s, n, of)))
                work = the_plan.enlarge_work or enlarge_work((image.width, image.height), sizes,
                                                             enlarger.upscaler.scale)  # loaded now: known
                enlarging.end(work[step], model=enlarger is not None)
            else:
                one = job.passes[k - 1]
                set_loras(pipeline(), [(job.texture_lora, one.lora_scale)] if job.texture_lora else [])
                steps, ran = effective_steps(job.steps or default_steps, one.denoise, model.family)
                process = clock.timed(tile_processor(loaded, job.prompt, one.denoise, steps, guidance, job.seed), ran)
                made = journal.open_canvas(stage, w, h, source.channels)
                stats = run_tiles(_filled(source), made, process, scale=1, tile=tile, overlap=job.overlap, batch=1,
                                  multiple_of=multiple, full_size=True,  # the model's size
                                  progress=lambda n, of, s=stage: tell(s, n, of), cancel=cancel,
                                  **journal.tiler_hooks(stage, made))
                stage_tiles[stage] = stats.tiles  # as done, whatever layouts it took
                if stats.tile != tile:  # halved: the passes after it keep the smaller tile
                    tile = stats.tile
                    recount(stage + 1, tile)
            made.flush()  # on disk before the journal says the stage is done
            journal.pass_done(stage, stage_tiles[stage] if k else None)
            done[0] += stage_tiles[stage]
            if source is not None:
                journal.forget(source)  # the previous stage is no longer needed
            source = made
        applied = first > final  # an interrupted run had finished the full-frame pass
        if first <= final and the_plan.final_pass:  # decided once, by the plan the estimate showed
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            tell(final, 0, 1)  # before it starts: the whole frame may take as long as many tiles
            set_loras(pipeline(), [(job.texture_lora, job.passes[-1].lora_scale)] if job.texture_lora else [])
            steps, _ = effective_steps(job.steps or default_steps, job.final_denoise, model.family)
            process = clock.timed(tile_processor(pipeline(), job.prompt, job.final_denoise, steps, guidance, job.seed),
                                  the_plan.final_work)
            whole, skipped = None, None
            need, budget = full_frame_budget(job, width, height, device)
            if not device.startswith("cuda") and need > budget:
                # RAM the model took since the plan: a CPU has no out-of-memory error to catch (the system kills
                # the process, and a resume would try again), so it is checked again here; a GPU's is caught
                skipped = _too_big_note(width, height, need, budget)
            else:
                try:
                    whole = process(_filled(source).read(0, 0, width, height)[None])[0]
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    skipped = (f"The full-frame pass ran out of memory at {width}×{height} and was skipped; "
                               "the tiled result is kept.")
            if whole is None:
                free_device_memory()  # outside the handler: the traceback no longer pins the tensors
                say(skipped)
                stage_tiles[final] = 0  # not run: not counted
            else:
                made = journal.open_canvas(final, width, height, source.channels)
                made.write_raw(0, 0, np.clip(np.rint(whole * 65535.0), 0, 65535).astype(np.uint16))
                made.flush()
                journal.pass_done(final)
                journal.forget(source)
                source, applied = made, True
                done[0] = sum(stage_tiles)
                tell(final, 1, 1)
        parameters = {
            "job": "upscale", "path": "diffusion", "input": job.input.name, "input_width": image.width,
            "input_height": image.height, "width": width, "height": height, "model": model.name,
            "prompt": job.prompt, "seed": job.seed, "steps": job.steps or default_steps, "guidance": guidance,
            "passes": [{"denoise": p.denoise, "lora_scale": p.lora_scale} for p in job.passes],
            "step_sizes": [list(s) for s in sizes], "final_denoise": job.final_denoise if applied else None,
            "tile": tile, "overlap": job.overlap, "enlarge": job.enlarge_model.name if job.enlarge_model else "lanczos",
            "loras": [{"name": job.texture_lora.name, "sha256": lora_sha256(job.texture_lora)}]
            if job.texture_lora else [], "bits": bits,
        }
        ran = ([loaded.denoiser] if loaded is not None else []) + \
            ([enlarger.upscaler.descriptor.model] if enlarger is not None else [])  # in this process
        if job.memory.compile and ran and all(speed.is_compiled(model) for model in ran):  # not after a fallback
            parameters["compile"] = True
        dpi = job.dpi or image.resolution
        write_result(source, job.output, bits=bits, icc=icc, dpi=dpi, parameters=parameters,
                     print_dpi=job.print_dpi, print_background=job.print_background, journal=journal, cancel=cancel,
                     grey=image.grey, input_path=job.input)
    # each model's pace under its own compile state: one that fell back beside a compiled one is timed uncompiled
    denoiser_compiled = loaded is not None and speed.is_compiled(loaded.denoiser)
    enlarger_compiled = enlarger is not None and speed.is_compiled(enlarger.upscaler.descriptor.model)
    return DiffusionResult(job.output, width, height, sum(stage_tiles), time.monotonic() - started, parameters, bits,
                           sizes, applied, print_path(job.output) if job.print_dpi else None, clock.measured(),
                           (enlarging.seconds, enlarging.work), denoising_rate_key(job, denoiser_compiled),
                           enlarge_rate_key(job, enlarger_compiled))


class DenoisingClock:
    """Seconds and tile-steps of this session's denoising (`DiffusionPlan.work`'s unit), for the rate file:
    every call but the first, which carries the model's warm-up (the only one when it was the only one);
    an enlargement between passes is not in it."""

    def __init__(self):
        self.calls: list[tuple[float, int]] = []

    def timed(self, process: Callable, work: int) -> Callable:
        """`process`, timed; each of its tiles is `work` tile-steps (a tile's steps; the full frame's)."""
        def call(tiles: np.ndarray) -> np.ndarray:
            began = time.monotonic()
            out = process(tiles)
            self.calls.append((time.monotonic() - began, len(tiles) * work))
            return out
        return call

    def measured(self) -> tuple[float, int]:
        calls = self.calls[1:] or self.calls
        return sum(seconds for seconds, _ in calls), sum(work for _, work in calls)


class EnlargingClock:
    """Seconds and work (`enlarge_work`'s unit) of this session's enlargements, for the rate file. An upscaler's
    is timed from its first finished batch of tiles on, its work counted for the tiles after it: the first
    batch carries the model's warm-up, or the compiler's (10 s on an H100 against 0.2 s a call after), and a
    resumed enlargement's finished tiles are not this session's. Lanczos has no warm-up: timed whole."""

    def __init__(self):
        self.seconds, self.work = 0.0, 0

    def begin(self) -> None:
        self._began, self._first, self._since, self._total = time.monotonic(), None, None, 0

    def report(self, done: int, total: int) -> None:
        """An enlargement's progress: its first report comes before its first tile (`_enlarge`)."""
        self._total = total
        if self._first is None:
            self._first = done
        elif self._since is None and done > self._first:
            self._since = (time.monotonic(), done)

    def end(self, work: int, model: bool) -> None:
        now = time.monotonic()
        if not model:
            self.seconds, self.work = self.seconds + now - self._began, self.work + work
        elif self._since is not None and self._total > self._since[1]:
            then, done = self._since
            self.seconds += now - then
            self.work += round(work * (self._total - done) / self._total)


def disk_need(input_size: tuple[int, int], sizes: list[tuple[int, int]], passes: int, final_pass: bool,
              channels: int, bits: int, print_copy: bool, enlarge_scale: int | None = None) -> tuple[list[int], int]:
    """(bytes of canvases on disk at each moment of the job, bytes of the result's pixels) for `canvas.
    check_disk_space`: each step's enlargement beside the canvas it starts from (an ESRGAN enlargement's own
    chain of passes, `enlarge_scale` its model's scale; Lanczos: a copy of the input, on the first step), each
    pass's canvas beside the one it refines, and the full-frame pass's likewise."""
    from blk.upscale.esrgan import canvas_bytes, chain_canvases, pass_inputs, result_bytes

    def canvas(size: tuple[int, int]) -> int:
        return canvas_bytes(size, channels)

    moments, given = [], None  # `given`: the previous step's canvas (none: the first step reads the input file)
    for size in sizes:
        start = given or input_size
        if enlarge_scale:
            inputs = pass_inputs(*start, enlarge_scale, size)
            outputs = [(w * enlarge_scale, h * enlarge_scale) for w, h in inputs]
            kept = canvas(given) if given else 0
            moments += [kept + c for c in chain_canvases(inputs, outputs, size, channels)]
        else:
            moments.append(canvas(start) + canvas(size))
        moments += [2 * canvas(size)] * passes
        given = size
    if final_pass:
        moments.append(2 * canvas(sizes[-1]))
    return moments, result_bytes(sizes[-1], channels, bits, print_copy)


def tiles_from(start: dict | None, width: int, height: int, tile: int, overlap: int, multiple_of: int) -> int:
    """A pass's tiles at `tile` px, as the tiler counts them: from `start` (`Journal.start_of`: the tiles it
    did, then the rows left of the layout it continues), or all of one fresh layout."""
    start = start or {}
    rows = spans(height, tile, overlap, start.get("origin_fade"), multiple_of, full_size=True)
    cols = spans(width, tile, overlap, None, multiple_of, full_size=True)
    return start.get("tiles_done", 0) + max(len(rows) - start.get("rows_done", 0), 0) * len(cols)


def _resume_note(state: dict, stage: int, per_step: int, steps: int, final_pass: bool,
                 stage_tiles: list[int]) -> str:
    """One sentence on where a resumed job continues (the journal's own counts passes, not steps); `state`:
    its journal's."""
    final = steps * per_step
    if stage > final or (stage == final and not final_pass):
        return "Resuming an interrupted job after its last pass: writing the result."
    if stage == final:
        return "Resuming an interrupted job at its full-frame pass."
    step, k = divmod(stage, per_step)
    where = f"Resuming an interrupted job at step {step + 1} of {steps}"
    if k == 0:
        return f"{where}, its enlargement."
    tile = sum(stage_tiles[:stage]) + state["tiles_done"] + 1
    return (f"{where}, pass {pass_name(k)}, tile {tile} of "
            f"{sum(stage_tiles)} (tiles of at most {state.get('tile')} px).")


@dataclass(frozen=True)
class Enlarger:
    """A job's ESRGAN model for its steps' enlargements, loaded once (`load`) and used by every step."""

    upscaler: object  # blk.upscale.models.Upscaler
    device: str
    dtype: object
    process: Callable  # the tiler's process (`esrgan.processor`)

    @classmethod
    def load(cls, path: Path, device: str, compiled: bool = False,
             log: Callable[[str], None] | None = None) -> "Enlarger":
        """`compiled`: the network's repeated block compiled, as the job compiles its denoiser."""
        from blk.models.device import pick_device
        from blk.upscale.esrgan import processor
        from blk.upscale.models import load_upscaler, pick_precision

        device = pick_device(device)
        upscaler = load_upscaler(path, device)
        dtype = pick_precision(upscaler, device)
        return cls(upscaler, device, dtype, processor(upscaler, device, dtype, compiled=compiled, log=log))


def _enlarge(job: DiffusionJob, image, source: Canvas | None, width: int, height: int, journal: Journal,
             stage: int, cancel, enlarger: Enlarger | None,
             report: Callable[[int, int], None] = lambda done, total: None) -> Canvas:
    """A step's starting point at its size, from the input (first step) or the previous step's result
    canvas: the ESRGAN path's model passes and resample (`esrgan.upscale`), or Lanczos. `report(done,
    total)` counts its tiles (all model passes'; Lanczos: one, the whole image), from a first report
    before any tile runs (a resumed enlargement's finished tiles included) to the last.

    The ESRGAN passes read the input or the previous stage's canvas directly and write canvases of a
    `child` journal of this stage (row by row, so a kill mid-enlargement resumes after its last row;
    the previous canvas is this job's, trusted under its key like any stage's); the result is renamed
    (or resampled) into this stage's canvas. No file is written in between and nothing is hashed again."""
    from blk.upscale.esrgan import EsrganJob, pass_inputs, plan_job, resample, tiles_finished, upscale

    path = journal.canvas_path(stage)
    path.unlink(missing_ok=True)  # an enlargement that a kill cut short is redone (an ESRGAN one from its last row)
    if enlarger is not None:
        given = source if source is not None else image.source
        settings = EsrganJob(job.input, job.output, job.enlarge_model, scale=None, size=(width, height),
                             tile=job.enlarge_tile, device=job.device)  # the ESRGAN path's overlap and batch
        inputs = pass_inputs(given.width, given.height, enlarger.upscaler.scale, (width, height))
        child = journal.child(f"enlarge{stage}", job_key({
            "stage": stage, "from": [given.width, given.height, given.channels], "size": [width, height],
            "device": enlarger.device, "precision": str(enlarger.dtype), "pass_inputs": inputs,
            "tile": settings.tile, "overlap": settings.overlap, "batch": settings.batch, "alpha": settings.alpha}))
        with child.ending():  # done: its files removed; Ctrl+C or a kill: kept for a resume of this stage
            child.check_files(len(inputs))
            the_plan = plan_job(settings, given, enlarger.upscaler, enlarger.device, enlarger.dtype, tile=child.tile)
            child.set_tile(the_plan.tile)
            report(tiles_finished(child.state, list(the_plan.tiles)), sum(the_plan.tiles))
            made = upscale(given, the_plan, enlarger.process, child, batch=settings.batch, progress=report,
                           cancel=cancel, into=path, pipelined=enlarger.device.startswith("cuda"))
        return journal.adopt(made.canvas)
    report(0, 1)
    original = None
    if source is None:
        start = journal.temp("original.canvas")
        start.unlink(missing_ok=True)
        source = original = journal.adopt(Canvas(start, image.width, image.height, image.channels))
        _copy_into(image.source, original, cancel)
    canvas = journal.adopt(resample(source, width, height, path, cancel))
    if original is not None:
        journal.forget(original)
    report(1, 1)
    return canvas


@contextlib.contextmanager
def _releasing_offloaded(used: list):
    """Under CPU offload, at the job's end (or failure, or cancel) every model goes back to the CPU: the tiles
    call the pipeline itself, which does so only at a normal end of a text-to-image pipeline, never of a view."""
    try:
        yield
    finally:
        for loaded in used:
            loaded.release_offloaded()


def _filled(source):
    """What img2img reads: with alpha, transparent pixels take their visible neighbours' colour first, as on the
    ESRGAN path (`FilledSource`): the enlargement leaves black there (premultiplied), which img2img would paint
    into the edges."""
    return FilledSource(source, FILL_RADIUS) if source.channels == 4 else source


def _copy_into(source, canvas: Canvas, cancel: threading.Event | None = None, band: int = 256) -> None:
    """The input's pixels as 16-bit levels in `canvas`, a band of rows at a time; `cancel` checked between."""
    for y in range(0, source.height, band):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        rows = source.read(0, y, source.width, min(band, source.height - y))
        canvas.write_raw(0, y, np.clip(np.rint(rows * 65535.0), 0, 65535).astype(np.uint16))


NOT_FINITE = ("The model drew a tile with no valid pixels (NaN or infinite values): check the LoRA's strength "
              "and the model's files.")


def tile_processor(loaded, prompt: str, denoise: float, steps: int, guidance: float, seed: int):
    """The tiler's `process` for img2img: float (N, h, w, 3|4) → same shape; alpha passes through.

    Tiles are padded (edge pixels repeated) to the family's grid and cropped
    back, so any image size works; every tile gets the same seed.
    """
    import torch

    from blk.generate.text_to_image import encode_texts

    multiple = SIZE_MULTIPLE[loaded.model.family]
    encoded: dict = {}

    def prompt_inputs() -> dict:
        """The prompt encoded once for all the tiles of this pass, after its LoRAs are set: every call encoded
        it again (T5-XXL per tile, and under CPU offload T5's 9.5 GB sent to the GPU for each tile)."""
        if not encoded:
            encoded.update(encode_texts(loaded, prompt, guidance))
        return encoded

    def process(tiles: np.ndarray) -> np.ndarray:
        outs = []
        for tile in tiles:
            h, w = tile.shape[:2]
            ph, pw = -h % multiple, -w % multiple
            rgb = np.pad(tile[..., :3], ((0, ph), (0, pw), (0, 0)), mode="edge")
            tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
            kwargs = dict(**prompt_inputs(), image=tensor, strength=denoise, num_inference_steps=steps,
                          guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed),
                          output_type="np")
            if loaded.model.family == "flux":
                kwargs |= dict(width=w + pw, height=h + ph)
            # the pipeline itself, not `loaded(...)`: no full offload round after every tile (the text encoders,
            # not called per tile, stay off the GPU); everything goes back once the job ends (`_releasing_offloaded`)
            out = np.asarray(loaded.pipe(**kwargs).images[0], dtype=np.float32)[:h, :w]
            if not np.isfinite(out).all():  # it would be written black, and the job said done
                raise UserError(NOT_FINITE)
            if tile.shape[2] == 4:
                out = np.concatenate([out, tile[..., 3:]], axis=2)
            outs.append(np.clip(out, 0.0, 1.0))
        return np.stack(outs)

    return process
