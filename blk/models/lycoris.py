"""LyCORIS / kohya LoKr files as peft LoKr adapters: read them, fit them to the model, load them.

A LyCORIS LoKr file (kohya_ss, LyCORIS, and most LoKr files shared for ComfyUI and Forge) holds per
module a kohya-style name — `lora_unet_down_blocks_1_attentions_0_…` (diffusers names), kohya's SDXL
names `lora_unet_input_blocks_4_1_…` (SGM), `lora_transformer_transformer_blocks_0_attn_to_q` or
`lycoris_…` — and the tensors `.lokr_w1` or `.lokr_w1_a`·`.lokr_w1_b`, `.lokr_w2` or
`.lokr_w2_a`·`.lokr_w2_b` (with `.lokr_t2`, the Tucker core of a conv), and `.alpha`. Its update is

    ΔW = kron(w1, w2) · scale,  scale = alpha / rank  when a factor is rank-decomposed
                                        1             when both are whole matrices

(LyCORIS `modules/lokr.py`: `if self.use_w2 and self.use_w1: alpha = lora_dim`, `scale = alpha / r`;
an alpha of 0 or none counts as the rank; the rank is the inner size of the decomposed factors).

peft's LoKr (`tuners/lokr/layer.py`) computes kron(w1, w2) · alpha / r too, but derives each module's
split (out = a·b, in = c·d) from one `decompose_factor`, and whether each factor is decomposed from r.
So a file is fitted to it: the split must be one that peft derives for some factor; a factor that
peft keeps whole but the file decomposes is multiplied out; a Tucker conv factor is flattened to
w2_a · w2_b (both exact); the scale goes into each module's alpha (generation), or into w1 when the
adapter exists already (a run's trainable LoKr, `blk.train.adapters`).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from blk.errors import UserError

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha")
DENOISER_PREFIXES = ("lora_unet_", "lora_transformer_", "lycoris_")
TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
LABELS = {"flux": "Flux", "sdxl": "SDXL"}
_LYCORIS_KEY = re.compile(r"^[^.]+\.lokr_w[12](_[ab])?$")
_DIFFUSERS_KEY = re.compile(r"^(transformer|unet)\..+\.lokr_w[12](_[ab])?$")
_LOOKS_LIKE = {
    "flux": ("transformer_blocks_", "single_transformer_blocks_", "double_blocks_", "single_blocks_"),
    "sdxl": ("down_blocks_", "up_blocks_", "mid_block_", "input_blocks_", "middle_block_", "output_blocks_"),
}
_BFL_FLUX = ("lora_unet_double_blocks_", "lora_unet_single_blocks_")

# kohya's SDXL UNet is SGM's: besides the block numbering (diffusers converts that), the leaves differ.
_SGM_BLOCKS = ("input_blocks_", "middle_block_", "output_blocks_")
_SGM_TOP = {"input_blocks_0_0": "conv_in", "out_2": "conv_out",
            "time_embed_0": "time_embedding_linear_1", "time_embed_2": "time_embedding_linear_2",
            "label_emb_0_0": "add_embedding_linear_1", "label_emb_0_2": "add_embedding_linear_2"}
_SGM_CONTAINERS = {"input_blocks": "down_blocks", "middle_block": "mid_block", "output_blocks": "up_blocks"}
_SGM_LEAVES = ((r"_in_layers_2$", "_conv1"), (r"_out_layers_3$", "_conv2"), (r"_emb_layers_1$", "_time_emb_proj"),
               (r"_skip_connection$", "_conv_shortcut"), (r"_downsamplers_0_op$", "_downsamplers_0_conv"))


def is_lycoris_lokr(keys) -> bool:
    """LoKr tensors under LyCORIS names (`<name without dots>.lokr_w1…`), not diffusers/peft ones."""
    return any(_LYCORIS_KEY.match(key) for key in keys)


def is_diffusers_lokr(keys) -> bool:
    """LoKr tensors under diffusers names (`transformer.<module>.lokr_w1…`, `unet.…`): a run's own checkpoints
    and diffusers' trainers' files, whose peft config (alpha, rank) is in the header."""
    return any(_DIFFUSERS_KEY.match(key) for key in keys)


@dataclass
class LokrModule:
    """One module of a file: its factors as matrices, w2 flattened to (b, d·kh·kw) like peft's."""

    stem: str                    # the file's name for it
    name: str                    # the denoiser's module
    shape: tuple[int, ...]       # the module's weight: (out, in) or (out, in, kh, kw)
    split: tuple[tuple[int, int], tuple[int, int]]  # ((a, b), (c, d)): out = a·b, in = c·d
    w1: object | None            # (a, c), whole
    w1_ab: tuple | None          # (a, r) · (r, c)
    w2: object | None            # (b, d·kh·kw), whole
    w2_ab: tuple | None          # (b, r) · (r, d·kh·kw); a Tucker core is already folded in
    rank: int | None             # None when both factors are whole
    scale: float

    def w1_full(self):
        return self.w1 if self.w1 is not None else self.w1_ab[0] @ self.w1_ab[1]

    def w2_full(self):
        return self.w2 if self.w2 is not None else self.w2_ab[0] @ self.w2_ab[1]

    def delta(self):
        """ΔW in the module's weight shape (what LyCORIS adds at strength 1)."""
        import torch

        return torch.kron(self.w1_full().contiguous(), self.w2_full().contiguous()).reshape(self.shape) * self.scale


