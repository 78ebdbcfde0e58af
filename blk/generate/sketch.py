"""Sketch: text to image with a base model and the artist's LoRAs, saved with its parameters.

The base pipeline stays loaded in a `PipelineCache`; LoRAs are swapped as
adapters on top of it (`set_loras`), so changing LoRAs or scales never loads
the base again. Each image is written atomically to
`outputs/sketch/YYYY-MM-DD/HHMMSS-mmm-sSEED.png` (names sort by time) with its
parameters and the AI disclosure embedded (`blk.generate.metadata`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blk.errors import UserError
from blk.generate.library import find_lora, lora_reference
from blk.generate.metadata import save_png
from blk.generate.prompt_length import prompt_length_notice
from blk.generate.sizes import SIZE_MULTIPLE, round_size
from blk.generate.text_to_image import TextToImage, encode_texts, generate
from blk.models.device import MemoryOptions, free_device_memory, is_out_of_memory
from blk.models.pipelines import LoadedPipeline, PipelineCache, lora_sha256, set_loras, \
    unused_options_notice
from blk.models.registry import ResolvedModel, resolve
from blk.workspace import Workspace, check_writable_folder

MAX_SEED = 2**32 - 1
MAX_STEPS = 500  # denoising steps of one image (FLUX.1-dev's default is 28): beyond, only time is spent
MAX_COUNT = 1000  # images of one batch: an overnight run, not a disk filled by a typo
GUIDANCE_RANGE = (0.0, 30.0)  # Flux's distilled guidance is ~3.5, SDXL's classifier-free guidance 5–9
STRENGTH_RANGE = (-1.0, 2.0)  # as Sketch's strength sliders: beyond them a LoRA's pictures fall apart


def check_numbers(steps: int | None = None, count: int = 1, guidance: float | None = None, seed: int | None = None,
                  loras: list | tuple = ()) -> None:
    """One sentence for a number no picture comes from, before any model loads: negative or absurd steps
    (numpy's linspace failed deep in the scheduler; 10⁸ steps ran until memory ran out), a count that would
    fill the disk, guidance or a LoRA strength that is NaN or out of range (a black image), a seed torch
    would silently fold (`None` or a negative seed asks for a random one)."""
    import math

    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise UserError(f"Steps go from 1 to {MAX_STEPS}; {steps} is outside (leave it out for the model's).")
    if not 1 <= count <= MAX_COUNT:
        raise UserError(f"Ask for 1 to {MAX_COUNT} images at a time; {count} is outside.")
    low, high = GUIDANCE_RANGE
    if guidance is not None and not (math.isfinite(guidance) and low <= guidance <= high):
        raise UserError(f"Guidance goes from {low:g} to {high:g}; {guidance:g} is outside.")
    if seed is not None and seed > MAX_SEED:
        raise UserError(f"Seeds are whole numbers from 0 to {MAX_SEED}; {seed} is not.")
    low, high = STRENGTH_RANGE
    for lora in loras:
        if not (math.isfinite(lora.scale) and low <= lora.scale <= high):
            raise UserError(f"A LoRA's strength goes from {low:g} to {high:g}; {Path(lora.path).name} has "
                            f"{lora.scale:g}.")


class Cancelled(UserError):
    """The user pressed cancel; images finished before it are kept."""


@dataclass(frozen=True)
class Lora:
    path: Path
    scale: float = 1.0

    @staticmethod
    def parse(text: str) -> "Lora":
        """`FILE` or `FILE:SCALE` (the scale follows the last colon). What follows a colon and is no number is
        part of the file's name when it looks like one (`C:\\x.safetensors`, `ink:v2.safetensors`) or that
        file exists; otherwise it is a strength mistyped, and said ("LF:x" read "LoRA file LF:x does not
        exist"); nan or inf is refused."""
        import math

        if not text.strip():
            raise UserError("A LoRA was given with no file name.")
        head, _, tail = text.rpartition(":")
        if head:
            try:
                scale = float(tail)
            except ValueError:
                looks_like_a_path = any(sep in tail for sep in "/\\") or Path(tail).suffix
                if not looks_like_a_path and not Path(text).exists():  # C:\x.safetensors, ink:v2.safetensors
                    raise UserError(f"{text}: the LoRA's strength after the last colon is a number, like "
                                    f"{head}:0.8.") from None
            else:
                if not math.isfinite(scale):  # nan or inf drew an all-black image without a word (the upscale path)
                    low, high = STRENGTH_RANGE  # in `check_request`'s words: the same mistake, the same sentence
                    raise UserError(f"A LoRA's strength goes from {low:g} to {high:g}; {Path(head).name} has "
                                    f"{scale:g}.")
                return Lora(Path(head), scale)
        return Lora(Path(text), 1.0)


@dataclass
class SketchRequest:
    model: str
    prompt: str = ""
    negative_prompt: str = ""  # SDXL only
    loras: list[Lora] = field(default_factory=list)
    seed: int | None = None  # None: a random seed, always reported
    width: int = 1024
    height: int = 1024
    steps: int | None = None  # None: the model's default (generation_defaults)
    guidance: float | None = None
    count: int = 1  # images, with seeds seed, seed+1, …
    memory: MemoryOptions = MemoryOptions()
    device: str = "auto"
    out_dir: Path | None = None  # None: outputs/sketch/YYYY-MM-DD/ (the UI confines paths; the CLI trusts its user)


@dataclass
class SketchResult:
    path: Path
    seed: int
    parameters: dict
    notice: str = ""


def is_distilled(model: ResolvedModel) -> bool:
    """FLUX.1-schnell and its kin: no guidance embedding, 4 steps, guidance 0."""
    if model.family != "flux":
        return False
    config = Path(model.base or model.path) / "transformer" / "config.json"
    if "schnell" in model.name.lower():
        return True
    try:
        return not json.loads(config.read_text()).get("guidance_embeds", True) if not model.single_file else False
    except (OSError, ValueError):
        return False


def generation_defaults(model: ResolvedModel) -> tuple[int, float]:
    """(steps, guidance): the known model's own (RECIPES.md: FLUX.1-dev 28 / 3.5, schnell 4 / 0), else by kind."""
    from blk.models.registry import KNOWN_MODELS

    if model.name in KNOWN_MODELS:
        known = KNOWN_MODELS[model.name]
        return known.default_steps, known.default_guidance
    if model.family == "sdxl":
        return 30, 6.0
    return (4, 0.0) if is_distilled(model) else (28, 3.5)


def defaults_for_name(name: str, workspace: Workspace) -> tuple[int, float] | None:
    """Defaults for a model name, without building or loading anything; None when it is not found."""
    from blk.models.registry import KNOWN_MODELS

    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name].default_steps, KNOWN_MODELS[name].default_guidance
    try:
        return generation_defaults(resolve(name, workspace))
    except UserError:
        return None


def lora_label(path: Path) -> str:
    """A run checkpoint reads as RUN/step-000250.safetensors; any other file by its name."""
    path = Path(path)
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def output_folder(workspace: Workspace, kind: str = "sketch") -> Path:
    folder = workspace.outputs(kind) / time.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _output_name(folder: Path, seed: int) -> Path:
    now = time.time()
    stem = time.strftime("%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}-s{seed}"
    path, n = folder / f"{stem}.png", 1
    while path.exists():
        path, n = folder / f"{stem}-{n}.png", n + 1
    return path


class Sketcher:
    """The Sketch job: keeps one base pipeline loaded across requests."""

    def __init__(self, workspace: Workspace, cache: PipelineCache | None = None):
        self.workspace = workspace
        self.cache = cache or PipelineCache()
        self.lock = threading.Lock()  # one generation at a time on one pipeline (Sketch and Review share it)

    def prepare(self, request: SketchRequest) -> tuple[LoadedPipeline, TextToImage, str]:
        """Resolve the model, load (or reuse) the pipeline, set the LoRAs, round the size.

        LoRA paths are used as given: the UI confines them to the workspace
        before they get here; the CLI trusts its user.
        """
        check_numbers(request.steps, 1, request.guidance, request.seed, request.loras)  # Review comes here
        model = resolve(request.model, self.workspace)
        width, height, notice = round_size(request.width, request.height, SIZE_MULTIPLE[model.family])
        steps, guidance = generation_defaults(model)
        loaded = self.cache.get(model, device=request.device, memory=request.memory)
        set_loras(loaded, [(lora.path, lora.scale) for lora in request.loras])
        base = TextToImage(prompt=request.prompt, width=width, height=height,
                           steps=request.steps or steps,
                           guidance=guidance if request.guidance is None else request.guidance,
                           negative_prompt=request.negative_prompt if model.family == "sdxl" else "")
        notices = [notice, unused_options_notice(request.memory, loaded.device),
                   prompt_length_notice(loaded.pipe, model.family, model.name, base.prompt, "prompt"),
                   prompt_length_notice(loaded.pipe, model.family, model.name, base.negative_prompt,
                                        "negative prompt")]
        return loaded, base, " ".join(part for part in notices if part)

    def run(self, request: SketchRequest, progress=None, cancel: threading.Event | None = None,
            on_image=None) -> list[SketchResult]:
        """Generate `count` images; `progress(done_steps, total_steps)`; `on_image(result)` as each is saved
        (on the saving thread: each PNG is written while the next image generates; all are on disk
        when this returns, also after a cancel or an error)."""
        check_numbers(count=request.count)  # the rest in `prepare`, which Review calls too
        if request.out_dir:
            check_writable_folder(request.out_dir)  # before the model loads, not after the first image
        first_seed = secrets.randbelow(MAX_SEED) if request.seed is None or request.seed < 0 else int(request.seed)
        with self.lock, ThreadPoolExecutor(max_workers=1, thread_name_prefix="blk-sketch-save") as saver:
            loaded, base, notice = self.prepare(request)
            folder = Path(request.out_dir) if request.out_dir else output_folder(self.workspace)
            folder.mkdir(parents=True, exist_ok=True)
            saves = []  # each image's PNG is encoded and written while the next one generates
            # several images of one prompt: encoded once (the LoRAs do not change within a request)
            texts = self._encode(loaded, base) if request.count > 1 else None
            try:
                for index in range(request.count):
                    seed = (first_seed + index) % (MAX_SEED + 1)
                    one = TextToImage(**{**asdict(base), "seed": seed})

                    def on_step(step, total, index=index):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled(f"Cancelled; {index} of {request.count} images "
                                            f"{'was' if index == 1 else 'were'} finished.")
                        if progress is not None:
                            progress(index * total + step, request.count * total)

                    image = self._generate(loaded, one, on_step, texts)
                    parameters = self.parameters(loaded, one, request)
                    notice = " ".join([notice, *loaded.notices]).strip()  # a compile fallback is said once
                    loaded.notices.clear()
                    saves.append(saver.submit(self._save, _output_name(folder, seed), image, seed, parameters,
                                              notice, on_image))
            finally:  # finished images are saved even when a later one is cancelled or fails
                wait(saves)
            return [save.result() for save in saves]  # the first failed save raises here

    @staticmethod
    def _save(path: Path, image, seed: int, parameters: dict, notice: str, on_image) -> SketchResult:
        result = SketchResult(save_png(path, image, parameters), seed, parameters, notice)
        if on_image is not None:
            on_image(result)
        return result

    @staticmethod
    def _generate(loaded: LoadedPipeline, request: TextToImage, on_step, texts: dict | None = None):
        return _memory_sentence_on_oom(loaded, request, lambda: generate(loaded, request, on_step, texts))

    @staticmethod
    def _encode(loaded: LoadedPipeline, request: TextToImage) -> dict:
        return _memory_sentence_on_oom(loaded, request, lambda: encode_texts(
            loaded, request.prompt, request.guidance, request.negative_prompt))

    def parameters(self, loaded: LoadedPipeline, request: TextToImage, sketch: SketchRequest) -> dict:
        return {
            "kind": "sketch", "model": loaded.model.name, "family": loaded.model.family,
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
            "steps": request.steps, "guidance": request.guidance, "width": request.width, "height": request.height,
            "loras": [{"name": lora_label(lora.path), "sha256": lora_sha256(lora.path), "scale": lora.scale,
                       "path": lora_reference(self.workspace, lora.path), "bytes": Path(lora.path).stat().st_size}
                      for lora in sketch.loras],
            "memory": asdict(loaded.memory), "device": loaded.device,
        }


def _memory_sentence_on_oom(loaded: LoadedPipeline, request: TextToImage, work):
    """`work()`, with running out of device memory said as one sentence naming the mode to try."""
    try:
        return work()
    except UserError:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    # out of memory; freed here, after the handler: inside it the traceback still holds the run's tensors
    free_device_memory()
    raise UserError(out_of_memory_sentence(loaded, request.width, request.height))


def out_of_memory_sentence(loaded: LoadedPipeline, width: int, height: int) -> str:
    """Names only the memory modes that are still off and would help here (CPU offload only on a GPU:
    on the CPU the weights are in RAM already), so the advice is never to turn on what is on."""
    memory = loaded.memory
    modes = [name for name, off in (("CPU offload", not memory.cpu_offload and loaded.device.startswith("cuda")),
                                    ("int8 weights", not memory.int8), ("VAE tiling", not memory.vae_tiling)) if off]
    if not modes:
        return f"Out of memory at {width}×{height} with every memory mode that helps here on: choose a smaller size."
    listed = modes[0] if len(modes) == 1 else ", ".join(modes[:-1]) + " or " + modes[-1]
    return f"Out of memory at {width}×{height}: turn on {listed} under Memory, or choose a smaller size."


def request_from_parameters(parameters: dict, workspace: Workspace) -> SketchRequest:
    """A request that repeats an image, from the parameters read out of its PNG (its LoRAs found on this
    machine by `find_lora`, or one sentence naming the first that is not)."""
    loras = []
    for lora in parameters.get("loras", []):
        path = find_lora(workspace, lora.get("path"), lora.get("sha256"), lora.get("bytes"))
        if path is None:
            raise UserError(f"The LoRA {lora.get('name') or lora.get('path')} is not on this machine.")
        loras.append(Lora(path, float(lora["scale"])))
    return SketchRequest(
        model=parameters.get("model", ""), prompt=parameters.get("prompt", ""),
        negative_prompt=parameters.get("negative_prompt", ""), loras=loras,
        seed=parameters.get("seed"), width=parameters.get("width", 1024), height=parameters.get("height", 1024),
        steps=parameters.get("steps"), guidance=parameters.get("guidance"))
