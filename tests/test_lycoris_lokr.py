"""LyCORIS / kohya LoKr files: loaded for generation (the Sketch/Review/Stencil LoRA stack) and as a
run's starting point, each module's update exactly kron(w1, w2)·scale as LyCORIS computes it.

The files are written here the way LyCORIS writes them (its LokrModule's shapes: w1 or w1_a·w1_b,
w2 or w2_a·w2_b, the Tucker core t2 of a conv, alpha), with random values; the expected update is
computed by hand from the file (LyCORIS' recipe: make_kron with w1 unsqueezed for a conv, scale
alpha/rank when a factor is decomposed and 1 when both are whole).
"""

import math

import numpy as np
import pytest
import torch

from blk.errors import UserError

# file writing, LyCORIS' way ------------------------------------------------------------------------


def lycoris_parts(out, inputs, kernel=(), rank=2, factor=-1, decompose_both=False, tucker=False, full=False,
                  alpha=None, seed=0):
    """One module's tensors with the shapes LyCORIS' LokrModule gives them (its __init__ rules)."""
    from peft.tuners.lokr.layer import factorization  # a copy of LyCORIS' (same results for these factors)

    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.3

    (out_l, out_k), (in_m, in_n) = factorization(out, factor), factorization(inputs, factor)
    parts = {}
    if decompose_both and rank < max(out_l, in_m) / 2 and not full:
        parts["lokr_w1_a"], parts["lokr_w1_b"] = rand(out_l, rank), rand(rank, in_m)
    else:
        parts["lokr_w1"] = rand(out_l, in_m)
    if kernel:
        if rank >= max(out_k, in_n) / 2 or full:
            parts["lokr_w2"] = rand(out_k, in_n, *kernel)
        elif tucker and any(k != 1 for k in kernel):
            parts["lokr_t2"] = rand(rank, rank, *kernel)
            parts["lokr_w2_a"], parts["lokr_w2_b"] = rand(rank, out_k), rand(rank, in_n)
        else:
            parts["lokr_w2_a"], parts["lokr_w2_b"] = rand(out_k, rank), rand(rank, in_n * math.prod(kernel))
    elif rank < max(out_k, in_n) / 2 and not full:
        parts["lokr_w2_a"], parts["lokr_w2_b"] = rand(out_k, rank), rand(rank, in_n)
    else:
        parts["lokr_w2"] = rand(out_k, in_n)
    if alpha is not None:
        parts["alpha"] = torch.tensor(float(alpha))
    return parts


def expected_delta(parts, weight_shape):
    """ΔW from a file's tensors, by hand: kron(w1, w2) · (alpha / rank if a factor is decomposed else 1)."""
    w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
    if "lokr_w2" in parts:
        w2 = parts["lokr_w2"]
    elif "lokr_t2" in parts:
        w2 = torch.einsum("ijkl,ip,jr->prkl", parts["lokr_t2"], parts["lokr_w2_a"], parts["lokr_w2_b"])
    else:
        w2_b = parts["lokr_w2_b"]
        w2 = parts["lokr_w2_a"] @ w2_b.reshape(w2_b.shape[0], -1)
        if len(weight_shape) == 4:
            w2 = w2.reshape(w2.shape[0], -1, *weight_shape[2:])
    if len(weight_shape) == 4 and w2.dim() == 2:
        w2 = w2.reshape(*w2.shape, 1, 1)
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    decomposed = "lokr_w1_a" in parts or "lokr_w2_a" in parts
    rank = parts["lokr_w2_b"].shape[0] if "lokr_w2_b" in parts else \
        parts["lokr_w1_b"].shape[0] if "lokr_w1_b" in parts else None
    alpha = float(parts["alpha"]) if "alpha" in parts else 0.0
    scale = alpha / rank if decomposed and alpha else 1.0
    return torch.kron(w1.contiguous(), w2.contiguous()).reshape(weight_shape) * scale