class Misfit(Exception):
    """A file's module that an existing peft LoKr layer cannot hold exactly; `what` says why."""

    def __init__(self, module: LokrModule, what: str, need: int | None = None, peft_split=None):
        super().__init__(what)
        self.module, self.what, self.need, self.peft_split = module, what, need, peft_split


class _Bad(Exception):
    """A module whose tensors do not make a LoKr for the model's layer (the caller names the file)."""


# reading -----------------------------------------------------------------------------------------

def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001  (any failure here: not a readable safetensors file)
        raise UserError(f"{path.name} is not a readable .safetensors file ({str(exc).splitlines()[0][:120]}).") from None


def read_lokr(path: Path, denoiser, family: str) -> list[LokrModule]:
    """The denoiser modules of a LyCORIS LoKr file, checked against `denoiser` (text-encoder modules are skipped).

    Any name this model lacks, any tensor that is not LoKr, any shape that does not fit: one sentence, nothing kept.
    """
    path = Path(path)
    tensors = _load(path)
    groups: dict[str, dict] = {}
    for key, value in tensors.items():
        stem, _, part = key.partition(".")
        if stem.startswith(TEXT_ENCODER_PREFIXES):
            continue
        if part == "dora_scale":
            raise UserError(f"{path.name} is a LoKr with weight decomposition (DoRA, `dora_scale`), "
                            "which peft's LoKr cannot apply; use a LoKr trained without it.")
        if part not in PARTS:
            raise UserError(f"{path.name} mixes LoKr with other tensors (e.g. {key}); only pure LoKr files load.")
        groups.setdefault(stem, {})[part] = value
    stems = sorted(stem for stem, parts in groups.items() if any(p.startswith("lokr_") for p in parts))
    if not stems:
        raise UserError(f"{path.name} holds no LoKr weights for the {LABELS.get(family, family)} denoiser "
                        "(only text-encoder ones).")
    names = _map_names(stems, denoiser, family)
    unknown = [stem for stem in stems if stem not in names]
    if unknown:
        raise UserError(_unknown_sentence(path.name, family, stems, unknown))
    modules = []
    for stem in stems:
        name, base = names[stem]
        try:
            modules.append(_module(stem, name, base, groups[stem]))
        except _Bad as exc:
            raise UserError(f"{path.name} does not fit this {LABELS.get(family, family)} model: {stem} {exc}.") from None
    return modules


