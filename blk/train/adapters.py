"""The adapters of a run: frozen base LoRAs under it, the trainable one (LoRA or LoKr), and where it starts from.

- Base LoRAs (`model.base_loras`, e.g. LayerDiffuse's layer LoRA for BLK-Stencil) are loaded
  as named peft adapters that stay active and frozen: never fused, so int8 weights are safe
  (STACK.md: fusing into quanto weights drops the LoRA). The trainable adapter is "default".
- `adapter.init_from` starts the trainable adapter from a file instead of random weights. A LoRA
  starts from a LoRA file: diffusers/peft names (ours, ai-toolkit's) or kohya's (`lora_unet_…`,
  `.lora_down/.lora_up/.alpha`) or ComfyUI-format FLUX names (`diffusion_model.double_blocks…lora_A`,
  `blk.models.lora_names`), converted by diffusers' own `lora_state_dict`. A LoKr starts from a
  LyCORIS / kohya LoKr file (`…lokr_w1`, `…lokr_w2`, `.alpha`; `blk.models.lycoris`), its delta
  reproduced exactly in the trainable adapter's own layout.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from blk.errors import UserError, first_line, require_file

TRAINABLE = "default"
STARTING = "starting_point"  # a LoRA file loaded for a moment, to copy into the trainable adapter


def peft_config(adapter):
    """The trainable adapter's peft config: LoRA (B·A) or LoKr (a Kronecker product w1 ⊗ w2, LyCORIS-style)."""
    if adapter.kind == "lokr":
        from peft import LoKrConfig

        return LoKrConfig(r=adapter.rank, alpha=adapter.alpha, rank_dropout=adapter.dropout,
                          target_modules=adapter.target_modules, decompose_factor=adapter.factor)
    from peft import LoraConfig

    return LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                      target_modules=adapter.target_modules, init_lora_weights="gaussian")


def check_target_modules(denoiser, adapter, model_name: str) -> None:
    """Every `adapter.target_modules` entry names layers of this model, and a LoKr none of its convolutions: one
    sentence as soon as the model is loaded. peft said "Target modules … not found" only once every caption was
    encoded (minutes on a real model), trained a typo beside valid names without a word, and a LoKr on a
    convolution trained but wrote a file no loader reads (diffusers cannot rebuild its 4-D factors)."""
    import torch

    targets = adapter.target_modules
    if isinstance(targets, str):  # a regular expression (peft's full-match rule): peft itself says when none fits
        return
    layers = [(name, module) for name, module in denoiser.named_modules()
              if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or hasattr(module, "in_features")]

    def matches(target: str) -> list:
        return [module for name, module in layers if name == target or name.endswith("." + target)]

    unmatched = [target for target in targets if not matches(target)]
    if unmatched or not targets:
        examples = sorted({name.rsplit(".", 1)[-1] if not name.rsplit(".", 1)[-1].isdigit() else
                           ".".join(name.rsplit(".", 2)[-2:]) for name, _ in layers})[:12]
        named = ", ".join(unmatched) if unmatched else "nothing"
        raise UserError(f"adapter.target_modules names {named}, which matches no layer of {model_name}; its layers "
                        f"include {', '.join(examples)}.")
    if adapter.kind == "lokr":
        convolutions = [target for target in targets if any(isinstance(m, torch.nn.Conv2d) for m in matches(target))]
        if convolutions:
            raise UserError(f"A LoKr adapter cannot train convolutions ({', '.join(convolutions)} in "
                            "adapter.target_modules): its files would load nowhere; use a LoRA, or leave them out.")


def adapter_metadata(denoiser, adapter) -> dict:
    """The peft config a checkpoint stores as diffusers' own trainers do (`lora_adapter_metadata`), which
    `load_lora_weights` rebuilds the adapter from (a LoKr's factorization needs it).

    Its alpha is the rank: `published_weights` folds each module's alpha/rank into the tensors, because
    ComfyUI, Forge and A1111 ignore this metadata and, with no `.alpha` tensor, apply a scale of 1 — so every
    loader applies the trained strength. `adapter` is the config section (kind, rank, alpha)."""
    config = dict(denoiser.peft_config[TRAINABLE].to_dict())
    config["alpha" if adapter.kind == "lokr" else "lora_alpha"] = config["r"]
    config["alpha_pattern"] = {}
    return config


