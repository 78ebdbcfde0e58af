"""The LoRA files a run starts from, read from their headers before anything loads: what the trainer would refuse
once it had loaded the model and encoded every caption is one sentence before a run (or its folder) exists."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from blk.errors import UserError
from blk.train.adapters import starting_file_problem
from blk.train.config import AdapterSection

FLUX_Q = "transformer.transformer_blocks.0.attn.to_q"  # a FLUX module in diffusers' names
LOKR_Q = "lora_transformer_single_transformer_blocks_0_attn_to_q"  # and in LyCORIS' names


def lora(path, rank=4, prefix=FLUX_Q, down="lora_A", up="lora_B", **more):
    save_file({f"{prefix}.{down}.weight": np.zeros((rank, 32), np.float32),
               f"{prefix}.{up}.weight": np.zeros((32, rank), np.float32), **more}, str(path))
    return path


def lokr(path, rank=2, side=64):
    """One LyCORIS LoKr module of a side×side layer, w2 decomposed at `rank` (peft splits 64 as 8 × 8)."""
    factor = int(side ** 0.5)
    save_file({f"{LOKR_Q}.lokr_w1": np.zeros((factor, factor), np.float32),
               f"{LOKR_Q}.lokr_w2_a": np.zeros((factor, rank), np.float32),
               f"{LOKR_Q}.lokr_w2_b": np.zeros((rank, factor), np.float32)}, str(path))
    return path


def test_a_starting_file_is_read_from_its_header(tmp_path):
    """Damaged, cut short, empty, text encoder only, another family, a LoKr for a LoRA or the reverse, another
    rank: each the sentence the trainer said after loading; a base LoRA is checked for what it must be."""
    rank4 = AdapterSection(rank=4)
    good = lora(tmp_path / "good.safetensors")
    assert starting_file_problem(good, "flux", rank4) == "" and starting_file_problem(good, "flux") == ""
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 440)
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-8])
    for damaged in ("garbage", "cut"):
        assert starting_file_problem(tmp_path / f"{damaged}.safetensors", "flux", rank4) == (
            f"{damaged}.safetensors is not a readable .safetensors LoRA (damaged, cut short, or another kind of file).")
    save_file({}, str(tmp_path / "empty.safetensors"))
    text_only = lora(tmp_path / "text.safetensors", prefix="lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                     down="lora_down", up="lora_up")
    for empty in (tmp_path / "empty.safetensors", text_only):
        assert starting_file_problem(empty, "flux", rank4) == \
            f"{empty.name} has no weights for the transformer; it cannot start this adapter."
    assert starting_file_problem(text_only, "sdxl") == \
        "text.safetensors has no weights for the unet; as a base LoRA it would change nothing."
    sdxl = lora(tmp_path / "sdxl.safetensors", prefix="lora_unet_down_blocks_0_attentions_0_proj_in",
                down="lora_down", up="lora_up")
    assert starting_file_problem(sdxl, "flux", rank4).startswith("sdxl.safetensors is a SDXL LoRA and the base "
                                                                 "model is FLUX")
    assert starting_file_problem(good, "flux", AdapterSection(rank=8)) == \
        "good.safetensors has rank 4 but this adapter has rank 8; set the rank to 4 to start from it."
    kohya = lora(tmp_path / "kohya.safetensors", rank=2, prefix="lora_unet_double_blocks_0_img_attn_qkv",
                 down="lora_down", up="lora_up")
    assert "has rank 2 but this adapter has rank 4" in starting_file_problem(kohya, "flux", rank4)
    mixed = lora(tmp_path / "mixed.safetensors", **{f"{FLUX_Q[:-4]}to_k.lora_A.weight": np.zeros((8, 32), np.float32)})
    assert starting_file_problem(mixed, "flux", rank4) == \
        "mixed.safetensors has modules of ranks 4, 8 but this adapter has rank 4 for all; it cannot start from it."
    a_lokr = lokr(tmp_path / "lokr.safetensors")
    assert starting_file_problem(a_lokr, "flux", rank4) == \
        "lokr.safetensors is a LoKr, not a LoRA; set adapter.kind to lokr to start from it."
    assert starting_file_problem(good, "flux", AdapterSection(kind="lokr")).startswith(
        "good.safetensors is not a LoKr file (…lokr_w1, …lokr_w2); a LoKr adapter starts from one")
    # peft decomposes the 8×8 w2 below rank 4 (then the ranks must match) and keeps it whole from 4 up
    assert starting_file_problem(a_lokr, "flux", AdapterSection(kind="lokr", rank=3)) == \
        "lokr.safetensors has rank 2 but this adapter has rank 3; set the rank to 2 to start from it."
    for fits in (2, 4, 16):
        assert starting_file_problem(a_lokr, "flux", AdapterSection(kind="lokr", rank=fits)) == "", fits


def test_a_starting_file_with_weights_that_are_not_numbers_is_named_before_the_run(tmp_path):
    """A LoRA holding NaN or infinity passed the header checks: the run died at its first step with "lower the
    learning rate", which pointed at the wrong cause."""
    rank4 = AdapterSection(rank=4)
    broken = np.zeros((32, 4), np.float32)
    broken[3, 1] = np.inf
    damaged = lora(tmp_path / "damaged.safetensors", **{f"{FLUX_Q}.lora_B.weight": broken})
    said = ("damaged.safetensors holds weights that are not numbers (NaN or infinity, e.g. in "
            f"{FLUX_Q}.lora_B.weight); it is damaged.")
    assert starting_file_problem(damaged, "flux", rank4) == said and starting_file_problem(damaged, "flux") == said
    broken[3, 1] = np.nan
    assert "not numbers" in starting_file_problem(lora(tmp_path / "nan.safetensors",
                                                       **{f"{FLUX_Q}.lora_B.weight": broken}), "flux")
    assert starting_file_problem(lora(tmp_path / "fine.safetensors"), "flux", rank4) == ""


