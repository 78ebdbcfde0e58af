"""Known model names and how each resolves to weights on this machine, offline.

A name resolves, in order, to: a path registered in workspace settings, a
diffusers folder `workspace/models/NAME` (a known name, or any other Flux or
SDXL folder put there), or the local Hugging Face cache. A path given instead
of a name is used as is (diffusers folder or single file), its family detected
from its contents. Nothing here downloads.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from blk.commands import blk_command, pip_install
from blk.errors import IncompleteModel, ModelNotFound, UserError
from blk.workspace import Workspace

FAMILIES = ("flux", "sdxl")


@dataclass(frozen=True)
class KnownModel:
    name: str
    family: str
    repo_id: str | None  # None for models built in code
    description: str
    default_steps: int
    default_guidance: float
    gated: bool = False

    @property
    def tiny(self) -> bool:
        return self.repo_id is None


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel("flux-dev", "flux", "black-forest-labs/FLUX.1-dev", "FLUX.1-dev (gated; non-commercial licence)", 28, 3.5, gated=True),
        KnownModel("flux-schnell", "flux", "black-forest-labs/FLUX.1-schnell", "FLUX.1-schnell (Apache-2.0, 4 steps)", 4, 0.0),
        KnownModel("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "Stable Diffusion XL base 1.0", 30, 6.0),
        KnownModel("tiny-flux", "flux", None, "random-weight Flux built in code (demo and tests)", 4, 3.5),
        KnownModel("tiny-sdxl", "sdxl", None, "random-weight SDXL built in code (demo and tests)", 4, 5.0),
    )
}

# Pipeline classes written in model_index.json, by family.
_PIPELINE_FAMILY = {
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxFillPipeline": "flux",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are. `path` is a diffusers folder or a single file."""

    name: str
    family: str
    path: Path
    source: str  # tiny | workspace | settings | hf-cache | path
    single_file: bool = False
    base: Path | None = None  # for a single file: a diffusers folder of its family (configs, text encoders)

    @property
    def is_tiny(self) -> bool:
        return self.source == "tiny"


@dataclass(frozen=True)
class ModelStatus:
    """One row of `models list`."""

    name: str
    family: str
    found: bool
    location: str
    size_bytes: int
    description: str
    problem: str = ""  # a file that is there but cannot be used: one sentence saying why

    @property
    def status(self) -> str:
        return "unusable" if self.problem else "found" if self.found else "missing"


def resolve(name_or_path: str, workspace: Workspace, *, build_tiny: bool = True) -> ResolvedModel:
    """Find local weights for a model name or path, or raise one clear sentence."""
    known = KNOWN_MODELS.get(name_or_path)
    if known is not None and known.tiny:
        from blk.models import tiny

        folder = tiny.ensure_tiny_model(known.name, workspace.models) if build_tiny else workspace.models / known.name
        return ResolvedModel(known.name, known.family, folder, "tiny")

    registered = workspace.settings.models.get(name_or_path)
    if registered:
        path = Path(registered).expanduser()
        if not path.exists():
            raise ModelNotFound(f"Model {name_or_path} is registered at {path}, but nothing is there.")
        return _from_path(name_or_path, path, "settings", workspace)

    if known is not None:
        folder = workspace.models / known.name
        fetch = f"`{blk_command(workspace, 'models', 'fetch', known.name)}`"
        if (folder / "model_index.json").exists():
            return _whole(ResolvedModel(known.name, known.family, folder, "workspace"), f"fetch it again with {fetch}")
        cached = hf_cache_snapshot(known.repo_id)
        if cached is not None:
            return _whole(ResolvedModel(known.name, known.family, cached, "hf-cache"), f"fetch it again with {fetch}")
        raise ModelNotFound(
            f"Model {known.name} ({known.repo_id}) is not on this machine; "
            f"fetch it with `{blk_command(workspace, 'models', 'fetch', known.name)}` or put a diffusers folder at {folder}."
        )

    if name_or_path in workspace_model_folders(workspace):
        folder = workspace.models / name_or_path
        return _whole(ResolvedModel(name_or_path, detect_family(folder), folder, "workspace"))
    if Path(name_or_path).name == name_or_path and (workspace.models / name_or_path).is_dir():
        # A folder of the workspace's models that is no diffusers model (empty, an upscaler's, half copied): say
        # so, rather than "Unknown model" for a folder the artist can see there.
        return _from_path(name_or_path, workspace.models / name_or_path, "workspace", workspace)

    path = Path(name_or_path).expanduser()
    if path.exists():
        return _from_path(path.stem if path.is_file() else path.name, path, "path", workspace)
    raise ModelNotFound(
        f"Unknown model {name_or_path!r}: use one of {', '.join(KNOWN_MODELS)}, a registered name, "
        "or the path of a local diffusers folder or .safetensors checkpoint."
    )


