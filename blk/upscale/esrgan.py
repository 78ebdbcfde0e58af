"""The Real-ESRGAN path: an image file in, a larger image file out, at any size, in bounded memory.

Recipe (`run`):
1. open the input (by region when large), work out the exact target size;
2. load the model with spandrel; pick device and precision (fp16/bf16 on GPUs
   where the model allows);
3. run as many model passes as the size needs (×4 then ×4 …), each tiled into
   a canvas on disk, each pass reading the previous canvas; before the last
   pass the previous result is resized (Lanczos) to just what reaches the
   target, so ×7 with a ×4 model is ×4, ×1.75/4, ×4 — not ×16 shrunk to ×7
   (`pass_inputs`);
4. resample to the exact size with Lanczos, centre-aligned (`resample`: libvips
   streams a shrink, Pillow enlarges a band of rows at a time; premultiplied
   when there is alpha, so transparent colour cannot bleed into the edge);
   steps 3–4 are `upscale`, which the diffusion path also runs on its canvases;
5. write a tiled TIFF (BigTIFF past 4 GB) or a PNG atomically with the parameters embedded
   (a TIFF taken straight from the last pass, and its print copy, are written while that pass runs:
   `streamed_tiff`);
   with `print_dpi`, also OUT.print.tif: 8-bit RGB, alpha flattened over
   `print_background`, that DPI and the ICC profile (`canvas.write_print_tiff`).

Resume: the canvases live under a journal (`blk.upscale.journal`) that records
the next row after every finished row. A killed run (or Ctrl+C) leaves them;
running the same job again (same input and model content, output, settings)
continues from that row — with the tile size then in use — and gives the same
pixels as an uninterrupted run. Cancel keeps them once a tile is finished (the
same job started again continues); errors, and a cancel before any tile, remove
everything.

Alpha: colour and alpha are upscaled separately. Transparent pixels first take
the colour of their visible neighbours (`source.FilledSource`, why there), so
no dark fringe enters the model; visible colours are not touched. Alpha goes
through the model as a grey image (crisper edges than interpolation; or
Lanczos with `alpha="lanczos"`), then areas that were fully transparent or
fully opaque in the input (3×3 neighbourhood) are set back to exactly 0 or 1,
so a model's faint noise never makes a solid area see-through.
"""

from __future__ import annotations

import math

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from blk.data.scan import cached_file_sha256
from blk.errors import UserError
from blk.upscale import compiled_network
from blk.upscale.canvas import (Canvas, check_disk_space, check_outputs, check_png, fitting_icc, output_format,
                               print_path, read_icc, write_result)
from blk.upscale.journal import Journal, describe_state, durable_for, job_key
from blk.upscale.source import FILL_RADIUS, WHOLE_IMAGE_PIXELS, FilledSource, input_notes, open_input
from blk.upscale.streamed_tiff import StreamedResult, StreamedTiff
from blk.upscale.tiler import Cancelled, RowDone, auto_tile, check_tile, count_tiles, run_tiles

ALPHA_MODES = ("model", "lanczos")
MAX_FINAL_ENLARGE = 1.5  # beyond this, one more model pass beats interpolation
CHANNELS_LAST = True  # on CUDA (bench/upscale.py --layouts measures both)
STREAM_RESULT = True  # write a TIFF result while the last pass runs (`streamed_tiff`); False: after the tiles


@dataclass
class EsrganJob:
    """One upscale; the UI form and the CLI flags fill this same object."""

    input: Path
    output: Path
    model: Path
    scale: float | None = 4.0  # or:
    size: tuple[int, int] | None = None  # exact (width, height)
    tile: int | None = None  # input px; None: from free memory
    overlap: int = 32  # input px
    batch: int = 4  # tiles per model call
    keep_16bit: bool = False  # a 16-bit input gives a 16-bit result (TIFF)
    dpi: float | None = None  # None: the input's
    icc: Path | None = None  # an ICC profile file; None: the input's
    alpha: str = "model"  # how alpha is upscaled: "model" or "lanczos"
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    compile: bool = False  # torch.compile the network's repeated block (the first tiles wait for the compiler)
    max_pixels: int = WHOLE_IMAGE_PIXELS  # inputs above this are read by region
    print_dpi: float | None = None  # also write OUT.print.tif: 8-bit RGB, flattened, at this DPI
    print_background: tuple[int, int, int] = (255, 255, 255)  # what transparency is flattened over

    def __post_init__(self):
        self.input, self.output, self.model = Path(self.input), Path(self.output), Path(self.model)
        self.icc = Path(self.icc) if self.icc else None