def write_lycoris(path, modules: dict[str, dict]):
    from safetensors.torch import save_file

    save_file({f"{stem}.{part}": value.contiguous() for stem, parts in modules.items() for part, value in parts.items()},
              str(path))
    return path


def weight_shape(denoiser, name):
    from peft.tuners.tuners_utils import BaseTunerLayer

    module = denoiser.get_submodule(name)
    return tuple((module.get_base_layer() if isinstance(module, BaseTunerLayer) else module).weight.shape)


def module_parts(denoiser, name, seed, **kwargs):
    shape = weight_shape(denoiser, name)
    return lycoris_parts(shape[0], shape[1], tuple(shape[2:]), seed=seed, **kwargs)


# the files of these tests: module name in the model → (name in the file, how LyCORIS made it)

SDXL_DIFFUSERS_NAMES = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": dict(rank=2, alpha=1.5),
    "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj": dict(rank=2, alpha=3, decompose_both=True),
    "down_blocks.0.resnets.0.conv1": dict(rank=2, alpha=1, tucker=True),           # 3×3 conv, Tucker core
    "down_blocks.0.resnets.0.conv2": dict(rank=2, alpha=4),                        # 3×3 conv, w2_b flat
    "time_embedding.linear_1": dict(rank=8, alpha=5),                             # both whole: scale 1
    "up_blocks.0.resnets.0.conv_shortcut": dict(rank=2, alpha=7, full=True),       # 1×1 conv, whole
    "mid_block.attentions.0.proj_in": dict(rank=2),                                # no alpha: scale 1
    "conv_in": dict(rank=1, alpha=0.5),
}

SDXL_SGM_NAMES = {  # kohya's SDXL names (its SGM UNet) → diffusers' modules of tiny-sdxl (2 blocks, 2 layers each)
    "input_blocks_4_1_transformer_blocks_0_attn1_to_v": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",
    "input_blocks_5_1_proj_in": "down_blocks.1.attentions.1.proj_in",
    "middle_block_1_transformer_blocks_0_attn2_to_k": "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "middle_block_2_in_layers_2": "mid_block.resnets.1.conv1",
    "output_blocks_1_1_transformer_blocks_1_ff_net_2": "up_blocks.0.attentions.1.transformer_blocks.1.ff.net.2",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_0_0_skip_connection": "up_blocks.0.resnets.0.conv_shortcut",
    "output_blocks_4_0_emb_layers_1": "up_blocks.1.resnets.1.time_emb_proj",
    "input_blocks_1_0_out_layers_3": "down_blocks.0.resnets.0.conv2",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_0_0": "conv_in",
    "out_2": "conv_out",
    "time_embed_2": "time_embedding.linear_2",
    "label_emb_0_0": "add_embedding.linear_1",
}

FLUX_MODULES = {  # LyCORIS factor 4 (w1 is 4×4 where it divides), diffusers names
    "transformer_blocks.0.attn.to_q": dict(rank=2, alpha=1),
    "transformer_blocks.0.attn.add_k_proj": dict(rank=1, alpha=3, decompose_both=True),  # w1_a·w1_b too
    "transformer_blocks.0.ff.net.0.proj": dict(rank=2, alpha=2),
    "single_transformer_blocks.0.proj_out": dict(rank=3, alpha=1.5),
    "x_embedder": dict(rank=16, alpha=9),                                          # whole: scale 1
}