NO_WEIGHTS_CLASSES = ("Tokenizer", "TokenizerFast", "Scheduler")  # endings of component classes without weights


def folder_problem(path: Path) -> str:
    """What a diffusers folder lacks of what its model_index.json lists (a component's folder, its config, its
    weights, a shard), as one sentence; "" when whole. Loading found it out as "no file named config.json
    found in directory" naming the model's root, or a traceback; and a broken folder became every tab's
    default model."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{path} has no readable model_index.json."
    for name, entry in index.items() if isinstance(index, dict) else []:
        if name.startswith("_") or not (isinstance(entry, list) and len(entry) == 2 and all(entry)):
            continue
        folder = path / name
        if not folder.is_dir():
            return f"{path.name} has no {name}/ folder, which its model_index.json lists"
        if str(entry[1]).endswith(NO_WEIGHTS_CLASSES):
            continue
        if not (folder / "config.json").is_file():
            return f"{path.name}'s {name}/ has no config.json"
        weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
        if not weights:
            return f"{path.name}'s {name}/ has no weights file (.safetensors)"
        for file in sorted(p for p in weights if p.suffix == ".safetensors"):
            if damage := safetensors_damage(file):  # an interrupted download: the loader named no cause
                return f"{path.name}'s {name}/{damage}"
        for shards in folder.glob("*.index.json"):
            try:
                needed = set(json.loads(shards.read_text(encoding="utf-8")).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                return f"{path.name}'s {shards.name} is not readable"
            if missing := sorted(n for n in needed if not (folder / n).is_file()):
                return f"{path.name}'s {name}/ lacks {missing[0]}" + (f" and {len(missing) - 1} more shards"
                                                                      if len(missing) > 1 else "")
    return ""


def _whole(model: ResolvedModel, fix: str = "copy the whole model folder again") -> ResolvedModel:
    """`model` when its folder is whole, else one sentence saying what is missing and what to do."""
    problem = folder_problem(model.path)
    if problem:
        raise IncompleteModel(f"{problem.rstrip('.')}: the model is incomplete; {fix}.")
    return model


def workspace_model_folders(workspace: Workspace) -> list[str]:
    """The diffusers folders put in `workspace/models/` under names of the artist's own (a fine-tuned Flux, an
    SDXL checkpoint converted to diffusers): usable by name like the known models. The known names, and the
    folders of other kinds of weights there (upscalers, captioners, …: no model_index.json), are not these."""
    try:
        folders = sorted(p for p in workspace.models.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [p.name for p in folders if p.name not in KNOWN_MODELS and (p / "model_index.json").is_file()]


def _from_path(name: str, path: Path, source: str, workspace: Workspace) -> ResolvedModel:
    path = path.resolve()
    family = detect_family(path)
    if path.is_dir():
        return _whole(ResolvedModel(name, family, path, source))
    if path.suffix.lower() == ".safetensors" and (damage := safetensors_damage(path)):
        raise IncompleteModel(f"{damage}: copy or download it again.")
    return ResolvedModel(name, family, path, source, single_file=True, base=_family_base(family, workspace))


def _family_base(family: str, workspace: Workspace) -> Path | None:
    """A real diffusers model of the family, whose configs and text encoders a single file reuses."""
    for known in KNOWN_MODELS.values():
        if known.family == family and not known.tiny:
            try:
                return resolve(known.name, workspace).path
            except ModelNotFound:
                continue
    return None


def detect_family(path: Path) -> str:
    """Tell Flux from SDXL by a diffusers folder's model_index.json or a checkpoint's keys."""
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise UserError(f"{path} is not a diffusers model folder (it has no model_index.json).")
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{index} is not valid JSON.") from None
        family = _PIPELINE_FAMILY.get(class_name)
        if family is None:
            raise UserError(f"{path} holds a {class_name or 'unknown'} model; BLK Studio works with Flux.1 and SDXL.")
        return family
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path.name} is not a .safetensors checkpoint; convert pickled checkpoints to safetensors first.")
    return family_from_keys(safetensors_keys(path), path.name)


def safetensors_keys(path: Path) -> list[str]:
    """Read only the header of a .safetensors file (no tensors are loaded)."""
    return [k for k in _safetensors_header(path)[0] if k != "__metadata__"]


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """(the header, its length in bytes), or the unreadable file's sentence."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(handle.read(size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path.name} is not a readable .safetensors file.") from None
    return header, size