def read_diffusers_lokr(path: Path, denoiser, family: str) -> list[LokrModule]:
    """The modules of a LoKr file with diffusers names (`is_diffusers_lokr`), each with the scale peft gives it
    (alpha / rank from the header's config, for every layout — unlike LyCORIS' rule), checked like `read_lokr`."""
    from dataclasses import replace

    path = Path(path)
    tensors = _load(path)
    prefix = "transformer." if family == "flux" else "unet."
    config = _header_peft_config(path, prefix)
    groups: dict[str, dict] = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue  # text-encoder modules (a run trains the denoiser only)
        module, _, part = key[len(prefix):].rpartition(".")
        if part not in PARTS:
            raise UserError(f"{path.name} mixes LoKr with other tensors (e.g. {key}); only pure LoKr files load.")
        groups.setdefault(module, {})[part] = value
    if not groups:
        raise UserError(f"{path.name} holds no LoKr weights for the {LABELS.get(family, family)} denoiser.")
    layers = dict(_module_index(denoiser).values())
    if unknown := sorted(name for name in groups if name not in layers):
        raise UserError(_unknown_sentence(path.name, family, sorted(groups), unknown))
    modules = []
    for name in sorted(groups):
        try:
            module = _module(name, name, layers[name], groups[name])
        except _Bad as exc:
            label = LABELS.get(family, family)
            raise UserError(f"{path.name} does not fit this {label} model: {name} {exc}.") from None
        modules.append(replace(module, scale=_peft_scale(config, name)))
    return modules


def _header_peft_config(path: Path, prefix: str) -> dict:
    """The peft config diffusers' trainers (and a run) store in the header, without its `prefix`; {} if none."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    except (OSError, ValueError):
        return {}
    return {key.removeprefix(prefix): value for key, value in stored.items()} if isinstance(stored, dict) else {}


def _peft_scale(config: dict, module: str) -> float:
    """peft's LoKr scaling of `module`: its alpha over its rank, patterns first (1 when the header says none)."""
    from peft.utils.other import get_pattern_key

    def value(name: str, pattern: str) -> float | None:
        patterns = config.get(pattern) or {}
        if patterns and (key := get_pattern_key(list(patterns), module)) in patterns:
            return float(patterns[key])
        return float(config[name]) if isinstance(config.get(name), (int, float)) else None

    rank, alpha = value("r", "rank_pattern"), value("alpha", "alpha_pattern")
    return alpha / rank if rank and alpha is not None else 1.0


def _unknown_sentence(file: str, family: str, stems: list[str], unknown: list[str]) -> str:
    label = LABELS.get(family, family)
    bodies = [_body(stem) for stem in stems]
    for other, starts in _LOOKS_LIKE.items():
        if other != family and len(unknown) == len(stems) and any(body.startswith(starts) for body in bodies) \
                and not any(body.startswith(_LOOKS_LIKE.get(family, ())) for body in bodies):
            article = "an" if other == "sdxl" else "a"
            return f"{file} is a LoKr for {LABELS[other]}, not for {label}; use it with {article} {LABELS[other]} model."
    if family == "flux" and any(stem.startswith(_BFL_FLUX) for stem in unknown):
        return (f"{file} names its Flux modules the BFL way (lora_unet_double_blocks_…, q, k and v fused in one "
                "layer), which cannot load as a LoKr here because a Kronecker factor of the fused layer does not "
                "split into diffusers' separate to_q, to_k and to_v; use a LoKr saved with diffusers module names "
                "(lora_transformer_…).")
    return (f"{file} has {len(unknown)} module name(s) this {label} model does not have (e.g. {unknown[0]}); "
            f"it is not a LoKr for this model, so nothing was loaded.")