def sdxl_file(denoiser, path):
    modules, expected = {}, {}
    for seed, (name, how) in enumerate(SDXL_DIFFUSERS_NAMES.items()):
        parts = module_parts(denoiser, name, seed, **how)
        modules["lora_unet_" + name.replace(".", "_")] = parts
        expected[name] = expected_delta(parts, weight_shape(denoiser, name))
    modules["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] = lycoris_parts(32, 32, seed=99)  # not applied
    return write_lycoris(path, modules), expected


def flux_file(denoiser, path, prefix="lora_transformer_"):
    modules, expected = {}, {}
    for seed, (name, how) in enumerate(FLUX_MODULES.items()):
        parts = module_parts(denoiser, name, seed, factor=4, **how)
        stem = ("lycoris_" if name == "x_embedder" else prefix) + name.replace(".", "_")  # SimpleTuner's prefix too
        modules[stem] = parts
        expected[name] = expected_delta(parts, weight_shape(denoiser, name))
    return write_lycoris(path, modules), expected


def assert_deltas(denoiser, adapter, expected, strength=1.0):
    for name, delta in expected.items():
        layer = denoiser.get_submodule(name)
        got = layer.get_delta_weight(adapter)
        assert got.shape == delta.shape, name
        assert torch.allclose(got, delta * strength, atol=1e-5, rtol=1e-4), (name, (got - delta * strength).abs().max())


def no_adapter_named(denoiser, adapter):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return adapter not in getattr(denoiser, "peft_config", {}) and not any(
        adapter in getattr(m, "scaling", {}) for m in denoiser.modules() if isinstance(m, BaseTunerLayer))


# generation ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl(shared_workspace):
    from blk.models.pipelines import PipelineCache
    from blk.models.registry import resolve

    return PipelineCache().get(resolve("tiny-sdxl", shared_workspace))


@pytest.fixture(scope="module")
def flux(shared_workspace):
    from blk.models.pipelines import PipelineCache
    from blk.models.registry import resolve

    return PipelineCache().get(resolve("tiny-flux", shared_workspace))


def test_sdxl_lycoris_lokr_loads_with_its_exact_update(sdxl, tmp_path):
    from blk.models.pipelines import adapter_name, set_loras

    path, expected = sdxl_file(sdxl.denoiser, tmp_path / "lokr.safetensors")
    set_loras(sdxl, [(path, 1.0)])
    name = adapter_name(path)
    assert list(sdxl.adapters) == [name]
    assert_deltas(sdxl.denoiser, name, expected)
    assert sdxl.denoiser.get_submodule("time_embedding.linear_1").scaling[name] == 1.0  # both whole: alpha ignored
    set_loras(sdxl, [(path, 0.5)])  # a strength scales the whole update
    assert_deltas(sdxl.denoiser, name, expected, strength=0.5)
    set_loras(sdxl, [])
    assert no_adapter_named(sdxl.denoiser, name)


def test_sdxl_lycoris_lokr_with_kohya_sgm_names(sdxl, tmp_path):
    from blk.models.pipelines import adapter_name, set_loras

    modules, expected = {}, {}
    for seed, (stem, name) in enumerate(SDXL_SGM_NAMES.items()):
        parts = module_parts(sdxl.denoiser, name, seed + 20, rank=2, alpha=1 + seed, tucker=seed % 2 == 0)
        modules["lora_unet_" + stem] = parts
        expected[name] = expected_delta(parts, weight_shape(sdxl.denoiser, name))
    path = write_lycoris(tmp_path / "sgm.safetensors", modules)
    set_loras(sdxl, [(path, 1.0)])
    assert_deltas(sdxl.denoiser, adapter_name(path), expected)
    set_loras(sdxl, [])


def test_flux_lycoris_lokr_generates_as_the_merged_weights(flux, shared_workspace, tmp_path):
    """End to end: an image with the LoKr on equals one from a copy of the model with ΔW added by hand."""
    from blk.generate.text_to_image import TextToImage, generate
    from blk.models.pipelines import PipelineCache, adapter_name, set_loras
    from blk.models.registry import resolve

    path, expected = flux_file(flux.denoiser, tmp_path / "flux-lokr.safetensors")
    request = TextToImage("blkstyle, a drawing", seed=3, width=64, height=64, steps=2)
    base = np.asarray(generate(flux, request)).astype(int)
    set_loras(flux, [(path, 1.0)])
    assert_deltas(flux.denoiser, adapter_name(path), expected)
    with_lokr = np.asarray(generate(flux, request)).astype(int)
    set_loras(flux, [])
    assert np.array_equal(np.asarray(generate(flux, request)).astype(int), base)

    merged = PipelineCache().get(resolve("tiny-flux", shared_workspace))
    with torch.no_grad():
        for name, delta in expected.items():
            merged.denoiser.get_submodule(name).weight += delta
    by_hand = np.asarray(generate(merged, request)).astype(int)
    assert np.abs(with_lokr - base).mean() > 1.0  # the update is visible …
    assert np.abs(with_lokr - by_hand).max() <= 1  # … and is the merged one, to rounding


def test_bfl_named_flux_lokr_gets_one_sentence(flux, tmp_path):
    from blk.models.pipelines import adapter_name, set_loras

    path = write_lycoris(tmp_path / "bfl.safetensors", {
        "lora_unet_double_blocks_0_img_attn_qkv": lycoris_parts(96, 32, alpha=1),
        "lora_unet_single_blocks_0_linear1": lycoris_parts(224, 32, alpha=1),
    })
    with pytest.raises(UserError, match=r"^bfl\.safetensors names its Flux modules the BFL way .*lora_transformer_"):
        set_loras(flux, [(path, 1.0)])
    assert not flux.adapters and no_adapter_named(flux.denoiser, adapter_name(path))


def test_wrong_family_and_unknown_names_load_nothing(sdxl, flux, tmp_path):
    from blk.models.pipelines import adapter_name, set_loras

    path, _ = sdxl_file(sdxl.denoiser, tmp_path / "for-sdxl.safetensors")
    with pytest.raises(UserError, match=r"^for-sdxl\.safetensors is a LoKr for SDXL, not for Flux; use it with an? SDXL"):
        set_loras(flux, [(path, 1.0)])
    assert not flux.adapters and no_adapter_named(flux.denoiser, adapter_name(path))
    flux_path, _ = flux_file(flux.denoiser, tmp_path / "for-flux.safetensors")
    with pytest.raises(UserError, match=r"is a LoKr for Flux, not for SDXL"):
        set_loras(sdxl, [(flux_path, 1.0)])

    good = module_parts(sdxl.denoiser, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 1, alpha=1)
    odd = write_lycoris(tmp_path / "odd.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": good,
        "lora_unet_down_blocks_7_attentions_0_proj_in": lycoris_parts(64, 64, alpha=1),
    })
    with pytest.raises(UserError, match=r"^odd\.safetensors has 1 module name\(s\) this SDXL model does not have "
                                        r"\(e\.g\. lora_unet_down_blocks_7_attentions_0_proj_in\)"):
        set_loras(sdxl, [(odd, 1.0)])
    assert not sdxl.adapters and no_adapter_named(sdxl.denoiser, adapter_name(odd))

    misshapen = write_lycoris(tmp_path / "misshapen.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": lycoris_parts(64, 32, alpha=1)})
    with pytest.raises(UserError, match=r"does not fit this SDXL model: .*attn1_to_q makes a 64×32 update"):
        set_loras(sdxl, [(misshapen, 1.0)])
    assert not sdxl.adapters