def check_safetensors_whole(path: Path) -> None:
    """A file cut short (an interrupted download or copy) is said as such, not as the loader's "Unable to load
    weights from checkpoint file" naming no cause (and a private copy's path)."""
    if problem := safetensors_damage(path):
        raise UserError(f"{problem}: copy or download it again.")


def safetensors_damage(path: Path) -> str:
    """"<file> is cut short (N of its M bytes)" or "<file> is not a readable .safetensors file", from its header
    and size alone (milliseconds, whatever the file's size); "" when whole."""
    try:
        header, size = _safetensors_header(path)
        have = path.stat().st_size
    except (UserError, OSError) as exc:
        return str(exc).rstrip(".") if isinstance(exc, UserError) else f"{path.name} is not readable"
    offsets = [entry.get("data_offsets") for key, entry in header.items() if key != "__metadata__"
               and isinstance(entry, dict)]
    ends = [pair[1] for pair in offsets if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], int)]
    need = 8 + size + max(ends, default=0)
    return f"{path.name} is cut short ({have:,} of its {need:,} bytes)" if have < need else ""


def family_from_keys(keys: list[str], label: str) -> str:
    """Original (BFL / Stability) and diffusers key layouts of both families."""
    joined = "\n".join(keys[:5000])
    if "double_blocks." in joined or "transformer_blocks.0.attn.add_q_proj" in joined or "single_transformer_blocks." in joined:
        return "flux"
    if "conditioner.embedders.1" in joined or ("input_blocks." in joined and "label_emb." in joined) or "add_embedding.linear_1" in joined:
        return "sdxl"
    raise UserError(f"{label} is neither a Flux.1 nor an SDXL checkpoint.")


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a repo in the Hugging Face cache, if complete enough to load."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    if isinstance(found, str) and os.path.exists(found):
        return Path(found).parent
    return None


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size  # follows HF cache symlinks to blobs
            except OSError:
                pass
    return total


def human_size(size_bytes: int) -> str:
    if not size_bytes:
        return ""
    if size_bytes < 2**20:  # a damaged file of a few bytes read "0.0 MB"
        return f"{max(1, round(size_bytes / 2**10))} KB"
    return f"{size_bytes / 2**30:.2f} GB" if size_bytes >= 2**30 else f"{size_bytes / 2**20:.1f} MB"


def list_models(workspace: Workspace) -> list[ModelStatus]:
    """Every known and registered model, found or missing, without building or loading anything."""
    rows: list[ModelStatus] = []
    for known in KNOWN_MODELS.values():
        if known.tiny:
            folder = workspace.models / known.name
            built = (folder / "model_index.json").exists()
            rows.append(ModelStatus(known.name, known.family, True,
                                    str(folder) if built else "built on first use",
                                    folder_size(folder) if built else 0, known.description))
            continue
        try:
            resolved = resolve(known.name, workspace)
            rows.append(ModelStatus(known.name, known.family, True, str(resolved.path), folder_size(resolved.path), known.description))
        except IncompleteModel as exc:  # there, but a part is missing: which, and how to fetch it again
            rows.append(ModelStatus(known.name, known.family, False, str(exc), 0, known.description))
        except ModelNotFound:
            rows.append(ModelStatus(known.name, known.family, False, f"missing — {blk_command(workspace, 'models', 'fetch', known.name)}", 0, known.description))
    own = [(name, "registered local model") for name in workspace.settings.models if name not in KNOWN_MODELS]
    own += [(name, "diffusers folder in workspace/models") for name in workspace_model_folders(workspace)
            if name not in workspace.settings.models]
    for name, description in own:
        try:
            resolved = resolve(name, workspace)
            rows.append(ModelStatus(name, resolved.family, True, str(resolved.path), folder_size(resolved.path),
                                    description))
        except UserError as exc:
            rows.append(ModelStatus(name, "?", False, str(exc), 0, description))
    return rows


def default_model(workspace: Workspace, family: str | None = None) -> tuple[str, bool]:
    """The model a tab starts with: the first real one found (the known ones first, then the artist's own,
    registered in settings or put in workspace/models), else a tiny one (demo=True)."""
    for known in KNOWN_MODELS.values():
        if known.tiny or (family and known.family != family):
            continue
        try:
            resolve(known.name, workspace)
            return known.name, False
        except ModelNotFound:
            continue
    own = [name for name in workspace.settings.models if name not in KNOWN_MODELS]
    for name in own + workspace_model_folders(workspace):
        try:
            resolved = resolve(name, workspace)
        except UserError:  # missing or damaged: not a default
            continue
        if resolved.single_file and resolved.base is None:
            continue  # it cannot load without a diffusers model of its family (configs, tokenizers)
        if resolved.family in FAMILIES and (family is None or resolved.family == family):
            return name, False
    return ("tiny-sdxl" if family == "sdxl" else "tiny-flux"), True