def _body(stem: str) -> str:
    for prefix in DENOISER_PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def _module_index(denoiser) -> dict[str, tuple[str, object]]:
    """Underscored module name → (module name, its base layer), for the Linear and Conv2d layers LoKr adapts.

    Layers already wrapped by an adapter count once, by their own name; a name two modules would share
    once underscored is left out (never guessed).
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = dict(denoiser.named_modules())
    tuned = {name for name, module in modules.items() if isinstance(module, BaseTunerLayer)}
    found: dict[str, list] = {}
    for name, module in modules.items():
        parts = name.split(".")
        if any(".".join(parts[:i]) in tuned for i in range(1, len(parts))):
            continue  # inside an adapter wrapper: its base layer or the adapter's own layers
        base = module.get_base_layer() if name in tuned else module
        if isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
            found.setdefault(name.replace(".", "_"), []).append((name, base))
    return {key: hits[0] for key, hits in found.items() if len(hits) == 1}


def _map_names(stems: list[str], denoiser, family: str) -> dict[str, tuple[str, object]]:
    index = _module_index(denoiser)
    bodies = {stem: _body(stem) for stem in stems if stem.startswith(DENOISER_PREFIXES)}
    if family == "sdxl" and hasattr(getattr(denoiser, "config", None), "layers_per_block"):
        bodies = _sgm_to_diffusers(bodies, denoiser.config)
    return {stem: index[body] for stem, body in bodies.items() if body in index}


def _sgm_to_diffusers(bodies: dict[str, str], unet_config) -> dict[str, str]:
    """kohya's SDXL names (SGM: input_blocks_4_1_…) as diffusers' underscored names; diffusers names pass through."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    sgm = {stem: body for stem, body in bodies.items() if body.startswith(_SGM_BLOCKS) or body in _SGM_TOP}
    if not sgm:
        return bodies
    out = {stem: body for stem, body in bodies.items() if stem not in sgm}
    blocks = {"lora_unet_" + body: stem for stem, body in sgm.items() if body not in _SGM_TOP}
    try:  # diffusers' own block renumbering for kohya LoRAs (it reads names at lora_unet_ positions)
        renamed = _maybe_map_sgm_blocks_to_diffusers(dict(blocks), unet_config) if blocks else {}
    except (ValueError, IndexError, KeyError):
        renamed = {}  # names it cannot place stay unknown, and are reported as such
    for new, stem in renamed.items():  # it renumbers (input_blocks_4_1 → input_blocks_1_attentions_0); then the names
        body = re.sub(r"^(input_blocks|middle_block|output_blocks)",
                      lambda hit: _SGM_CONTAINERS[hit.group(1)], new.removeprefix("lora_unet_"))
        for pattern, replacement in _SGM_LEAVES:
            body = re.sub(pattern, replacement, body)
        out[stem] = body
    for stem, body in sgm.items():
        if body in _SGM_TOP:
            out[stem] = _SGM_TOP[body]
    return out