def test_a_lycoris_lokr_stacks_with_our_own_lokr(trained_lokr, flux, tmp_path):
    """A downloaded LoKr next to one trained here: both apply, each at its strength."""
    from blk.models.pipelines import adapter_name, set_loras

    path, expected = flux_file(flux.denoiser, tmp_path / "flux-lokr.safetensors")
    set_loras(flux, [(trained_lokr, 0.7), (path, 0.5)])
    assert len(flux.adapters) == 2
    assert_deltas(flux.denoiser, adapter_name(path), expected, strength=0.5)
    set_loras(flux, [])


def test_a_lora_added_after_a_lokr_applies_as_in_the_other_order(trained_lokr, flux, shared_workspace, tmp_path):
    """diffusers cannot wrap a LoKr layer in a LoRA: the stack reloads LoKrs after a new LoRA, in any order."""
    from blk.generate.text_to_image import TextToImage, generate
    from blk.models.pipelines import set_loras
    from tests.support.loras import make_random_lora

    lora = make_random_lora(shared_workspace.models / "tiny-flux", "flux", tmp_path / "lora")
    request = TextToImage("blkstyle, a drawing", seed=3, width=64, height=64, steps=2)
    set_loras(flux, [(lora, 0.8), (trained_lokr, 0.7)])
    lora_first = np.asarray(generate(flux, request)).astype(int)
    set_loras(flux, [])
    set_loras(flux, [(trained_lokr, 0.7)])  # the LoKr is loaded first, then a LoRA joins it
    lokr_only = np.asarray(generate(flux, request)).astype(int)
    set_loras(flux, [(trained_lokr, 0.7), (lora, 0.8)])
    both = np.asarray(generate(flux, request)).astype(int)
    set_loras(flux, [])
    assert np.array_equal(both, lora_first) and np.abs(both - lokr_only).mean() > 0.5
    set_loras(flux, [(trained_lokr, 0.7)])
    set_loras(flux, [])  # the LoKr's layer wrappers outlive its adapter …
    set_loras(flux, [(lora, 0.8)])  # … and a LoRA still loads
    assert list(flux.adapters.values()) == [str(lora)]
    set_loras(flux, [])