@dataclass
class EsrganResult:
    path: Path
    width: int
    height: int
    bits: int
    passes: int
    tile: int
    tiles: int
    oom_retries: int
    seconds: float
    parameters: dict = field(default_factory=dict)
    resumed_from_tile: int = 0  # tiles (all passes) an interrupted earlier run had finished; 0: fresh
    print_path: Path | None = None
    # seconds: prepare (its parts: prepare.input, .load, .hash, .setup), tiles, resample, write, print
    phases: dict = field(default_factory=dict)


def check_shape(width: int, height: int, size: tuple[int, int] | None, hint: str = "") -> None:
    """One sentence when an exact size has another shape than the image: the result would be stretched, which
    an artist asking for "8000x3000" of a 4:3 drawing rarely means. The two sizes that keep the shape are named."""
    if size is None:
        return
    tw, th = int(size[0]), int(size[1])
    if tw >= 1 and th >= 1 and abs(th - tw * height / width) > max(1.0, 0.005 * th):
        by_width, by_height = (tw, max(1, round(tw * height / width))), (max(1, round(th * width / height)), th)
        raise UserError(f"{tw}×{th} would stretch the {width}×{height} image; {by_width[0]}x{by_width[1]} or "
                        f"{by_height[0]}x{by_height[1]} keep its shape{hint}.")


MAX_OUTPUT_PIXELS = 4_000_000_000  # the paper's murals reach 3 gigapixels; beyond, a typo more likely than a wall


def target_size(width: int, height: int, scale: float | None, size: tuple[int, int] | None) -> tuple[int, int]:
    """The result's size from a scale or an exact size (any shape: `check_shape` is the forms' guard), or one
    sentence: smaller than the input, or beyond `MAX_OUTPUT_PIXELS`."""
    if (scale is None) == (size is None):
        raise UserError("Give either a scale (like 4) or a target size (like 8000x6000), not both.")
    if size is not None:
        tw, th = int(size[0]), int(size[1])
    else:
        if not (math.isfinite(scale) and scale > 0):
            raise UserError(f"The scale must be a number above 0; got {scale:g}.")
        tw, th = max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5))  # halves up
    if tw < width or th < height or tw < 1 or th < 1:
        raise UserError(f"Upscaling makes images larger: {tw}×{th} is smaller than the input's "
                        f"{width}×{height}.")
    if tw * th > MAX_OUTPUT_PIXELS:
        raise UserError(f"{tw}×{th} is {tw * th / 1e9:.1f} gigapixels; the studio makes up to "
                        f"{MAX_OUTPUT_PIXELS / 1e9:.0f} (the paper's murals reach 3): choose a smaller scale or size.")
    return tw, th


def plan_passes(model_scale: int, factor: float) -> int:
    """Model passes for an overall `factor`: the fewest after which Lanczos enlarges at most 1.5×."""
    if model_scale <= 1:
        return 1
    passes = 1
    while model_scale ** passes * MAX_FINAL_ENLARGE < factor:
        passes += 1
    return passes