def published_weights(denoiser, state: dict) -> dict:
    """The adapter's tensors as a checkpoint holds them: each module's scale (alpha/rank) multiplied into
    one factor (LoRA's `lora_B`, LoKr's `lokr_w1` or `lokr_w1_a`), so the file alone means the trained update."""
    scales = _trainable_scales(denoiser)
    published = {}
    for key, value in state.items():
        module, _, part = key.rpartition(".")
        if key.endswith(".lora_B.weight"):
            module, part = key[:-len(".lora_B.weight")], "lora_B"
        if part in ("lora_B", "lokr_w1", "lokr_w1_a") and module in scales:
            value = value * scales[module]
        published[key] = value
    return published


def _trainable_scales(denoiser) -> dict[str, float]:
    """Each adapted module's scale for the trainable adapter (peft's `scaling`: alpha / rank)."""
    return {name: float(module.scaling[TRAINABLE]) for name, module in denoiser.named_modules()
            if isinstance(getattr(module, "scaling", None), dict) and TRAINABLE in module.scaling}


def _pipeline_class(family):
    return type(family.pipe)


def _prefix(family) -> str:
    return "transformer" if family.name == "flux" else "unet"


def read_lora(family, path: Path) -> tuple[dict, dict | None, dict | None]:
    """A LoRA file as diffusers-named tensors (kohya / Forge names converted), its network alphas if any, and
    the peft config diffusers' trainers store in it (`lora_adapter_metadata`; their alpha need not be the rank)."""
    from safetensors.torch import load_file

    from blk.models.lora_names import kohya_factor_names
    from blk.stencil.layerdiffuse import convert_forge_lora

    path = Path(path)
    require_file(path, "LoRA file")
    try:
        raw = load_file(str(path))
    except Exception as exc:  # noqa: BLE001  (any failure here: not a safetensors LoRA)
        raise UserError(f"{path.name} is not a readable .safetensors LoRA ({str(exc).splitlines()[0][:120]}).") from None
    if any("::lora::" in key for key in raw):
        raw = convert_forge_lora(raw)
    raw = kohya_factor_names(raw)  # ComfyUI's FLUX names with lora_A / lora_B (`blk.models.lora_names`)
    cls = _pipeline_class(family)
    try:
        if family.name == "flux":
            state, alphas = cls.lora_state_dict(raw, return_alphas=True)
        else:  # the UNet's config converts kohya's original SDXL names (`lora_unet_input_blocks_4_1_…`)
            state, alphas = cls.lora_state_dict(raw, unet_config=family.denoiser.config)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path.name} is not a LoRA for {family.name}: {first_line(exc)}.") from None
    metadata = _peft_metadata(path) if not alphas and set(state) <= set(raw) else None  # names as saved: not converted
    return state, alphas, metadata


