"""Upscaling models through spandrel, without ever running code stored in a file.

spandrel recognises ESRGAN / Real-ESRGAN (RealESRGAN_x4plus, x2plus with its
pixel-unshuffle input), Compact, SwinIR, HAT, DAT and more from the weights
alone, and reports scale, channels, size needs and half-precision support.

Pickles are dangerous: unpickling can call any Python function. So:
- `.pth` / `.ckpt` go through spandrel's loader, which hands `torch.load` its
  own `RestrictedUnpickler` (only OrderedDict, tensor rebuilding and storage
  classes may be named; anything else raises `UnpicklingError`).
- A zip that is a TorchScript archive is refused before loading: `torch.load`
  would hand it to `torch.jit.load`, which runs the archive's code and
  bypasses any unpickler.
- `.pt` files are loaded by `torch.load(weights_only=True)` — spandrel would
  try them as TorchScript first.
- `.safetensors` hold no code at all.
"""

from __future__ import annotations

import pickle
import re
import threading
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

from blk.errors import UserError, require_file

MODEL_SUFFIXES = (".pth", ".safetensors", ".ckpt", ".pt")
# What spandrel's and torch's restricted unpicklers say when a file names a forbidden callable.
_CODE_REFUSED = re.compile(r"is forbidden|unsupported global", re.IGNORECASE)


@dataclass(frozen=True)
class UpscalerFacts:
    """What a plan needs about a model file (scale, size needs, precisions), without its weights."""

    name: str  # file name
    architecture: str  # e.g. "ESRGAN", "SwinIR", "Compact"
    scale: int
    tags: tuple[str, ...]  # spandrel's, e.g. ("64nf", "23nb") or ("16nf", "1nb", "unshuffle")
    multiple_of: int  # input sides padded to this by spandrel; tiles should be multiples of it
    supports_half: bool
    supports_bfloat16: bool

    def dtypes(self, device: str) -> tuple[str, ...]:
        """Precisions this model can run in on `device` (half precisions on GPUs only)."""
        if device == "cpu":
            return ("float32",)
        extra = (("float16",) if self.supports_half else ()) + \
                (("bfloat16",) if self.supports_bfloat16 and device.startswith("cuda") else ())
        return ("float32", *extra)

    def describe(self) -> str:
        tags = f" ({', '.join(self.tags)})" if self.tags else ""
        return f"{self.name}: {self.architecture} ×{self.scale}{tags}"


@dataclass(frozen=True)
class Upscaler(UpscalerFacts):
    """A loaded model and the facts the tiler needs about it."""

    descriptor: object  # spandrel.ImageModelDescriptor

    def facts(self) -> UpscalerFacts:
        return UpscalerFacts(**{f.name: getattr(self, f.name) for f in fields(UpscalerFacts)})


