"""A LoRA of the other family than the base model's is said when it is added, before any model loads."""

import torch
from safetensors.torch import save_file

from blk.generate.lora_family import family_mismatch, lora_family
from tests.support.loras import make_random_lora
from ui import lora_stack
from ui.context import StudioContext


def names_file(path, names):
    save_file({name: torch.zeros(1) for name in names}, str(path))
    return path


def test_the_family_is_read_from_the_weight_names_of_every_format(shared_workspace, trained_run, tmp_path):
    ours = trained_run / "checkpoints" / "step-000008.safetensors"  # diffusers names, FLUX
    sdxl = make_random_lora(shared_workspace.models / "tiny-sdxl", "sdxl", tmp_path / "sdxl")
    assert (lora_family(ours), lora_family(sdxl)) == ("flux", "sdxl")
    kinds = {
        "kohya-flux": (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "flux"),
        "toolkit-flux": (["diffusion_model.single_blocks.3.linear1.lora_A.weight"], "flux"),
        "kohya-sdxl": (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"], "sdxl"),
        "kohya-sdxl-te": (["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                           "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "sdxl"),
        "clip-only": (["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], None),  # either family
        "unknown": (["some.weight"], None),
    }
    for name, (keys, family) in kinds.items():
        assert lora_family(names_file(tmp_path / f"{name}.safetensors", keys)) == family, name
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    (tmp_path / "huge.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    assert lora_family(tmp_path / "text.safetensors") is None and lora_family(tmp_path / "huge.safetensors") is None
    assert lora_family(tmp_path / "gone.safetensors") is None
    assert family_mismatch(ours, "flux") == "" and family_mismatch(ours, None) == ""
    assert family_mismatch(ours, "sdxl") == ("step-000008.safetensors is a FLUX LoRA and the base model is SDXL: it "
                                             "will not load there (choose a FLUX base model, or remove it).")


def test_adding_a_lora_of_the_other_family_warns_and_a_model_change_says_it_too(shared_workspace, trained_run):
    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    checkpoint = trained_run / "checkpoints" / "step-000008.safetensors"
    items, note = lora_stack.add_lora(context, str(checkpoint), [], "tiny-sdxl")
    assert items == [[str(checkpoint), 1.0]]  # added: the artist may be about to change the model
    assert note.startswith("**step-000008.safetensors is a FLUX LoRA and the base model is SDXL")
    assert lora_stack.add_lora(context, str(checkpoint), [], "tiny-flux")[1] == ""
    assert lora_stack.add_lora(context, str(checkpoint), [], "no-such-model")[1] == ""  # a name being typed
    assert "FLUX LoRA" in lora_stack.mismatch_note(context, "tiny-sdxl", items)
    assert lora_stack.mismatch_note(context, "tiny-flux", items) == ""