@pytest.fixture(scope="module")
def trained_lokr(shared_workspace, tmp_path_factory):
    """A LoKr in our own format (diffusers names, peft config in the metadata), saved as a run saves one."""
    from peft.utils import get_peft_model_state_dict

    from blk.train.adapters import TRAINABLE
    from blk.train.lora_file import lora_file_bytes

    family = trainable_flux(shared_workspace, rank=4, alpha=4.0)
    with torch.no_grad():
        for name, parameter in family.denoiser.named_parameters():
            if ".lokr_" in name:
                parameter.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("own-lokr") / "own-lokr.safetensors"
    path.write_bytes(lora_file_bytes("flux", get_peft_model_state_dict(family.denoiser, adapter_name=TRAINABLE),
                                     family.denoiser.peft_config[TRAINABLE].to_dict(), "lokr", {}))
    return path


# a run's starting point --------------------------------------------------------------------------


def trainable_flux(shared_workspace, kind="lokr", rank=2, alpha=4.0, targets=None, factor=-1):
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.adapters import TRAINABLE, peft_config
    from blk.train.config import AdapterSection
    from blk.train.families import FluxFamily

    family = FluxFamily(load_pipeline(resolve("tiny-flux", shared_workspace), "text2img", "cpu", MemoryOptions()))
    section = AdapterSection(kind=kind, rank=rank, alpha=alpha, factor=factor,
                             **({"target_modules": targets} if targets else {}))
    torch.manual_seed(0)
    family.denoiser.add_adapter(peft_config(section), adapter_name=TRAINABLE)
    return family