class FactsCache:
    """The facts of every model file loaded in this process, keyed by (resolved path, mtime, size):
    the Estimate button reads a model's scale here instead of loading the file on every click, and
    a file replaced in place (another mtime or size) is loaded again. A file that could not be used
    is kept too, as its sentence: the Models tab, listed on every page load, does not read a damaged
    multi-GB file again each time."""

    def __init__(self, limit: int = 256):
        self.limit, self.entries, self.lock = limit, {}, threading.Lock()

    @staticmethod
    def key(path: Path) -> tuple[str, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None  # load_upscaler says why in one sentence
        return str(path.resolve()), stat.st_mtime_ns, stat.st_size

    def get(self, key) -> UpscalerFacts | str | None:
        with self.lock:
            return self.entries.get(key) if key else None

    def put(self, key, facts: UpscalerFacts | str) -> None:
        with self.lock:
            if key:
                self.entries.pop(key, None)
                self.entries[key] = facts
                while len(self.entries) > self.limit:
                    self.entries.pop(next(iter(self.entries)))  # the oldest


FACTS = FactsCache()


def find_upscaler(workspace, given: str | Path) -> Path:
    """An upscaler named on the command line: a path as given, or the bare name of a file in
    workspace/models/upscalers/ (`--model RealESRGAN_x4plus.pth`), where the studio keeps them."""
    path = Path(given).expanduser()
    if not path.exists() and path.name == str(given):
        kept = workspace.models / "upscalers" / path.name
        if kept.is_file():
            return kept
    return path


def load_upscaler(path: str | Path, device: str = "cpu") -> Upscaler:
    """Load an image-to-image model file; UserError with one sentence when it cannot be used."""
    path = Path(path)
    key = FACTS.key(path)  # before reading: a file replaced during the load gets a new key
    try:
        upscaler = _load(path, device)
    except UserError as exc:
        FACTS.put(key, str(exc))
        raise
    FACTS.put(key, upscaler.facts())
    return upscaler


def _load(path: Path, device: str) -> Upscaler:
    import spandrel
    import torch

    name = path.name
    require_file(path, "The model file")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise UserError(f"{name} is not a model file; upscalers come as {', '.join(MODEL_SUFFIXES)}.")
    if suffix != ".safetensors" and _is_torchscript(path):
        raise UserError(f"{name} is a TorchScript archive, which can run code when loaded; "
                        "use the plain .pth or .safetensors weights of that model instead.")
    loader = spandrel.ModelLoader(device="cpu")
    try:
        if suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            descriptor = loader.load_from_state_dict(spandrel.canonicalize_state_dict(state))
        else:
            descriptor = loader.load_from_file(path)
    except pickle.UnpicklingError as exc:
        if _CODE_REFUSED.search(str(exc)):
            raise UserError(f"{name} holds Python objects that a weights file should not contain "
                            "(loading it could run code), so it was not loaded.") from None
        raise UserError(f"{name} is damaged or not a model file ({_reason(exc)}).") from None
    except spandrel.UnsupportedModelError:
        raise UserError(f"{name} is not an upscaling model that spandrel recognises.") from None
    except Exception as exc:  # truncated zip, bad safetensors header, wrong shapes …
        raise UserError(f"{name} is damaged or not a model file ({_reason(exc)}).") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UserError(f"{name} is a {descriptor.purpose.lower()} model, not an upscaler.")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UserError(f"{name} works on {descriptor.input_channels}-channel images; "
                        "only colour (3-channel) upscalers are supported.")
    descriptor = descriptor.to(torch.device(device)).eval()
    upscaler = Upscaler(descriptor=descriptor, name=name, architecture=descriptor.architecture.name,
                        scale=int(descriptor.scale), tags=tuple(descriptor.tags),
                        multiple_of=int(descriptor.size_requirements.multiple_of),
                        supports_half=bool(descriptor.supports_half),
                        supports_bfloat16=bool(descriptor.supports_bfloat16))
    return upscaler


def upscaler_facts(path: str | Path) -> UpscalerFacts:
    """A model file's facts for a plan: from `FACTS` when this file (same path, mtime and size) was
    loaded before in this process, else by loading it once on the CPU; its sentence when it failed."""
    path = Path(path)
    known = FACTS.get(FACTS.key(path))
    if isinstance(known, str):
        raise UserError(known)
    return known or load_upscaler(path, "cpu").facts()


def pick_precision(upscaler: UpscalerFacts, device: str, requested: str = "auto"):
    """The torch dtype to run in: fp16 on GPUs where the model allows (more mantissa than bf16,
    which matters for 16-bit output), else bf16, else fp32; fp32 on the CPU."""
    import torch

    from blk.models.device import has_native_bf16

    names = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    allowed = upscaler.dtypes(device)
    if requested == "auto":
        choice = "float16" if "float16" in allowed else "bfloat16" if "bfloat16" in allowed else "float32"
        if choice == "bfloat16" and not (device.startswith("cuda") and has_native_bf16(device)):
            choice = "float32"  # emulated bfloat16 (older GPUs) is slower than float32
        return getattr(torch, choice)
    wanted = names.get(requested, requested)
    if wanted not in allowed:
        raise UserError(f"{upscaler.name} cannot run in {requested} on {device}; "
                        f"choose one of {', '.join(allowed)}.")
    return getattr(torch, wanted)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:160].rstrip(".")
