"""Loaded pipelines, kept between calls, and LoRAs swapped on top of them.

Loading a base model is the slow part (tens of seconds for real weights), so
`PipelineCache` keeps one pipeline per (model, task, device, memory options)
alive and counts real loads: a second generation must not load again. LoRAs
are peft adapters on the loaded denoiser; changing which ones are active, or
their scales, never reloads the base. Adapters are never fused into weights
(fusing into int8 weights silently drops the LoRA; see STACK.md). Speed options
are applied by `blk.models.speed`: the attention backend at load, compile in
place (turning it on or off never reloads the base); under compile, every LoRA
change ends with `speed.after_adapter_change`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from blk.commands import blk_command
from blk.data.scan import cached_file_sha256
from blk.errors import UserError, require_file
from blk.models import speed
from blk.models.device import MemoryOptions, pick_device, pick_dtype
from blk.models.registry import ResolvedModel, safetensors_keys

TASKS = ("text2img", "img2img")


def _pipeline_class(family: str, task: str):
    import diffusers

    names = {
        ("flux", "text2img"): "FluxPipeline",
        ("flux", "img2img"): "FluxImg2ImgPipeline",
        ("sdxl", "text2img"): "StableDiffusionXLPipeline",
        ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
    }
    return getattr(diffusers, names[(family, task)])


def load_pipeline(model: ResolvedModel, task: str, device: str, memory: MemoryOptions, place: bool = True):
    """Load weights from local files only, place them, apply memory options.

    `place=False` leaves the weights on the CPU in the device's dtype, for a caller that moves them one by one
    (training encodes every text before the denoiser joins the GPU, so T5 and the transformer never share it)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    cls = _pipeline_class(model.family, task)
    dtype = pick_dtype(device)
    _check_speed(model, device, dtype, memory)  # before the slow part
    try:
        if model.single_file:
            pipe = _load_single_file(cls, model, dtype)
        else:
            pipe = cls.from_pretrained(str(model.path), dtype=dtype, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UserError(f"Could not load {model.name} from {model.path}: {str(exc).splitlines()[0]}") from None
    check_weights_fit(pipe, model)
    if memory.int8:
        from optimum.quanto import freeze, qint8, quantize

        denoiser = pipe.transformer if model.family == "flux" else pipe.unet
        quantize(denoiser, weights=qint8)
        freeze(denoiser)
    if memory.vae_tiling:
        pipe.vae.enable_tiling()
    if place and memory.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(gpu_id=int(device.split(":")[1]))
    elif place:
        pipe.to(device)
    denoiser = pipe.transformer if model.family == "flux" else pipe.unet
    if memory.attention and model.family == "flux":
        speed.set_attention(denoiser, memory.attention)
    if memory.compile:
        speed.compile_denoiser(denoiser)
    pipe.set_progress_bar_config(disable=True)
    return pipe


MIN_WEIGHTS_FOUND = 0.5  # of a component's parameters, by name in its files (legacy names converted on load are few)


def check_weights_fit(pipe, model: ResolvedModel) -> None:
    """Each component holds the weights its config describes, or one sentence. Files of another model in a
    component's folder left diffusers' weights unloaded ("meta": a traceback at the first `.to`) and
    transformers' text encoders silently random (a picture from noise-encoded prompts)."""
    import torch

    from blk.models.registry import safetensors_keys

    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        parameters = dict(component.named_parameters())
        empty = [key for key, value in parameters.items() if value.is_meta]
        folder = model.path / name if not model.single_file else None
        files = sorted(folder.glob("*.safetensors")) if folder is not None and folder.is_dir() else []
        saved = {key for path in files for key in safetensors_keys(path)}
        found = sum(key in saved for key in parameters) if saved else len(parameters) - len(empty)
        if parameters and (empty or found < MIN_WEIGHTS_FOUND * len(parameters)):
            where = folder or model.path
            raise UserError(f"{model.name}'s {name} does not match its config: {found} of its {len(parameters)} "
                            f"weights are in {where} — they are another model's, or the download is incomplete; "
                            "put the model's own files there.")


def _check_speed(model: ResolvedModel, device: str, dtype, memory: MemoryOptions) -> None:
    """Compile and attention choices that cannot run here are one sentence, before any weight is read."""
    problem = speed.compile_problem(device) if memory.compile else None
    if memory.attention and model.family == "flux":
        problem = problem or speed.attention_problem(memory.attention, device, dtype)
    if problem:
        raise UserError(problem)


def effective_options(model: ResolvedModel, memory: MemoryOptions, device: str) -> MemoryOptions:
    """The options as they apply to this model on this device, so that an image's parameters never claim a mode
    that was not used: the attention backend is a Flux option (SDXL's UNet attention does not go through
    diffusers' dispatcher), and CPU offload moves weights between the CPU and a GPU (with no GPU it does
    nothing)."""
    if model.family != "flux" and memory.attention:
        memory = replace(memory, attention="")
    if memory.cpu_offload and not device.startswith("cuda"):
        memory = replace(memory, cpu_offload=False)
    return memory


def unused_options_notice(asked: MemoryOptions, device: str) -> str:
    """Said when a chosen memory mode does nothing on this device (CPU offload without a GPU)."""
    if asked.cpu_offload and not device.startswith("cuda"):
        return f"CPU offload only acts on a GPU; it was not used on {device}."
    return ""


def _load_single_file(cls, model: ResolvedModel, dtype):
    """A single .safetensors checkpoint, with configs and text encoders from its family's base folder.

    Flux single files usually hold the transformer only; SDXL ones the whole model.
    """
    if model.base is None:
        fetch = "flux-dev" if model.family == "flux" else "sdxl"
        raise UserError(f"{model.path.name} is a single-file {model.family} checkpoint; it needs the base model's "
                        f"folder for its configuration and text encoders: `{blk_command(None, 'models', 'fetch', fetch)}`.")
    if model.family == "flux":
        from diffusers import FluxTransformer2DModel

        transformer = FluxTransformer2DModel.from_single_file(
            str(model.path), config=str(model.base), subfolder="transformer", dtype=dtype, local_files_only=True)
        return cls.from_pretrained(str(model.base), transformer=transformer, dtype=dtype, local_files_only=True)
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        return cls.from_single_file(str(model.path), config=str(model.base), dtype=dtype, local_files_only=True)
    except SingleFileComponentError:  # its message is a code sample for diffusers' own users
        raise UserError(f"{model.path.name} does not hold a whole SDXL model (its text encoders or VAE are missing): "
                        "use a full SDXL checkpoint, or the model's diffusers folder.") from None


@dataclass
class LoadedPipeline:
    pipe: object
    model: ResolvedModel
    device: str
    memory: MemoryOptions = MemoryOptions()
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> file path
    notices: list[str] = field(default_factory=list)  # said once to the user (compile fell back), shared with views
    base: object = None  # a view's text-to-image pipeline, which holds the CPU-offload hooks they share

    @property
    def denoiser(self):
        return self.pipe.transformer if self.model.family == "flux" else self.pipe.unet

    def __call__(self, **kwargs):
        """Run the pipeline. Under CPU offload its models go back to the CPU afterwards, also when the run is
        cancelled or fails: diffusers does so only at a normal end, and a view's own call never does (the
        hooks are its base's), so a Cancel left the denoiser on the GPU beside the next run's text encoders."""
        try:
            return self.pipe(**kwargs)
        finally:
            self.release_offloaded()

    def release_offloaded(self) -> None:
        """Under CPU offload, every model back on the CPU (a no-op otherwise)."""
        if self.memory.cpu_offload:
            (self.base or self.pipe).maybe_free_model_hooks()


class PipelineCache:
    """Keeps the most recently used model loaded; loads again only when the model, its device or its memory
    options change (compile is switched in place).

    Other tasks (img2img) are views of the loaded text-to-image pipeline
    (`from_pipe`): they share its weights and LoRA adapters, so moving between
    Sketch and Upscale never loads the model twice.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._loaded: LoadedPipeline | None = None
        self._tasks: dict[str, LoadedPipeline] = {}
        self.load_count = 0

    def get(self, model: ResolvedModel, task: str = "text2img", device: str = "auto",
            memory: MemoryOptions = MemoryOptions()) -> LoadedPipeline:
        if task not in TASKS:
            raise ValueError(task)
        device = pick_device(device)
        memory = effective_options(model, memory, device)
        key = _cache_key(model, device, memory)
        with self._lock:
            if self._key != key:
                self._release()  # free the old pipeline before loading the next
                self._loaded = LoadedPipeline(load_pipeline(model, "text2img", device, memory), model, device, memory)
                self._key = key
                self.load_count += 1
            elif memory.compile != self._loaded.memory.compile:
                self._set_compile(memory.compile)
            if task == "text2img":
                return self._loaded
            if task not in self._tasks:
                # in the loaded dtype: from_pipe casts every shared module to float32 unless told (a bf16
                # FLUX would double in place, and int8 weights refuse any cast)
                view = _pipeline_class(model.family, task).from_pipe(self._loaded.pipe, dtype=pick_dtype(device))
                view.set_progress_bar_config(disable=True)
                self._tasks[task] = LoadedPipeline(view, model, device, memory, adapters=self._loaded.adapters,
                                                   notices=self._loaded.notices, base=self._loaded.pipe)
            return self._tasks[task]

    def _release(self) -> None:
        """Drop the loaded pipeline and give its memory back before another loads: dropping the references is
        not enough, as offload hooks form reference cycles and compiled graphs hold the modules they traced
        (two FLUX models in GPU memory at once would run out of memory at the second load)."""
        import gc

        import torch

        was = self._loaded
        self._loaded, self._tasks, self._key = None, {}, None
        if was is None:
            return
        compiled = was.memory.compile
        del was
        if compiled:
            torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded_options(self, model: ResolvedModel, device: str = "auto") -> MemoryOptions | None:
        """The memory options of the loaded pipeline when it is this model on this device, else None: a job
        without memory controls of its own (Review) reuses them instead of loading the base again."""
        device = pick_device(device)
        with self._lock:
            if self._loaded is None or self._key[:3] != _cache_key(model, device, MemoryOptions())[:3]:
                return None
            return self._loaded.memory

    def _set_compile(self, on: bool) -> None:
        """Compile the loaded denoiser, or go back to eager, in place: the weights and LoRAs stay loaded."""
        loaded = self._loaded
        if on:
            problem = speed.compile_problem(loaded.device)
            if problem:
                raise UserError(problem)
            speed.compile_denoiser(loaded.denoiser)
            speed.after_adapter_change(loaded.denoiser, loaded.device)  # scalings as tensors: no recompile on rescale
        else:
            speed.uncompile(loaded.denoiser)
        for view in (loaded, *self._tasks.values()):
            view.memory = replace(view.memory, compile=on)

    def held(self) -> tuple[str, str] | None:
        """(model name, device) of the loaded pipeline, or None."""
        with self._lock:
            return (self._loaded.model.name, self._loaded.device) if self._loaded is not None else None

    def clear(self) -> None:
        with self._lock:
            self._release()


def _cache_key(model: ResolvedModel, device: str, memory: MemoryOptions) -> tuple:
    """What needs a new load: compile does not (it is switched in place, `PipelineCache._set_compile`)."""
    return (str(model.path), model.family, device, replace(memory, compile=False))


def lora_sha256(path: Path) -> str:
    """The file's sha256, hashed once per file version: LoRAs are hashed at every generation."""
    return cached_file_sha256(path)


def adapter_name(path: Path) -> str:
    """A stable adapter name from the file's content, so the same LoRA is loaded once."""
    return "lora_" + lora_sha256(path)[:16]


_PRIVATE_COPIES: dict[tuple[str, str], Path] = {}  # (sha256, file name) -> this process's own copy of a LoRA
_PRIVATE_FOLDER: list[Path] = []  # the temporary folder holding them, made on first use


def private_copy(path: Path) -> Path:
    """This process's own copy of a LoRA file, the one the pipeline loads.

    diffusers maps a LoRA file into memory and its adapter keeps reading from that mapping: a file rewritten in
    place while it is loaded (a trainer in another tool saving again under the same name) took the whole app
    down with a bus error at the next generation. A copy only this process knows is never rewritten. Copies
    live in a temporary folder removed at exit, one per content and name (in a folder named by the hash; the file
    keeps its name, which the loaders' sentences say)."""
    import atexit
    import shutil
    import tempfile

    from blk import atomic

    key = (lora_sha256(path), Path(path).name)
    if key not in _PRIVATE_COPIES or not _PRIVATE_COPIES[key].is_file():
        if not _PRIVATE_FOLDER:
            _PRIVATE_FOLDER.append(Path(tempfile.mkdtemp(prefix="blk-loras-")))
            atexit.register(shutil.rmtree, _PRIVATE_FOLDER[0], ignore_errors=True)
        copy = _PRIVATE_FOLDER[0] / key[0] / key[1]
        copy.parent.mkdir(exist_ok=True)
        atomic.write_bytes(copy, Path(path).read_bytes())
        _PRIVATE_COPIES[key] = copy
    return _PRIVATE_COPIES[key]


def _quiet_lora_loader() -> None:
    """diffusers warns at every load that a transformer-only LoRA has no text-encoder keys; that is normal."""
    import logging

    for name in ("diffusers.loaders.lora_base", "diffusers.loaders.peft"):  # a wrong-family file gets our sentence
        logging.getLogger(name).setLevel(logging.ERROR)


def _load_lora(loaded: LoadedPipeline, path: Path, name: str) -> None:
    """Load one LoRA file as a named adapter.

    On int8 (quanto) weights the pipeline-level loader fails on the quantized
    state dict, so the adapter goes straight onto the denoiser; a LoRA's
    text-encoder part, if any, is then not applied; a file in other names than
    diffusers' (kohya's, as the Train tab writes SDXL LoRAs) is converted by
    the pipeline's `lora_state_dict` first. LoKr files (`…lokr_w1`,
    `…lokr_w2`, as the Train tab writes them) take the denoiser route too: diffusers'
    pipeline loaders accept LoRA names only, its denoiser loader accepts LoKr too. LoKr files
    with LyCORIS / kohya names (`lora_unet_…lokr_w1`) are converted by `blk.models.lycoris`;
    ComfyUI-format FLUX LoRAs with `lora_A` / `lora_B` factors by `blk.models.lora_names`.
    """
    from blk.models.lora_names import kohya_factor_names, needs_factor_renaming
    from blk.models.lycoris import is_lycoris_lokr, load_lycoris_lokr

    _quiet_lora_loader()
    keys = safetensors_keys(path)
    prefix = "transformer" if loaded.model.family == "flux" else "unet"
    diffusers_names = any(key.startswith(prefix + ".") for key in keys)
    source = str(path)
    if needs_factor_renaming(keys):  # ComfyUI's FLUX names with peft's factors: renamed for diffusers to convert
        from safetensors.torch import load_file

        source = kohya_factor_names(load_file(str(path)))
    if is_lycoris_lokr(keys):
        load_lycoris_lokr(loaded.denoiser, path, loaded.model.family, name)
    elif any(".lokr_" in key for key in keys) or (loaded.memory.int8 and diffusers_names):
        loaded.denoiser.load_lora_adapter(source, prefix=prefix, adapter_name=name)
    elif loaded.memory.int8:
        options = {"return_alphas": True} if loaded.model.family == "flux" else {"unet_config": loaded.denoiser.config}
        state, alphas = type(loaded.pipe).lora_state_dict(source, **options)
        loaded.denoiser.load_lora_adapter(state, prefix=prefix, network_alphas=alphas, adapter_name=name)
    else:
        loaded.pipe.load_lora_weights(source, adapter_name=name)


def _forget_adapter(loaded: LoadedPipeline, name: str) -> None:
    """Remove what a failed load may have left behind, so the next generation is clean."""
    present = {n for names in loaded.pipe.get_list_adapters().values() for n in names}
    if name in present:
        loaded.pipe.delete_adapters([name])


def _is_lokr(path: Path) -> bool:
    return any(".lokr_" in key for key in safetensors_keys(path))


def set_loras(loaded: LoadedPipeline, loras: list[tuple[Path, float]]) -> None:
    """Make exactly these LoRAs active at these scales; others are unloaded. Base weights untouched.

    LoRA files load before LoKr files: diffusers cannot put a LoRA on a layer
    peft has wrapped as LoKr (the wrapper stays after its adapter is deleted),
    so a new LoRA on a model with LoKr layers first unloads every adapter and
    its wrappers; the stack is then reloaded from its files, LoRAs first.
    """
    wanted: dict[str, float] = {}
    paths: dict[str, Path] = {}
    for path, scale in loras:
        path = Path(path)
        require_file(path, "LoRA file")
        if path.suffix.lower() != ".safetensors":
            raise UserError(f"{path.name} is not a .safetensors LoRA file.")
        safetensors_keys(path)  # a damaged header gets its own sentence
        name = adapter_name(path)
        # two files of one content (a checkpoint and its exported copy) are one adapter: their strengths add, as
        # stacking both does (the last row's strength alone won, while the image's parameters listed both)
        paths[name], wanted[name] = path, wanted.get(name, 0.0) + float(scale)
    lokr = {name: _is_lokr(path) for name, path in paths.items()}
    if any(not lokr[name] and name not in loaded.adapters for name in wanted) and _has_lokr_layers(loaded):
        loaded.pipe.unload_lora_weights()
        loaded.adapters.clear()
    for name in sorted(wanted, key=lambda n: lokr[n]):
        if name not in loaded.adapters:
            _load_checked(loaded, paths[name], name)
    _unload(loaded, [name for name in loaded.adapters if name not in wanted])
    if wanted:
        loaded.pipe.set_adapters(list(wanted), adapter_weights=list(wanted.values()))
    if loaded.memory.compile:
        speed.after_adapter_change(loaded.denoiser, loaded.device)


def _has_lokr_layers(loaded: LoadedPipeline) -> bool:
    from peft.tuners.lokr import LoKrLayer

    return any(isinstance(module, LoKrLayer) for module in loaded.denoiser.modules())


def _load_checked(loaded: LoadedPipeline, path: Path, name: str) -> None:
    """Load one file as adapter `name`; any failure is one sentence and leaves nothing behind (naming the file
    given, not its private copy, and the other family when it is one's)."""
    from blk.errors import first_line
    from blk.generate.lora_family import family_mismatch
    from blk.models.registry import check_safetensors_whole

    if path.suffix.lower() == ".safetensors":
        check_safetensors_whole(path)
    copy = private_copy(path)
    try:
        _load_lora(loaded, copy, name)
    except UserError:  # already one sentence (a LyCORIS LoKr that does not fit, say)
        _forget_adapter(loaded, name)
        raise
    except Exception as exc:  # noqa: BLE001  (any loader failure means: not a LoRA for this model)
        _forget_adapter(loaded, name)
        said = first_line(exc).replace(str(copy), path.name)
        raise UserError(family_mismatch(path, loaded.model.family)
                        or f"{path.name} is not a LoRA for {loaded.model.family}: {said}.") from None
    present = {n for names in loaded.pipe.get_list_adapters().values() for n in names}
    if name not in present:  # diffusers only warns when no key matches this model
        raise UserError(family_mismatch(path, loaded.model.family)
                        or f"{path.name} is not a LoRA for {loaded.model.family}: none of its weights fit this model.")
    loaded.adapters[name] = str(path)


def _unload(loaded: LoadedPipeline, names: list[str]) -> None:
    if names:
        loaded.pipe.delete_adapters(names)
        for name in names:
            del loaded.adapters[name]
            _drop_private_copies(name)


def _drop_private_copies(name: str) -> None:
    """Remove the private copies of an unloaded adapter's file (made again if it is loaded again): a grid of ten
    FLUX checkpoints kept gigabytes in the temporary folder (RAM, where it is a tmpfs) until the app ended."""
    for key in [key for key in _PRIVATE_COPIES if "lora_" + key[0][:16] == name]:
        with contextlib.suppress(OSError):  # still mapped by another pipeline where the system forbids removal
            _PRIVATE_COPIES.pop(key).unlink(missing_ok=True)