def test_a_lokr_run_starts_from_a_lycoris_file(shared_workspace, tmp_path):
    from blk.train.adapters import TRAINABLE, init_trainable_from

    targets = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj"]
    family = trainable_flux(shared_workspace, rank=2, alpha=4.0, targets=targets)
    denoiser = family.denoiser
    chosen = {"transformer_blocks.0.attn.to_q": dict(rank=2, alpha=1),
              "single_transformer_blocks.0.attn.to_k": dict(rank=2, alpha=3),
              "transformer_blocks.0.ff.net.0.proj": dict(rank=2, alpha=2, decompose_both=True)}
    modules, expected = {}, {}
    for seed, (name, how) in enumerate(chosen.items()):
        parts = module_parts(denoiser, name, seed, **how)
        assert ("lokr_w1_a" in parts) == how.get("decompose_both", False) and "lokr_w2_a" in parts
        modules["lora_transformer_" + name.replace(".", "_")] = parts
        expected[name] = expected_delta(parts, weight_shape(denoiser, name))
    path = write_lycoris(tmp_path / "start.safetensors", modules)

    assert init_trainable_from(family, path) == 3
    assert_deltas(denoiser, TRAINABLE, expected)  # the file's update, under the adapter's own alpha/rank
    untouched = denoiser.get_submodule("transformer_blocks.0.attn.to_v").get_delta_weight(TRAINABLE)
    assert torch.count_nonzero(untouched) == 0  # a module the file lacks keeps its fresh (zero) start

    rank_one = trainable_flux(shared_workspace, rank=1, targets=targets)
    with pytest.raises(UserError, match=r"^start\.safetensors has rank 2 but this adapter has rank 1; "
                                        r"set the rank to 2 to start from it\.$"):
        init_trainable_from(rank_one, path)
    assert torch.count_nonzero(rank_one.denoiser.get_submodule(
        "transformer_blocks.0.attn.to_q").get_delta_weight(TRAINABLE)) == 0  # nothing written
    rank_four = trainable_flux(shared_workspace, rank=4)  # 32×32 layers keep w2 whole at rank 4: w2_a·w2_b multiplied out
    attention = {k: v for k, v in modules.items() if "ff_net" not in k}
    init_trainable_from(rank_four, write_lycoris(tmp_path / "attention.safetensors", attention))
    assert_deltas(rank_four.denoiser, TRAINABLE, {k: v for k, v in expected.items() if ".ff." not in k})


def test_a_lokr_start_names_the_setting_to_change(shared_workspace, tmp_path):
    from blk.train.adapters import init_trainable_from

    family = trainable_flux(shared_workspace, rank=2)
    name = "transformer_blocks.0.attn.to_q"
    whole = write_lycoris(tmp_path / "whole.safetensors", {
        "lora_transformer_" + name.replace(".", "_"): module_parts(family.denoiser, name, 1, full=True, alpha=2)})
    with pytest.raises(UserError, match=r"keeps transformer_blocks\.0\.attn\.to_q's w2 as one whole matrix.*"
                                        r"set the rank to at least 4"):
        init_trainable_from(family, whole)
    split = write_lycoris(tmp_path / "split.safetensors", {
        "lora_transformer_" + name.replace(".", "_"): module_parts(family.denoiser, name, 1, factor=2, alpha=2)})
    with pytest.raises(UserError, match=r"splits transformer_blocks\.0\.attn\.to_q as 2×2 ⊗ 16×16 \(LyCORIS factor 2\) "
                                        r"but this adapter splits it as 4×4 ⊗ 8×8 \(factor -1\); set adapter\.factor to 2"):
        init_trainable_from(family, split)
    assert init_trainable_from(trainable_flux(shared_workspace, rank=2, factor=2), split) == 1  # as the sentence says
    outside = write_lycoris(tmp_path / "outside.safetensors", {
        "lora_transformer_transformer_blocks_0_ff_net_0_proj": module_parts(family.denoiser, "transformer_blocks.0.ff.net.0.proj", 1)})
    with pytest.raises(UserError, match=r"also trains modules this adapter does not \(e\.g\. transformer_blocks\.0\.ff\.net"
                                        r"\.0\.proj\); add them to adapter\.target_modules"):
        init_trainable_from(family, outside)
    sdxl_lokr = write_lycoris(tmp_path / "sdxl.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": lycoris_parts(64, 64, alpha=1)})
    with pytest.raises(UserError, match=r"^sdxl\.safetensors is a LoKr for SDXL, not for Flux"):
        init_trainable_from(family, sdxl_lokr)
    lora_run = trainable_flux(shared_workspace, kind="lora", rank=2)
    with pytest.raises(UserError, match=r"^whole\.safetensors is a LoKr, not a LoRA; set adapter\.kind to lokr"):
        init_trainable_from(lora_run, whole)