CAPTIONER_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"  # the captioner the README suggests


def _upscaler_row(path: Path) -> ModelStatus:
    from blk.upscale.models import upscaler_facts

    use = "Upscale: the Real-ESRGAN path, and enlarging before the diffusion passes"
    try:
        size = path.stat().st_size
        facts = upscaler_facts(path)
    except OSError:  # removed while the list was made
        return ModelStatus(path.name, "upscaler", False, f"missing — {path} was removed", 0, use)
    except UserError as exc:
        return ModelStatus(path.name, "upscaler", True, str(path), size, use, problem=str(exc))
    return ModelStatus(path.name, "upscaler", True, str(path), size, f"{use} ({facts.architecture} ×{facts.scale})")


def list_support_models(workspace: Workspace) -> list[ModelStatus]:
    """The other weights the tabs use, found or missing, read from the workspace folders and the local
    Hugging Face cache (nothing is built or downloaded): upscalers, LayerDiffuse for each family,
    BiRefNet for matting, and the captioning models.

    Upscalers are loaded once on the CPU (then remembered while the file is unchanged): a damaged or
    unrecognised file is listed as unusable with the reason, not as found, and a good one says what it is."""
    from huggingface_hub import try_to_load_from_cache

    from blk.caption.tiny_vlm import TINY_VLM_NAME
    from blk.stencil.layerdiffuse import ENCODER_FILES, FILES, REPOS
    from blk.stencil.matting import MODEL_FILE, MODEL_URL, matting_folder
    from blk.upscale.models import MODEL_SUFFIXES

    rows: list[ModelStatus] = []
    folder = workspace.models / "upscalers"
    files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    rows += [_upscaler_row(p) for p in files]
    if not files:
        rows.append(ModelStatus("RealESRGAN_x4plus.pth", "upscaler", False,
                                f"missing — put it (or any model spandrel reads) in {folder}", 0,
                                "Upscale's Real-ESRGAN path (the diffusion path works without it, with Lanczos)"))
    layers = workspace.models / "layerdiffuse"
    for family, names in FILES.items():
        needed = list(dict.fromkeys(names + (ENCODER_FILES[family],)))
        present = [name for name in needed if (layers / name).is_file()]
        missing = [name for name in names if name not in present]
        encoder = "" if ENCODER_FILES[family] in present + list(names) else \
            f"; starting from a transparent image also needs {ENCODER_FILES[family]}"
        rows.append(ModelStatus(
            f"layerdiffuse-{family}", "stencil", not missing,
            str(layers) if not missing else
            f"missing — {' and '.join(missing)} from huggingface.co/{REPOS[family]} in {layers}",
            sum((layers / name).stat().st_size for name in present),
            f"Stencil's transparent generation with {'Flux' if family == 'flux' else 'SDXL'} models" + encoder))
    weights = matting_folder(workspace) / MODEL_FILE
    packages = importlib.util.find_spec("rembg") is not None and importlib.util.find_spec("onnxruntime") is not None
    rows.append(ModelStatus(
        "birefnet-general", "stencil", weights.is_file(),
        str(weights) if weights.is_file() else f"missing — download {MODEL_URL} to {weights}",
        weights.stat().st_size if weights.is_file() else 0,
        "Stencil's matting" + ("" if packages else "; also needs the rembg and onnxruntime packages "
                                                    f"(`{pip_install('rembg', 'onnxruntime')}`)")))
    tiny = workspace.models / TINY_VLM_NAME
    built = (tiny / "config.json").is_file()
    rows.append(ModelStatus(TINY_VLM_NAME, "caption", True, str(tiny) if built else "built on first use",
                            folder_size(tiny) if built else 0, "random-weight captioner built in code (demo and tests)"))
    cached = try_to_load_from_cache(CAPTIONER_REPO, "config.json")
    found = isinstance(cached, str) and os.path.exists(cached)
    rows.append(ModelStatus(
        CAPTIONER_REPO, "caption", found, str(Path(cached).parent) if found else
        f"missing — `hf download {CAPTIONER_REPO}` on a connected machine, or type a model folder in Caption",
        folder_size(Path(cached).parent) if found else 0, "a good local captioner for the Caption tab (vLLM)"))
    return rows