def test_the_header_says_of_a_lokr_what_loading_it_would(shared_workspace, tmp_path):
    """Where the header finds a rank to refuse, loading the file into a LoKr of that rank refuses it in the same
    words; where it finds none, loading finds no rank to refuse either (a factor peft keeps whole is multiplied
    out, another split is the trainer's own sentence)."""
    from blk.train.adapters import init_trainable_from
    from tests.test_lycoris_lokr import module_parts, trainable_flux, write_lycoris

    name = "transformer_blocks.0.attn.to_q"
    for rank in (1, 2, 4):
        family = trainable_flux(shared_workspace, rank=rank)
        files = {how: write_lycoris(tmp_path / f"{how}-{rank}.safetensors", {
            "lora_transformer_" + name.replace(".", "_"): module_parts(family.denoiser, name, 1, **kwargs)})
            for how, kwargs in (("rank2", {"rank": 2}), ("rank3", {"rank": 3}), ("whole", {"full": True}),
                                ("split", {"rank": 2, "factor": 2}))}
        for how, path in files.items():
            said = starting_file_problem(path, "flux", AdapterSection(kind="lokr", rank=rank))
            try:
                init_trainable_from(family, path)
                loaded = ""
            except UserError as exc:
                loaded = str(exc)
            assert said == loaded if said else "has rank" not in loaded, (how, rank, said, loaded)


def test_read_lora_names_the_keys_diffusers_could_not_place(tmp_path):
    """diffusers' "Incompatible keys detected:" lists the keys on its next lines: the sentence ended on the colon."""
    from types import SimpleNamespace

    from diffusers import FluxPipeline

    from blk.train.adapters import read_lora

    keys = {f"lora_unet_block_{i}_proj.lora_down.weight": np.zeros((4, 8), np.float32) for i in range(5)}
    save_file(keys, str(tmp_path / "odd.safetensors"))
    flux = SimpleNamespace(name="flux", pipe=FluxPipeline.__new__(FluxPipeline))  # its class reads the file
    with pytest.raises(UserError) as refused:
        read_lora(flux, tmp_path / "odd.safetensors")
    assert str(refused.value) == ("odd.safetensors is not a LoRA for flux: Incompatible keys detected "
                                  "(lora_unet_block_0_proj.lora_down.weight, lora_unet_block_1_proj.lora_down.weight, "
                                  "lora_unet_block_2_proj.lora_down.weight and 2 more).")


def test_a_lora_whose_factors_do_not_fit_the_layers_is_one_sentence(shared_workspace, tmp_path):
    """A LoRA of this family but another size of model (its factors 17 wide where the layer is 32) ended the
    probe and the run in a 55-line size-mismatch traceback, as a base LoRA and as a starting one."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.adapters import add_base_loras
    from blk.train.families import FluxFamily

    misfit = tmp_path / "other-size.safetensors"
    save_file({f"{FLUX_Q}.lora_A.weight": np.zeros((4, 17), np.float32),
               f"{FLUX_Q}.lora_B.weight": np.zeros((17, 4), np.float32)}, str(misfit))
    family = FluxFamily(load_pipeline(resolve("tiny-flux", shared_workspace), "text2img", "cpu", MemoryOptions()))
    with pytest.raises(UserError) as refused:
        add_base_loras(family, [misfit])
    assert str(refused.value) == ("other-size.safetensors does not fit this flux model: its factor for "
                                  "transformer_blocks.0.attn.to_q is [4, 17] where this model's needs [4, 32] (a LoRA "
                                  "of another model of the family?).")