def test_a_lokr_run_starts_from_a_checkpoint_of_its_own(shared_workspace, tmp_path):
    """A LoKr checkpoint a run wrote (diffusers names, its strength folded into w1) starts a new LoKr run with its
    exact update, whatever the new run's alpha. It read "not a LyCORIS LoKr file"; and a LoRA run, told it is a
    LoKr, was told "no weights for the modules this adapter trains"."""
    from peft.utils import get_peft_model_state_dict

    from blk.models.lycoris import lokr_layers
    from blk.train.adapters import TRAINABLE, adapter_metadata, init_trainable_from, published_weights, \
        starting_file_problem
    from blk.train.config import AdapterSection
    from blk.train.lora_file import lora_file_bytes

    trained = trainable_flux(shared_workspace, rank=2, alpha=1.0)
    with torch.no_grad():
        for name, parameter in trained.denoiser.named_parameters():
            if ".lokr_" in name:
                parameter.normal_(0, 0.3)
    expected = {name: layer.get_delta_weight(TRAINABLE).clone()
                for name, layer in lokr_layers(trained.denoiser, TRAINABLE).items()}
    state = get_peft_model_state_dict(trained.denoiser, adapter_name=TRAINABLE)
    path = tmp_path / "checkpoint-000250.safetensors"
    path.write_bytes(lora_file_bytes("flux", published_weights(trained.denoiser, state),
                                     adapter_metadata(trained.denoiser, AdapterSection(kind="lokr", rank=2)), "lokr", {}))

    assert starting_file_problem(path, "flux", AdapterSection(kind="lokr", rank=2)) == ""
    fresh = trainable_flux(shared_workspace, rank=2, alpha=4.0)
    assert init_trainable_from(fresh, path) == len(expected) > 0
    assert_deltas(fresh.denoiser, TRAINABLE, expected)

    said = "checkpoint-000250.safetensors is a LoKr, not a LoRA; set adapter.kind to lokr to start from it."
    assert starting_file_problem(path, "flux", AdapterSection(rank=2)) == said
    with pytest.raises(UserError, match=f"^{said}$".replace(".", r"\.")):
        init_trainable_from(trainable_flux(shared_workspace, kind="lora", rank=2), path)


def test_a_diffusers_named_lokr_keeps_its_headers_alpha_and_patterns(shared_workspace, tmp_path):
    """diffusers' own trainers store alpha ≠ rank (and per-module patterns) in the header, with the strength not
    folded in: each module's update is kron(w1, w2)·alpha/rank by peft's rule, whatever the layout."""
    import json

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from blk.models.lycoris import lokr_layers
    from blk.train.adapters import TRAINABLE, init_trainable_from

    targets = ["to_q", "to_k"]
    trained = trainable_flux(shared_workspace, rank=2, alpha=4.0, targets=targets)
    with torch.no_grad():
        for name, parameter in trained.denoiser.named_parameters():
            if ".lokr_" in name:
                parameter.normal_(0, 0.3)
    raw = {name: layer.get_delta_weight(TRAINABLE) for name, layer in lokr_layers(trained.denoiser, TRAINABLE).items()}
    state = get_peft_model_state_dict(trained.denoiser, adapter_name=TRAINABLE)  # not folded: the scale is the header's
    config = {"r": 2, "alpha": 6.0, "rank_pattern": {}, "alpha_pattern": {"to_k": 1.0}}
    path = tmp_path / "diffusers-lokr.safetensors"
    save_file({f"transformer.{key}": value.contiguous() for key, value in state.items()}, str(path),
              metadata={"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})})
    fresh = trainable_flux(shared_workspace, rank=2, alpha=4.0, targets=targets)
    assert init_trainable_from(fresh, path) == len(raw)
    # the fixture trained at alpha 4 (scale 2); the header says 6 (scale 3) and 1 for to_k (scale 0.5)
    expected = {name: delta * ((0.5 if name.endswith("to_k") else 3.0) / 2.0) for name, delta in raw.items()}
    assert_deltas(fresh.denoiser, TRAINABLE, expected)