def pass_inputs(width: int, height: int, model_scale: int, target: tuple[int, int]) -> list[tuple[int, int]]:
    """The input size of each model pass for a `width`×`height` image made `target` large.

    Each pass multiplies by the model's scale, except that the last one starts from the previous
    result shrunk to just what lands at or above the target: ×8 with a ×4 model runs its second
    pass on the ×2 image (4× fewer pixels than on the ×4 one, and no ×16 result to shrink), ×7 on
    the ×1.75 one (rounded up, so the final Lanczos trims less than one model step: 260 → 259 px).
    Never enlarged first: interpolating before a model blurs what it sees; enlarging after it stays
    at most 1.5× (`plan_passes`)."""
    tw, th = target
    s = max(1, model_scale)
    passes = plan_passes(s, max(tw / width, th / height))
    sizes = [(width * s ** k, height * s ** k) for k in range(passes)]
    if passes > 1:  # never below the input on either axis: a stretched size (`--stretch`, 1000×100 of 100×100)
        w, h = sizes[-1]  # shrank the height to 25 px and grew it back, a quarter of its detail gone
        sizes[-1] = (max(width, min(w, -(-tw // s))), max(height, min(h, -(-th // s))))
    return sizes


@dataclass(frozen=True)
class EsrganPlan:
    """What a job will do, before it starts: `run` follows it, and the UI's estimate shows it."""

    input_width: int
    input_height: int
    width: int  # the result
    height: int
    model_scale: int
    inputs: tuple[tuple[int, int], ...]  # each model pass's input size (`pass_inputs`)
    tile: int  # input px: the job's, or the automatic one from free memory
    overlap: int
    multiple_of: int
    tiles: tuple[int, ...]  # per pass, before any out-of-memory halving (a resume's: at the tile it continues with)
    tiles_done: int = 0  # all passes: what an interrupted earlier run of the job finished, where a resume continues
    resume_note: str = ""  # an estimate's sentence on where starting the job resumes it; "" for a fresh job

    @property
    def passes(self) -> int:
        return len(self.inputs)

    @property
    def tiles_left(self) -> int:
        """The tiles still to run: all of them, less what a resumed job finished before."""
        return sum(self.tiles) - self.tiles_done

    @property
    def outputs(self) -> list[tuple[int, int]]:
        return [(w * self.model_scale, h * self.model_scale) for w, h in self.inputs]

    def sentence(self) -> str:
        total, n = sum(self.tiles), self.passes
        per_pass = f" ({' + '.join(str(t) for t in self.tiles)})" if n > 1 else ""
        said = (f"{total} tile{'s' if total != 1 else ''}{per_pass} of up to {self.tile} px in {n} model "
                f"pass{'es' if n != 1 else ''} of ×{self.model_scale}.")
        return f"{said} {self.lanczos_note}" if self.lanczos_note else said

    @property
    def lanczos_note(self) -> str:
        """A ×1 model (a restorer: denoise, de-JPEG) asked to enlarge: the enlargement is all Lanczos, which
        elsewhere enlarges at most `MAX_FINAL_ENLARGE` after a model; said, not done silently."""
        factor = max(self.width / self.input_width, self.height / self.input_height)
        if self.model_scale > 1 or factor <= MAX_FINAL_ENLARGE:
            return ""
        return (f"This is a ×1 model: it restores without enlarging, so the {factor:.3g}× enlargement after it is "
                "plain Lanczos; choose a ×2 or ×4 model to enlarge with one.")


def plan_job(job: EsrganJob, image, upscaler, device: str, dtype, tile: int | None = None) -> EsrganPlan:
    """The plan for `job` on an opened input and a loaded model; `tile` (a resumed job's) wins over the job's."""
    width, height = target_size(image.width, image.height, job.scale, job.size)
    inputs = pass_inputs(image.width, image.height, upscaler.scale, (width, height))
    # with alpha through the model, each call carries the colour tiles and their alpha tiles: twice the batch
    per_call = max(1, job.batch) * (2 if image.channels == 4 and job.alpha == "model" else 1)
    tile = tile or job.tile or auto_tile(device, batch=per_call, dtype_bytes=dtype.itemsize,
                                         multiple_of=upscaler.multiple_of, overlap=job.overlap)
    tiles = tuple(count_tiles(w, h, tile, job.overlap, upscaler.multiple_of) for w, h in inputs)
    return EsrganPlan(image.width, image.height, width, height, upscaler.scale, tuple(inputs), tile, job.overlap,
                      upscaler.multiple_of, tiles)


def canvas_bytes(size: tuple[int, int], channels: int) -> int:
    """A working canvas's bytes on disk: 16 bits per sample."""
    return size[0] * size[1] * channels * 2


def chain_canvases(inputs: list[tuple[int, int]], outputs: list[tuple[int, int]], target: tuple[int, int],
                   channels: int) -> list[int]:
    """Bytes of canvases on disk at each moment of a chain of model passes (`inputs`, `outputs`: each pass's
    sizes) and its resample to `target`: pass k's canvas beside pass k-1's (and the last pass's shrunk input),
    then the resample beside the last pass's canvas."""
    canvases = [canvas_bytes(outputs[0], channels)]
    for k in range(1, len(outputs)):
        shrunk = canvas_bytes(inputs[k], channels) if inputs[k] != outputs[k - 1] else 0
        canvases.append(canvas_bytes(outputs[k], channels) + canvas_bytes(outputs[k - 1], channels) + shrunk)
    if outputs[-1] != target:
        canvases.append(canvas_bytes(outputs[-1], channels) + canvas_bytes(target, channels))
    return canvases


def result_bytes(size: tuple[int, int], channels: int, bits: int, print_copy: bool) -> int:
    """The result's pixels (and its 8-bit RGB print copy's) before compression."""
    return size[0] * size[1] * (channels * bits // 8 + (3 if print_copy else 0))


def disk_need(the_plan: EsrganPlan, channels: int, bits: int, print_copy: bool) -> tuple[list[int], int]:
    """(bytes of canvases on disk at each moment of the job, bytes of the result's pixels) for `canvas.
    check_disk_space`."""
    target = (the_plan.width, the_plan.height)
    return (chain_canvases(the_plan.inputs, the_plan.outputs, target, channels),
            result_bytes(target, channels, bits, print_copy))


def estimate(job: EsrganJob) -> EsrganPlan:
    """The plan of `job` without running it: opens the input; the model's scale and size needs come
    from `models.FACTS` once the file was loaded in this process (else it is loaded once, on the CPU).
    Where an interrupted run of the job is kept at `job.output`, the plan is the one its resume follows (at the
    tile size it continues with), with the tiles already finished and a note on where it continues."""
    from blk.models.device import pick_device
    from blk.upscale.models import pick_precision, upscaler_facts

    image = open_input(job.input, job.max_pixels)
    device = pick_device(job.device)
    facts = upscaler_facts(job.model)
    dtype = pick_precision(facts, device, job.precision)
    the_plan = plan_job(job, image, facts, device, dtype)
    if not Journal.path_for(job.output).is_file():
        return the_plan  # nothing to resume: the input is not hashed (seconds for a multi-GB file)
    key = resume_key(job, cached_file_sha256(job.input), cached_file_sha256(job.model), device, dtype,
                     (the_plan.width, the_plan.height), list(the_plan.inputs))
    state = Journal.peek(job.output, key, the_plan.passes)
    if state is None or not (state["pass"] or state["tiles_done"]):  # killed before its first row: starts afresh
        return the_plan
    the_plan = plan_job(job, image, facts, device, dtype, tile=state["tile"])
    totals = list(the_plan.tiles)
    note = (describe_state(state, totals, begin="Starting resumes the interrupted job")
            if state["pass"] < the_plan.passes else
            "Starting resumes the interrupted job after its last tile: only the result is left to write.")
    return replace(the_plan, tiles_done=tiles_finished(state, totals), resume_note=note)


def resume_key(job: EsrganJob, input_sha256: str, model_sha256: str, device: str, dtype,
               size: tuple[int, int], inputs: list[tuple[int, int]]) -> str:
    """What decides the job's pixels, hashed: a journal under another key is another job's, started afresh (see
    blk.upscale.journal). `device`: the one picked (not "auto"); `size`: the result's; `inputs`: `pass_inputs`.
    One key for `run` and `estimate`."""
    return job_key({"path": "esrgan", "input_sha256": input_sha256, "model_sha256": model_sha256,
                    "output": str(job.output.resolve()), "size": list(size), "tile": job.tile,
                    "overlap": job.overlap, "batch": max(1, job.batch), "alpha": job.alpha, "device": device,
                    "precision": str(dtype), "passes": len(inputs), "pass_inputs": [list(i) for i in inputs]})


def run(job: EsrganJob, progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None, log: Callable[[str], None] | None = None,
        on_plan: Callable[[EsrganPlan], None] | None = None) -> EsrganResult:
    """The recipe. `log` receives one-sentence notes (e.g. that an interrupted job resumes);
    `on_plan` the plan, once the tile size is known and before any tile runs."""
    from blk.models.device import pick_device
    from blk.upscale.models import load_upscaler, pick_precision

    started = time.monotonic()
    fmt = output_format(job.output)
    if job.alpha not in ALPHA_MODES:
        raise UserError(f"Alpha can be upscaled by {' or '.join(ALPHA_MODES)}; got {job.alpha!r}.")
    check_outputs(job.input, job.output, job.print_dpi, job.dpi)
    # before the model loads and the input is hashed (minutes for a gigapixel file): the tiler says it too late
    check_tile(job.tile or max(2 * job.overlap, 1), job.overlap)

    image = open_input(job.input, job.max_pixels)
    for note in input_notes(job.input) if log else []:
        log(note)
    opened = time.monotonic()
    width, height = target_size(image.width, image.height, job.scale, job.size)
    bits = 16 if job.keep_16bit and image.bit_depth == 16 else 8
    if fmt == "png":
        check_png(width, height, bits)
    icc = read_icc(job.icc, image.grey) if job.icc else image.icc
    dpi = job.dpi or image.resolution

    device = pick_device(job.device)
    if job.compile:
        from blk.models.speed import compile_problem

        if problem := compile_problem(device):
            raise UserError(problem)
    before_load = time.monotonic()
    upscaler = load_upscaler(job.model, device)
    loaded = time.monotonic()
    dtype = pick_precision(upscaler, device, job.precision)
    factor = max(width / image.width, height / image.height)
    inputs = pass_inputs(image.width, image.height, upscaler.scale, (width, height))
    passes = len(inputs)
    batch = max(1, job.batch)
    model_sha256 = cached_file_sha256(job.model)
    input_sha256 = cached_file_sha256(job.input)
    key = resume_key(job, input_sha256, model_sha256, device, dtype, (width, height), inputs)
    hashed = time.monotonic()
    journal = Journal.begin(job.output, key, durable=durable_for(width * height), input_id=input_sha256)
    for sentence in ([journal.replaced_sentence()] + journal.others_kept()) if log and not journal.resumed else []:
        if sentence:
            log(sentence)
    with journal.ending():  # done, cancelled or failed: files removed; Ctrl+C: kept for a resume
        journal.check_files(passes)
        the_plan = plan_job(job, image, upscaler, device, dtype, tile=journal.tile)
        the_plan = replace(the_plan, tiles_done=tiles_finished(journal.state, list(the_plan.tiles)))
        journal.set_tile(the_plan.tile)
        if not journal.resumed:  # a resumed job's canvases are on the disk already
            check_disk_space(job.output, *disk_need(the_plan, image.channels, bits, print_copy=bool(job.print_dpi)),
                             spill_bytes=image.spill_bytes)
        if on_plan:
            on_plan(the_plan)
        if the_plan.lanczos_note and log:  # after the plan: a caller that shows the plan has said it already
            log(the_plan.lanczos_note)
        process = processor(upscaler, device, dtype, job.alpha, compiled=job.compile, log=log)
        streamed = streamed_result(job.output, the_plan, journal, bits=bits, icc=icc, dpi=dpi, grey=image.grey,
                                   print_dpi=job.print_dpi, print_background=job.print_background, cancel=cancel)
        try:
            up = upscale(image.source, the_plan, process, journal, batch=batch, progress=progress, cancel=cancel,
                         log=log, streamed=streamed, pipelined=device.startswith("cuda"))
            # where the time before the first tile went (the model load inside `prepare`)
            phases = {"prepare": up.started - started, "prepare.input": opened - started,
                      "prepare.load": loaded - before_load, "prepare.hash": hashed - loaded,
                      "prepare.setup": up.started - hashed} | up.phases
            source, tile = up.canvas, up.tile
            _check(cancel)
            parameters = {
                "job": "upscale", "path": "esrgan", "input": job.input.name, "input_width": image.width,
                "input_height": image.height, "width": width, "height": height, "scale": round(factor, 6),
                "model": upscaler.name, "model_sha256": model_sha256, "architecture": upscaler.architecture,
                "model_scale": upscaler.scale, "passes": passes, "tile": tile, "overlap": job.overlap,
                "precision": str(dtype).removeprefix("torch."), "bits": bits, "dpi": dpi,
            } | ({"alpha": job.alpha} if image.channels == 4 else {})
            if job.compile and compiled_network.is_compiled(upscaler.descriptor.model):  # not after a fallback
                parameters["compile"] = True
            phases |= write_result(source, job.output, bits=bits, icc=icc, dpi=dpi, parameters=parameters,
                                   print_dpi=job.print_dpi, print_background=job.print_background,
                                   journal=journal, cancel=cancel, grey=image.grey, streamed=streamed,
                                   input_path=job.input)
        finally:
            if streamed is not None:
                streamed.stop()  # after an error or a cancel: the writer ends before the journal cleans up
    return EsrganResult(job.output, width, height, bits, passes, tile, up.tiles, up.oom_retries,
                        time.monotonic() - started, parameters, resumed_from_tile=up.resumed_from_tile,
                        print_path=print_path(job.output) if job.print_dpi else None, phases=phases)


def streamed_result(output: Path, the_plan: EsrganPlan, journal: Journal, *, bits: int, icc: bytes | None,
                    dpi: float | None, grey: bool, print_dpi: float | None, print_background: tuple[int, int, int],
                    cancel: threading.Event | None) -> StreamedResult | None:
    """Writers for the result (and its print copy) while the last pass runs, when the result is a TIFF taken
    straight from that pass's canvas; None otherwise (a PNG, or a Lanczos resample to the exact size after
    the passes). Their options are `write_result`'s."""
    from functools import partial

    from blk import __version__
    from blk.upscale.canvas import print_resolution, write_print_tiff_file, write_tiff_file

    if not STREAM_RESULT or output_format(output) != "tiff" or \
            the_plan.outputs[-1] != (the_plan.width, the_plan.height):
        return None
    software, icc = f"BLK Studio {__version__}", fitting_icc(icc, grey)
    master = StreamedTiff(output, journal.temp("out.tif"),
                          partial(write_tiff_file, bits=bits, icc=icc, dpi=dpi, grey=grey, software=software,
                                  cancel=cancel))
    printed = StreamedTiff(print_path(output), journal.temp("print.tif"),
                           partial(write_print_tiff_file, dpi=print_resolution(print_dpi, dpi), icc=icc,
                                   background=tuple(print_background), software=software, cancel=cancel,
                                   grey=grey)) if print_dpi else None
    return StreamedResult(master, printed)


@dataclass
class Upscaled:
    """What `upscale` made: the result's canvas, at the plan's size, and how its tiles went."""

    canvas: Canvas
    tile: int  # after any out-of-memory halving
    tiles: int
    oom_retries: int
    resumed_from_tile: int  # tiles (all passes) an interrupted earlier run had finished; 0: fresh
    started: float  # time.monotonic() when the first pass began
    phases: dict  # seconds: tiles, and resample when there was one


def upscale(source, the_plan: EsrganPlan, process, journal: Journal, *, batch: int,
            progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
            log: Callable[[str], None] | None = None, into: Path | None = None,
            streamed: StreamedResult | None = None, pipelined: bool = False) -> Upscaled:
    """Steps 3–4 of the recipe from any `source` (an input, or another job's canvas: only ever read):
    the model passes, each tiled into a canvas of `journal`, then Lanczos to the plan's exact size;
    continues where `journal` stopped. `into`: the path the result's canvas takes, handed over (the
    journal no longer closes or removes it); by default it stays one of the journal's canvases.
    `streamed` (only when the last pass's canvas is the result: no resample) starts writing the result
    from the last pass's canvas and hears each row as it settles. `pipelined`: `process` queues its work on a GPU
    (`tiler.run_tiles`)."""
    started = time.monotonic()
    passes, inputs, outputs, channels = the_plan.passes, the_plan.inputs, the_plan.outputs, source.channels
    counter = _Progress(progress, list(the_plan.tiles))
    first = min(journal.state["pass"], passes) if journal.resumed else 0
    resumed_from = tiles_finished(journal.state, counter.totals)
    if journal.resumed:
        counter.done[:first] = counter.totals[:first]
        if log and (first or journal.state["tiles_done"]):  # killed before its first row: nothing to resume from
            log(journal.describe(counter.totals) if first < passes else
                "Resuming an interrupted job after its last tile: writing the result.")
    tile, retries, tiles = the_plan.tile, 0, 0
    current = source if first == 0 else journal.reopen(first - 1, *outputs[first - 1], channels)
    for k in range(first, passes):
        canvas = journal.open_canvas(k, *outputs[k], channels)
        done_with = [current] if k > 0 else []  # the previous pass's canvas; never the caller's source
        if (current.width, current.height) != inputs[k]:  # the last pass: shrunk to what reaches the target
            path = journal.temp(f"pass{k}.input.canvas")
            path.unlink(missing_ok=True)  # made again on a resume: the same pixels (libvips is deterministic)
            current = journal.adopt(resample(current, *inputs[k], path, cancel))
            done_with.append(current)
        feed = FilledSource(current, FILL_RADIUS) if channels == 4 else current
        hooks = journal.tiler_hooks(k, canvas)
        if streamed is not None and k == passes - 1:
            streamed.start(canvas)
            hooks["on_row_done"] = _also_settle(hooks["on_row_done"], streamed)
        stats = run_tiles(feed, canvas, process, scale=the_plan.model_scale, tile=tile, overlap=the_plan.overlap,
                          batch=batch, multiple_of=the_plan.multiple_of, progress=counter.pass_reporter(k),
                          cancel=cancel, pipelined=pipelined, **hooks)
        tile, retries, tiles = stats.tile, retries + stats.oom_retries, tiles + stats.tiles
        journal.pass_done(k)
        for used in done_with:
            journal.forget(used)  # no longer needed
        current = canvas
    phases = {"tiles": time.monotonic() - started}
    _check(cancel)
    if streamed is not None and not streamed.started:  # resumed after the last tile: the whole canvas is final
        streamed.start(current)
    if (current.width, current.height) != (the_plan.width, the_plan.height):
        path = into or journal.temp("resample.canvas")
        path.unlink(missing_ok=True)  # a resample that a kill cut short is redone
        resampled = resample(current, the_plan.width, the_plan.height, path, cancel)
        current = resampled if into else journal.adopt(resampled)
        phases["resample"] = time.monotonic() - started - phases["tiles"]
    elif into:  # the last pass's canvas is the result: renamed, never copied
        os.replace(current.path, into)
        journal.release(current).path = into
    return Upscaled(current, tile, tiles, retries, resumed_from, started, phases)


def _also_settle(on_row_done: Callable[[RowDone], None], streamed: StreamedResult) -> Callable[[RowDone], None]:
    def both(done: RowDone) -> None:
        # every write of the row is finished (the tiler calls this after them): the writer may read the rows
        # now, and compresses them while the journal fsyncs the canvas (on the last row, that is the job's end);
        # the journal records the row even when the writer has failed or seen a cancel (raised here)
        try:
            streamed.settled(done.settled)
        finally:
            on_row_done(done)

    return both


def tiles_finished(state: dict, tiles: list[int]) -> int:
    """Tiles (all passes; `tiles` per pass) that an interrupted earlier run finished, from the journal `state` it
    left: where `upscale`'s count continues from; 0 for a fresh journal's state (pass 0, no tiles done)."""
    first = min(state["pass"], len(tiles))
    return sum(tiles[:first]) + (state["tiles_done"] if first < len(tiles) else 0)


def processor(upscaler, device: str, dtype, alpha: str = "model", compiled: bool = False,
              log: Callable[[str], None] | None = None) -> Callable[[np.ndarray], object]:
    """The tiler's `process`: float32 (N, h, w, 3|4) → (N, h·s, w·s, 3|4), colour and alpha apart.

    RGB tiles come back as a torch tensor still on the device: the tiler weighs them there and
    fetches only 16-bit levels. RGBA tiles come back as numpy (alpha is snapped on the host).
    `compiled`: the network's repeated block is compiled (`compiled_network`); should the compiler fail,
    the network runs uncompiled from then on and `log` hears it once."""
    s = upscaler.scale
    upscaler.descriptor.to(dtype)  # the weights in the tiles' precision (fp16/bf16 on GPUs), not only the inputs
    if device.startswith("cuda"):
        upscaler.descriptor.model.to(memory_format=_cuda_layout())
    network = _network(upscaler.descriptor, device, dtype, compiled, log)

    def process(tiles: np.ndarray):
        n, a = len(tiles), tiles[..., 3] if tiles.shape[3] == 4 else None
        if a is None:
            return network(tiles)
        if alpha == "model":  # colour and alpha-as-grey in one call
            both = _host(network(np.concatenate([tiles[..., :3], np.repeat(a[..., None], 3, axis=3)])))
            colour, up = both[:n], both[n:].mean(axis=3)
        else:
            colour = _host(network(tiles[..., :3]))
            up = np.stack([_lanczos(one, s) for one in a])
        return np.concatenate([colour, _snap_alpha(up, a, s)[..., None]], axis=3)

    return process


def _network(descriptor, device: str, dtype, compiled: bool, log: Callable[[str], None] | None):
    """`_model` over a batch of tiles, through the compiled network when `compiled`, which falls back to the
    uncompiled network for good when the compiler fails (out of memory is not a compiler failure: the tiler
    halves the tile)."""
    if not compiled:
        return lambda tiles: _model(descriptor, tiles, device, dtype)
    from blk.models import speed
    from blk.models.device import is_out_of_memory

    compiled_network.compile_network(descriptor.model)

    def run_network(tiles: np.ndarray):
        if compiled_network.is_compiled(descriptor.model):
            try:
                return _model(descriptor, tiles, device, dtype)
            except Exception as exc:
                if not speed.is_compile_error(exc) or is_out_of_memory(exc):
                    raise
                compiled_network.uncompile(descriptor.model)
                if log:
                    log(speed.fallback_notice(exc))
        # outside the handler: its traceback no longer holds the failed call's tensors
        return _model(descriptor, tiles, device, dtype)

    return run_network


def _model(descriptor, tiles: np.ndarray, device: str, dtype):
    """(N, h, w, 3) floats → (N, h·s, w·s, 3) torch tensor on `device`, in `dtype` (a view of NCHW).

    On CUDA the tensors are channels-last, cuDNN's native half-precision layout (an H200, 1024²
    fp16 through RealESRGAN_x4plus: 280 ms against 350 NCHW; its autotuner changed nothing)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))).to(device=device, dtype=dtype)
    if device.startswith("cuda"):
        x = x.contiguous(memory_format=_cuda_layout())
    out = descriptor(x)  # spandrel: pads to the model's size needs, runs in inference mode, clamps to [0, 1]
    return out.permute(0, 2, 3, 1)


def _cuda_layout():
    import torch

    return torch.channels_last if CHANNELS_LAST else torch.contiguous_format


def _host(tensor) -> np.ndarray:
    return tensor.float().cpu().numpy()


def _lanczos(alpha: np.ndarray, scale: int) -> np.ndarray:
    from PIL import Image

    h, w = alpha.shape
    big = Image.fromarray(alpha.astype(np.float32), "F").resize((w * scale, h * scale), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(big, dtype=np.float32), 0.0, 1.0)


def _snap_alpha(up: np.ndarray, alpha: np.ndarray, scale: int) -> np.ndarray:
    """Where the input's 3×3 neighbourhood is all opaque (all clear), the output is exactly 1 (0)."""
    padded = np.pad(alpha, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = alpha.shape[1:]
    windows = [padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
    opaque = np.minimum.reduce(windows) >= 1.0
    clear = np.maximum.reduce(windows) <= 0.0
    grow = lambda mask: mask.repeat(scale, axis=1).repeat(scale, axis=2)  # noqa: E731
    return np.where(grow(opaque), 1.0, np.where(grow(clear), 0.0, up)).astype(np.float32)


def resample(canvas: Canvas, width: int, height: int, path: Path, cancel: threading.Event | None = None) -> Canvas:
    """Lanczos (3 lobes) to the exact size, from one raw canvas into another, centre-aligned: output pixel i
    samples the input at (i + 0.5) / scale − 0.5 on each axis. Premultiplied when there is alpha, so
    transparent colour cannot bleed into the edge.

    Shrinking: libvips' resize, streamed. Enlarging on either axis: Pillow, a band of rows at a time
    (`_lanczos_bands`): libvips enlarges with a bicubic affine whatever kernel it is given, sampling at
    i / scale − 0.5, half an output pixel up and left of the centre.

    `cancel` is checked between bands of an enlargement (a mural's takes minutes); libvips' shrink runs whole."""
    if width <= canvas.width and height <= canvas.height:
        return _vips_shrink(canvas, width, height, path)
    return _lanczos_bands(canvas, width, height, path, cancel)


def _vips_shrink(canvas: Canvas, width: int, height: int, path: Path) -> Canvas:
    from blk.vips import pyvips

    image = pyvips.Image.rawload(str(canvas.path), canvas.width, canvas.height, canvas.channels,
                                 format="ushort").copy(interpretation="rgb16")
    alpha = canvas.channels == 4
    if alpha:
        image = image.premultiply(max_alpha=65535)
    image = image.resize(width / canvas.width, vscale=height / canvas.height, kernel="lanczos3")
    if alpha:
        image = image.unpremultiply(max_alpha=65535)
    image = image.rint().cast("ushort")  # cast clips Lanczos overshoot to the range
    if (image.width, image.height) != (width, height):
        image = image.embed(0, 0, width, height, extend="copy")
    try:
        image.rawsave(str(path))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Canvas(path, width, height, canvas.channels, create=False)


RESAMPLE_BAND_BYTES = 32 * 2**20  # float32 result rows per band of `_lanczos_bands`


def _lanczos_bands(canvas: Canvas, width: int, height: int, path: Path,
                   cancel: threading.Event | None = None) -> Canvas:
    """Pillow's Lanczos, centre-aligned like libvips' shrink, on bands of about `RESAMPLE_BAND_BYTES` of
    result rows, each read with the input rows the kernel reaches beyond it: the same pixels as one
    resize of the whole image (to float rounding), in memory that a gigapixel result does not grow."""
    ry = canvas.height / height
    reach = 3.0 * max(1.0, ry) + 1.0  # input rows Lanczos-3 weighs either side of a result row's centre
    rows = max(1, min(height, RESAMPLE_BAND_BYTES // (width * canvas.channels * 4)))
    out = Canvas(path, width, height, canvas.channels)
    try:
        for y0 in range(0, height, rows):
            _check(cancel)
            y1 = min(height, y0 + rows)
            top = max(0, math.floor(y0 * ry - reach))
            bottom = min(canvas.height, math.ceil(y1 * ry + reach))
            band = canvas.read_raw(0, top, canvas.width, bottom - top).astype(np.float32)
            box = (0.0, y0 * ry - top, float(canvas.width), min(y1 * ry - top, float(bottom - top)))
            out.write_raw(0, y0, _lanczos_band(band, width, y1 - y0, box))
    except BaseException:
        out.remove()
        raise
    return out


def _lanczos_band(band: np.ndarray, width: int, rows: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """16-bit levels (as float32) → `rows` × `width` uint16 levels of the `box` (Pillow's: input px, may be
    fractional); premultiplied when there is alpha; overshoot clipped."""
    from PIL import Image

    alpha = band.shape[2] == 4
    if alpha:
        band[..., :3] *= band[..., 3:] / 65535.0
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(band[..., c]), "F").resize(
        (width, rows), Image.Resampling.LANCZOS, box=box)) for c in range(band.shape[2])], axis=2)
    if alpha:  # divided by alpha before its overshoot is clipped: a solid colour stays that colour
        a = out[..., 3:]
        out[..., :3] = np.where(a > 0, out[..., :3] * 65535.0 / np.maximum(a, 1e-6), 0.0)
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


class _Progress:
    """Tiles of all passes as one count; a pass's total may grow after an out-of-memory halving."""

    def __init__(self, callback, estimates: list[int]):
        self.callback, self.totals, self.done = callback, list(estimates), [0] * len(estimates)

    def pass_reporter(self, k: int):
        def report(done: int, total: int) -> None:
            self.done[k], self.totals[k] = done, total
            if self.callback:
                self.callback(sum(self.done), sum(self.totals))
        return report


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()