def _module(stem: str, name: str, base, parts: dict) -> LokrModule:
    """One module's tensors as LyCORIS defines them, checked against the model's layer."""
    import torch

    shape = tuple(base.weight.shape)
    out, inputs, kernel = shape[0], shape[1], math.prod(shape[2:])
    t = {key: value.detach().float() for key, value in parts.items()}
    w1 = w1_ab = w2 = w2_ab = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
        if w1.ndim != 2:
            raise _Bad(f"has a {w1.ndim}-d lokr_w1")
    elif "lokr_w1_a" in t and "lokr_w1_b" in t:
        w1_ab = (t["lokr_w1_a"], t["lokr_w1_b"])
    else:
        raise _Bad("has no lokr_w1")
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].reshape(t["lokr_w2"].shape[0], -1)
    elif "lokr_w2_a" in t and "lokr_w2_b" in t:
        w2_a, w2_b = t["lokr_w2_a"], t["lokr_w2_b"]
        if "lokr_t2" in t:  # W2[p, q, …] = Σ_ij t2[i, j, …] w2_a[i, p] w2_b[j, q]  (LyCORIS rebuild_tucker)
            core = t["lokr_t2"]
            if core.ndim < 2 or w2_a.ndim != 2 or w2_b.ndim != 2 or core.shape[1] != w2_b.shape[0] \
                    or core.shape[0] != w2_a.shape[0]:
                raise _Bad("has a Tucker core (lokr_t2) that does not match lokr_w2_a and lokr_w2_b")
            w2_ab = (w2_a.T, torch.einsum("ij...,jq->iq...", core, w2_b).reshape(core.shape[0], -1))
        else:
            w2_ab = (w2_a, w2_b.reshape(w2_b.shape[0], -1))
    else:
        raise _Bad("has no lokr_w2")
    for pair, label in ((w1_ab, "lokr_w1"), (w2_ab, "lokr_w2")):
        if pair is not None and (pair[0].ndim != 2 or pair[1].ndim != 2 or pair[0].shape[1] != pair[1].shape[0]):
            raise _Bad(f"has {label}_a and {label}_b that do not multiply")
    rank1 = w1_ab[1].shape[0] if w1_ab else None
    rank2 = w2_ab[1].shape[0] if w2_ab else None
    if rank1 and rank2 and rank1 != rank2:
        raise _Bad(f"has rank {rank1} in lokr_w1 but {rank2} in lokr_w2 (LyCORIS writes one rank per module)")
    rank = rank2 or rank1
    (a, c), (b, columns) = _shape(w1, w1_ab), _shape(w2, w2_ab)
    if a * b != out or columns % kernel or c * (columns // kernel) != inputs:
        raise _Bad(f"makes a {a * b}×{c * columns} update but {name} here has {out}×{inputs * kernel} weights")
    d = columns // kernel
    alpha = float(t["alpha"].reshape(-1)[0]) if "alpha" in t and t["alpha"].numel() else 0.0
    scale = alpha / rank if rank and alpha else 1.0
    return LokrModule(stem, name, shape, ((a, b), (c, d)), w1, w1_ab, w2, w2_ab, rank, scale)


def _shape(whole, pair) -> tuple[int, int]:
    return tuple(whole.shape) if whole is not None else (pair[0].shape[0], pair[1].shape[1])


# fitting to peft ---------------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _factorization(dimension: int, factor: int) -> tuple[int, int]:
    from peft.tuners.lokr.layer import factorization

    return factorization(dimension, factor)


def file_factor(modules: list[LokrModule]) -> int | None:
    """A peft `decompose_factor` that gives every module of the file its own split, or None."""
    candidates = [-1] + sorted({x for m in modules for pair in m.split for x in pair})
    for factor in candidates:
        if all(_factorization(a * b, factor) == (a, b) and _factorization(c * d, factor) == (c, d)
               for m in modules for (a, b), (c, d) in [m.split]):
            return factor
    return None


def _rank_for(m: LokrModule, decompose_both: bool) -> int:
    """The peft rank under which this module's layout is the file's (or, failing that, whole factors)."""
    (a, b), (c, d) = m.split
    whole = max(1, math.ceil(max(b, d) / 2), math.ceil(max(a, c) / 2) if decompose_both else 0)
    if m.rank is None:
        return whole
    w1_whole = not (decompose_both and m.rank < max(a, c) / 2)  # peft's LoKrLayer.update_layer
    w2_whole = not (m.rank < max(b, d) / 2)
    if (w1_whole or m.w1_ab is not None) and (w2_whole or m.w2_ab is not None):
        return m.rank
    return whole


def lokr_config(modules: list[LokrModule], file: str):
    """A peft LoKrConfig whose layers hold these modules exactly (per-module rank and alpha as patterns)."""
    from peft import LoKrConfig

    factor = file_factor(modules)
    if factor is None:
        m = modules[0]
        raise UserError(f"{file} splits its modules in a way peft's LoKr cannot rebuild with one factor "
                        f"(e.g. {m.stem}: {m.split[0][0]}×{m.split[1][0]} ⊗ {m.split[0][1]}×{m.split[1][1]}); "
                        "it cannot be loaded.")
    decompose_both = any(m.w1_ab is not None for m in modules)
    ranks = {m.name: _rank_for(m, decompose_both) for m in modules}
    alphas = {m.name: m.scale * ranks[m.name] for m in modules}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    exact = {name: "^" + re.escape(name) for name in ranks}  # "^": this module only, not every …name
    return LoKrConfig(
        r=rank, alpha=alpha, decompose_both=decompose_both, decompose_factor=factor,
        target_modules="^(?:" + "|".join(re.escape(name) for name in ranks) + ")$",
        rank_pattern={exact[name]: r for name, r in ranks.items() if r != rank},
        alpha_pattern={exact[name]: a for name, a in alphas.items() if a != alpha},
    )


def fit(layer, adapter: str, m: LokrModule, fold: float) -> list[tuple[object, object]]:
    """(parameter, value) pairs that make `layer`'s LoKr `adapter` equal to `m` once its scaling is applied.

    `fold` multiplies w1 (file scale / the layer's scaling). A factor the layer keeps whole is
    multiplied out; one it decomposes must be decomposed in the file at the same rank, or it is a Misfit.
    """

    def param(part):
        table = getattr(layer, part)
        return table[adapter] if adapter in table else None

    (a, b), (c, d) = m.split
    w1, w1_a, w1_b = param("lokr_w1"), param("lokr_w1_a"), param("lokr_w1_b")
    w2, w2_a, w2_b = param("lokr_w2"), param("lokr_w2_a"), param("lokr_w2_b")
    if param("lokr_t2") is not None or (w1 is None and w1_a is None) or (w2 is None and w2_a is None):
        raise Misfit(m, "layout")
    peft_1 = tuple(w1.shape) if w1 is not None else (w1_a.shape[0], w1_b.shape[1])
    peft_2 = tuple(w2.shape[:2]) if w2 is not None else (w2_a.shape[0], w2_b.shape[1] // max(1, math.prod(m.shape[2:])))
    if peft_1 != (a, c) or peft_2 != (b, d):
        raise Misfit(m, "split", peft_split=((peft_1[0], peft_2[0]), (peft_1[1], peft_2[1])))

    def pair(source, target_a, target_b, which, rows, cols):
        if source is None:  # whole in the file: peft keeps it whole only from this rank up
            raise Misfit(m, f"whole {which}", need=math.ceil(max(rows, cols) / 2))
        x, y = source
        if x.shape[1] != target_a.shape[1]:
            raise Misfit(m, "rank", need=x.shape[1])
        return [(target_a, x), (target_b, y)]

    updates = [(w1, m.w1_full() * fold)] if w1 is not None else \
        [(p, v * fold if p is w1_a else v) for p, v in pair(m.w1_ab, w1_a, w1_b, "w1", a, c)]
    updates += [(w2, m.w2_full().reshape(w2.shape))] if w2 is not None else pair(m.w2_ab, w2_a, w2_b, "w2", b, d)
    return updates


def write(updates) -> None:
    import torch

    with torch.no_grad():
        for parameter, value in updates:
            parameter.copy_(value.to(device=parameter.device, dtype=parameter.dtype))


def lokr_layers(denoiser, adapter: str) -> dict:
    from peft.tuners.lokr import LoKrLayer

    return {name: module for name, module in denoiser.named_modules()
            if isinstance(module, LoKrLayer) and adapter in module._available_adapters}


# loading for generation --------------------------------------------------------------------------

def load_lycoris_lokr(denoiser, path: Path, family: str, adapter_name: str) -> int:
    """Load a LyCORIS LoKr file onto `denoiser` as the peft adapter `adapter_name`; returns its module count.

    Everything is checked before the model is touched; a failure after that removes the adapter again.
    The file's text-encoder modules, if any, are not applied (as for LoRAs on int8 weights).
    """
    path = Path(path)
    modules = read_lokr(path, denoiser, family)
    config = lokr_config(modules, path.name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        denoiser.add_adapter(config, adapter_name=adapter_name)
    try:
        layers = lokr_layers(denoiser, adapter_name)
        updates = []
        for m in modules:
            layer = layers[m.name]
            updates += fit(layer, adapter_name, m, m.scale / layer.scaling[adapter_name])
        write(updates)
    except (Misfit, KeyError) as exc:
        denoiser.delete_adapters(adapter_name)
        module = exc.module.stem if isinstance(exc, Misfit) else exc
        raise UserError(f"{path.name} could not be laid out as a peft LoKr (module {module}); nothing was loaded.") from None
    except BaseException:
        denoiser.delete_adapters(adapter_name)
        raise
    return len(modules)