def _peft_metadata(path: Path) -> dict | None:
    """The `lora_adapter_metadata` diffusers writes into a LoRA file (its peft config per component), if any."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        text = (handle.metadata() or {}).get("lora_adapter_metadata")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None  # unreadable metadata: the tensors' shapes still say rank, and alpha defaults to it


def _load_as_adapter(family, lora: tuple[dict, dict | None, dict | None], name: str, file: str) -> None:
    """Load what `read_lora` read as the named adapter on the denoiser, its alphas (or stored peft config) included.
    Factors of other shapes than the model's layers (a LoRA of another size of the family) are one sentence
    naming `file` (peft's size-mismatch list was a 55-line traceback)."""
    state, alphas, metadata = lora
    options = {"metadata": metadata} if metadata else {"network_alphas": alphas}
    try:
        family.denoiser.load_lora_adapter(state, prefix=_prefix(family), adapter_name=name, **options)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(_misfit_file_sentence(file, family.name, exc)) from None


def _misfit_file_sentence(file: str, family: str, exc: Exception) -> str:
    """torch's size-mismatch list as one sentence naming the first layer that does not fit and both shapes."""
    mismatch = re.search(r"size mismatch for ([\w.]+?)\.lora_\w+\.\w+\.weight: copying a param with shape "
                         r"torch\.Size\((\[[^\]]*\])\) from checkpoint, the shape in current model is "
                         r"torch\.Size\((\[[^\]]*\])\)", str(exc))
    if mismatch is None:
        return f"{file} is not a LoRA for this {family} model: {first_line(exc)}."
    layer, theirs, ours = mismatch.groups()
    return (f"{file} does not fit this {family} model: its factor for {layer} is {theirs} where this model's "
            f"needs {ours} (a LoRA of another model of the family?).")


def add_base_loras(family, paths: list[Path]) -> list[str]:
    """Load each file as a frozen, always-active adapter; returns their adapter names."""
    names = []
    for index, path in enumerate(paths):
        name = f"base_{index}"
        _load_as_adapter(family, read_lora(family, path), name, Path(path).name)
        if name not in getattr(family.denoiser, "peft_config", {}):
            raise UserError(f"{Path(path).name} is not a LoRA for {family.name}: none of its weights fit this model.")
        names.append(name)
    return names


def freeze_all_but_trainable(denoiser) -> None:
    """peft makes every active adapter trainable; base LoRAs stay frozen."""
    for name, parameter in denoiser.named_parameters():
        if parameter.requires_grad and f".{TRAINABLE}." not in name and not name.endswith(f".{TRAINABLE}"):
            parameter.requires_grad_(False)


def text_encoder_modules(family, path: Path) -> int:
    """How many text-encoder layers a LoRA file adapts (`lora_te1_…`, `text_encoder.…`): a run trains the
    denoiser only, so starting from such a file leaves them out (said as a notice, not silently)."""
    state = read_lora(family, path)[0]  # one down (A) matrix a layer, whichever names diffusers converted to
    return sum(1 for key in state if key.startswith("text_encoder") and re.search(r"(lora_A|lora[._]down)\.weight$", key))


def init_trainable_from(family, path: Path) -> int:
    """Start the trainable adapter from a LoRA file; returns how many modules were set.

    diffusers loads the file as a temporary adapter (any of the names it converts, each
    module's alpha included); its weights are then copied into the trainable adapter,
    with lora_B rescaled so that B·A·scale is the file's own update exactly. A LoKr adapter
    starts from a LyCORIS LoKr file instead (`_init_lokr_from`).
    """
    import torch
    from peft import LoKrConfig
    from peft.tuners.lora import LoraLayer

    denoiser, name = family.denoiser, Path(path).name
    if isinstance(getattr(denoiser, "peft_config", {}).get(TRAINABLE), LoKrConfig):
        return _init_lokr_from(family, Path(path))
    if _is_lokr_file(Path(path)):
        raise UserError(f"{name} is a LoKr, not a LoRA; set adapter.kind to lokr to start from it.")
    lora = read_lora(family, path)
    if not any(k.startswith(_prefix(family) + ".") for k in lora[0]):
        raise UserError(f"{name} has no weights for the {_prefix(family)}; it cannot start this adapter.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        _load_as_adapter(family, lora, STARTING, name)
    try:
        if STARTING not in getattr(denoiser, "peft_config", {}):
            raise UserError(f"{name} is not a LoRA for {family.name}: none of its weights fit this model.")
        copied, skipped = 0, []
        with torch.no_grad():
            for module_name, module in denoiser.named_modules():
                if not isinstance(module, LoraLayer) or STARTING not in module.lora_A:
                    continue
                if TRAINABLE not in module.lora_A:
                    skipped.append(module_name)
                    continue
                source_a, source_b = module.lora_A[STARTING].weight, module.lora_B[STARTING].weight
                target_a, target_b = module.lora_A[TRAINABLE].weight, module.lora_B[TRAINABLE].weight
                if source_a.shape != target_a.shape:
                    raise UserError(f"{name} has rank {source_a.shape[0]} but this adapter has rank {target_a.shape[0]}; "
                                    f"set the rank to {source_a.shape[0]} to start from it.")
                ratio = module.scaling[STARTING] / module.scaling[TRAINABLE]
                target_a.copy_(source_a)
                target_b.copy_(source_b * ratio)
                copied += 1
        if skipped:
            raise UserError(f"{name} also trains modules this adapter does not (e.g. {skipped[0]}); "
                            f"add them to adapter.target_modules to start from it.")
        if not copied:
            raise UserError(f"{name} has no weights for the modules this adapter trains.")
        return copied
    finally:
        if STARTING in getattr(denoiser, "peft_config", {}):
            with warnings.catch_warnings():  # "…was active which is now deleted": the trainable one is set next
                warnings.filterwarnings("ignore", message="Adapter starting_point was active")
                denoiser.delete_adapters(STARTING)


# A LoRA module's first factor, (rank, inputs…): diffusers' and ai-toolkit's lora_A, kohya's lora_down, Forge's slot 1.
DOWN_WEIGHT = re.compile(r"(lora_A|lora[._]down)\.weight$|::lora::1$")
TEXT_ENCODER_KEYS = ("lora_te", "text_encoder")  # kohya's and diffusers' names: a run leaves these layers out


def starting_file_problem(path: Path, family: str, adapter=None) -> str:
    """Why the LoRA file at `path` cannot start a run on a `family` model, mostly from its header ("" when it
    shows nothing; loading it may still find more). `adapter`: the trainable adapter's settings when the
    file is its `init_from` (a LoRA starts from a LoRA of its rank, a LoKr from a LyCORIS LoKr); None for a base
    LoRA. Each found only once the file loaded — after the model, and every caption encoded — in a failed run.
    The tensors are read once too, for weights that are not numbers (a damaged file)."""
    from blk.generate.lora_family import family_mismatch
    from blk.models.lycoris import is_diffusers_lokr, is_lycoris_lokr

    name, denoiser = path.name, "transformer" if family == "flux" else "unet"
    shapes = _tensor_shapes(path)
    if shapes is None:
        return f"{name} is not a readable .safetensors LoRA (damaged, cut short, or another kind of file)."
    own = {key: shape for key, shape in shapes.items() if not key.startswith(TEXT_ENCODER_KEYS)}
    if not own:
        return f"{name} has no weights for the {denoiser}; " + \
            ("it cannot start this adapter." if adapter else "as a base LoRA it would change nothing.")
    if problem := family_mismatch(path, family):
        return problem
    if broken := _first_not_finite(path, own):  # it trained into NaN at step 1: "lower the learning rate", wrongly
        return f"{name} holds weights that are not numbers (NaN or infinity, e.g. in {broken}); it is damaged."
    if adapter is None:
        return ""
    lokr = is_lycoris_lokr(own) or is_diffusers_lokr(own)
    if lokr and adapter.kind == "lora":
        return f"{name} is a LoKr, not a LoRA; set adapter.kind to lokr to start from it."
    if not lokr and adapter.kind == "lokr":
        return (f"{name} is not a LoKr file (…lokr_w1, …lokr_w2); a LoKr adapter starts from one (or set "
                "adapter.kind to lora to start from a LoRA).")
    ranks = _lokr_ranks(own, adapter) if lokr else \
        {shape[0] for key, shape in own.items() if DOWN_WEIGHT.search(key) and shape}
    if len(ranks) > 1:
        listed = ", ".join(str(rank) for rank in sorted(ranks))
        return f"{name} has modules of ranks {listed} but this adapter has rank {adapter.rank} for all; it cannot " \
               "start from it."
    if ranks and ranks != {adapter.rank}:
        rank, = ranks
        return f"{name} has rank {rank} but this adapter has rank {adapter.rank}; set the rank to {rank} to start from it."
    return ""


def _first_not_finite(path: Path, keys) -> str:
    """The first of `keys` whose tensor holds a NaN or an infinity ("" when none): one tensor at a time, so a
    file of any size takes its reading time (~2 s a GB) and no more memory than its largest tensor; once per
    version of the file in this process (Estimate, Start's check and the trainer each ask)."""
    try:
        info = path.stat()
    except OSError:
        return ""
    version = (str(path.resolve()), info.st_size, info.st_mtime_ns, tuple(sorted(keys)))
    if version not in _NOT_FINITE:
        _NOT_FINITE[version] = _scan_not_finite(path, version[3])
    return _NOT_FINITE[version]


_NOT_FINITE: dict[tuple, str] = {}


def _scan_not_finite(path: Path, keys) -> str:
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in keys:
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return key
    except (OSError, ValueError, RuntimeError, TypeError):  # unreadable here: the loader's own sentence says so
        return ""
    return ""


def _lokr_ranks(shapes: dict[str, list[int]], adapter) -> set[int]:
    """The ranks of a LyCORIS file's modules that a LoKr with `adapter`'s settings must share: where peft also
    decomposes w2 (rank below half its larger side) of the same split (`lycoris.fit`'s "rank" misfit). A factor
    peft keeps whole is multiplied out, whatever its rank; another split is left to the trainer's sentence."""
    from peft.tuners.lokr.layer import factorization

    ranks = set()
    for key, shape in shapes.items():
        stem = key.removesuffix(".lokr_w2_a")
        if stem == key or len(shape) != 2 or len(w2_b := shapes.get(f"{stem}.lokr_w2_b", [])) != 2:
            continue
        (b, rank), d = shape, w2_b[1]
        w1 = shapes.get(f"{stem}.lokr_w1") or [shapes.get(f"{stem}.lokr_w1_a", [0])[0],
                                                shapes.get(f"{stem}.lokr_w1_b", [0])[-1]]
        a, c = w1[0], w1[-1]
        if not (a and c) or (a, b) != factorization(a * b, adapter.factor) or \
                (c, d) != factorization(c * d, adapter.factor):
            continue
        if adapter.rank < max(b, d) / 2:
            ranks.add(rank)
    return ranks


def _tensor_shapes(path: Path) -> dict[str, list[int]] | None:
    """Each tensor's shape from a .safetensors header (8 bytes of length, then JSON), no tensor loaded; None when
    the file is no whole one: its header does not read, or its data ends before the header says."""
    import json
    import struct

    from blk.generate.lora_family import MAX_HEADER

    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= length <= MAX_HEADER:
                return None
            tensors = {key: entry for key, entry in json.loads(handle.read(length)).items() if key != "__metadata__"}
        end = max((int(entry["data_offsets"][1]) for entry in tensors.values()), default=0)
        if 8 + length + end > path.stat().st_size:
            return None
        return {key: [int(size) for size in entry["shape"]] for key, entry in tensors.items()}
    except (OSError, ValueError, struct.error, AttributeError, KeyError, TypeError, IndexError):
        return None


def _is_lokr_file(path: Path) -> bool:
    """A LoKr file, with LyCORIS names (downloaded) or diffusers names (a run's own checkpoint)."""
    from blk.models.lycoris import is_diffusers_lokr, is_lycoris_lokr
    from blk.models.registry import safetensors_keys

    try:
        return path.is_file() and (is_lycoris_lokr(keys := safetensors_keys(path)) or is_diffusers_lokr(keys))
    except UserError:  # not a readable file: the caller's own reading says so
        return False


def _init_lokr_from(family, path: Path) -> int:
    """Start the trainable LoKr from a LoKr file (LyCORIS', or a run's own checkpoint); returns how many modules
    were set.

    Each module's update kron(w1, w2)·scale (LyCORIS' scale rule) is written into the trainable
    adapter's own layout, the ratio of the file's scale to the adapter's alpha/rank folded into w1;
    a factor the adapter keeps whole is multiplied out. What cannot be held exactly (another rank,
    another Kronecker split) is one sentence naming the setting, before anything is written.
    """
    from blk.models.lycoris import (Misfit, file_factor, fit, is_diffusers_lokr, lokr_layers, read_diffusers_lokr,
                                    read_lokr, write)
    from blk.models.registry import safetensors_keys

    denoiser, name = family.denoiser, path.name
    require_file(path, "LoKr file")
    keys = safetensors_keys(path)  # a damaged header gets its own sentence
    if not _is_lokr_file(path):
        raise UserError(f"{name} is not a LoKr file (…lokr_w1, …lokr_w2); a LoKr adapter starts from "
                        "one (or set adapter.kind to lora to start from a LoRA).")
    read = read_diffusers_lokr if is_diffusers_lokr(keys) else read_lokr
    modules = read(path, denoiser, family.name)
    layers = lokr_layers(denoiser, TRAINABLE)
    outside = [m for m in modules if m.name not in layers]
    if outside:
        raise UserError(f"{name} also trains modules this adapter does not (e.g. {outside[0].name}); "
                        f"add them to adapter.target_modules to start from it.")
    config = denoiser.peft_config[TRAINABLE]
    updates = []
    for m in modules:
        layer = layers[m.name]
        if not layer.scaling[TRAINABLE]:
            raise UserError(f"adapter.alpha is 0, so this LoKr would add nothing; set it above 0 to start from {name}.")
        try:
            updates += fit(layer, TRAINABLE, m, m.scale / layer.scaling[TRAINABLE])
        except Misfit as misfit:
            raise UserError(_misfit_sentence(name, misfit, config, file_factor(modules))) from None
    write(updates)
    return len(modules)


def _misfit_sentence(name: str, misfit, config, factor) -> str:
    m = misfit.module
    if misfit.what == "rank":
        return (f"{name} has rank {misfit.need} but this adapter has rank {config.r}; "
                f"set the rank to {misfit.need} to start from it.")
    if misfit.what.startswith("whole"):
        return (f"{name} keeps {m.name}'s {misfit.what.split()[1]} as one whole matrix, which a LoKr of rank "
                f"{config.r} splits in two; set the rank to at least {misfit.need} to start from it.")
    if misfit.what == "split":
        (a, b), (c, d) = m.split
        (pa, pb), (pc, pd) = misfit.peft_split
        made = f"LyCORIS factor {factor}" if factor is not None else "a factorization peft does not make"
        advice = f"set adapter.factor to {factor} to start from it" if factor is not None else \
            "a LoKr starts only from a file with the same split"
        return (f"{name} splits {m.name} as {a}×{c} ⊗ {b}×{d} ({made}) but this adapter splits it as "
                f"{pa}×{pc} ⊗ {pb}×{pd} (factor {config.decompose_factor}); {advice}.")
    return f"{name} cannot be laid out in this LoKr adapter (module {m.name})."
