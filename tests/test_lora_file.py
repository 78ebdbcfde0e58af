"""The files a run writes, read where artists use them: names that ComfyUI, Forge and diffusers map, the trained
strength in the tensors, what the file holds in its header; and starting points in other tools' names."""

import copy
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from blk.errors import UserError
from blk.train.config import TrainConfig
from blk.train.runner import EventLog, run

SDXL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]


def make_dataset(folder):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"blkstyle, a drawing number {i}, ink")
    return folder


def config_for(model: str, dataset, steps: int = 2, **adapter) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "file", "model": {"name": model}, "data": {"dataset": str(dataset), "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 2, **adapter}, "optimizer": {"name": "adamw", "lr": 2e-2},
        "schedule": {"steps": steps, "seed": 3}, "checkpoints": {"every": steps, "keep": 2}})


def read(path):
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


def fresh_pipe(model, workspace):
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve

    return load_pipeline(resolve(model, workspace), "text2img", "cpu", MemoryOptions())


def unet_output(unet) -> torch.Tensor:
    """The UNet on fixed inputs of the sizes its config asks for."""
    config = unet.config
    g = torch.Generator().manual_seed(11)
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    with torch.no_grad():
        return unet(torch.randn(1, config.in_channels, 8, 8, generator=g), torch.tensor([500]),
                    encoder_hidden_states=torch.randn(1, 77, config.cross_attention_dim, generator=g),
                    added_cond_kwargs={"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}, return_dict=False)[0]


@pytest.fixture(scope="module")
def sdxl_checkpoint(tmp_path_factory, shared_workspace):
    root = tmp_path_factory.mktemp("sdxl-file")
    config = config_for("tiny-sdxl", make_dataset(root / "ds"), target_modules=SDXL_TARGETS)
    config.optimizer.ema_decay = 0.9
    result = run(config, shared_workspace, root / "run")
    assert result.status == "finished"
    return result.last_checkpoint


def test_an_sdxl_lora_is_written_in_kohya_names_that_comfyui_and_diffusers_read(sdxl_checkpoint, shared_workspace):
    """ComfyUI maps a diffusers-named SDXL file's attention layers only as `…attn1.processor.to_q`: our
    `unet.…attn1.to_q` files loaded there with no attention layer (none at all with the default targets)."""
    tensors, header = read(sdxl_checkpoint)
    pipe = fresh_pipe("tiny-sdxl", shared_workspace)
    layers = {name.replace(".", "_"): module for name, module in pipe.unet.named_modules()}
    modules = {key.split(".")[0] for key in tensors}
    assert modules and all(module.startswith("lora_unet_") for module in modules)
    # ComfyUI's (and Forge's) table for SDXL: `lora_unet_` + each diffusers layer name, its dots as underscores
    assert all(module.removeprefix("lora_unet_") in layers for module in modules)
    for kind in ("attn1_to_q", "attn2_to_k", "attn1_to_out_0", "proj_in", "ff_net_2"):
        assert any(module.endswith(kind) for module in modules), kind
    assert {key.split(".", 1)[1] for key in tensors} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert all(tensors[f"{module}.alpha"].item() == 4 for module in modules)  # scale 1: the strength is in lora_up
    assert header["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert (header["blk.step"], header["blk.model"], header["blk.ema_decay"]) == ("2", "tiny-sdxl", "0.9")

    # diffusers converts them back: the UNet it loads is the base with each layer's W + up·down
    merged = copy.deepcopy(pipe.unet)
    base = unet_output(pipe.unet)
    pipe.load_lora_weights(str(sdxl_checkpoint))
    loaded = unet_output(pipe.unet)
    merged_layers = {name.replace(".", "_"): module for name, module in merged.named_modules()}
    with torch.no_grad():
        for module in modules:
            layer = merged_layers[module.removeprefix("lora_unet_")]
            up, down = tensors[f"{module}.lora_up.weight"].float(), tensors[f"{module}.lora_down.weight"].float()
            delta = up.flatten(1) @ down.flatten(1)
            layer.weight += delta.reshape(layer.weight.shape)
    expected = unet_output(merged)
    assert (loaded - base).abs().max() > 1e-3
    assert torch.allclose(loaded, expected, atol=1e-4), float((loaded - expected).abs().max())


def test_an_int8_sdxl_pipeline_loads_the_kohya_named_file(sdxl_checkpoint, shared_workspace):
    """On int8 weights the studio loads a LoRA onto the denoiser with diffusers names; kohya's are converted first
    (they loaded nothing there)."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import PipelineCache, set_loras
    from blk.models.registry import resolve

    loaded = PipelineCache().get(resolve("tiny-sdxl", shared_workspace), memory=MemoryOptions(int8=True))
    base = unet_output(loaded.denoiser.float())
    set_loras(loaded, [(sdxl_checkpoint, 1.0)])
    adapted = [name for name, module in loaded.denoiser.named_modules() if hasattr(module, "lora_A")
               and any(module.lora_A)]
    assert len(adapted) == len({key.split(".")[0] for key in read(sdxl_checkpoint)[0]})
    assert (unet_output(loaded.denoiser) - base).abs().max() > 1e-3


def test_a_flux_file_keeps_diffusers_names_and_says_what_it_holds(tmp_path, shared_workspace):
    result = run(config_for("tiny-flux", make_dataset(tmp_path / "ds")), shared_workspace, tmp_path / "run")
    tensors, header = read(result.last_checkpoint)
    assert tensors and all(key.startswith("transformer.") and ".lora_" in key for key in tensors)
    assert header["modelspec.architecture"] == "flux-1-dev/lora" and header["blk.ema_decay"] == "0"
    peft = json.loads(header["lora_adapter_metadata"])
    assert (peft["transformer.r"], peft["transformer.lora_alpha"]) == (4, 4)  # alpha 2 folded into lora_B
    pipe = fresh_pipe("tiny-flux", shared_workspace)
    pipe.load_lora_weights(str(result.last_checkpoint))
    assert pipe.transformer.peft_config["default_0"].r == 4


def sgm_name(module: str, layers_per_block: int) -> str:
    """kohya's original SDXL name (`input_blocks_4_1_…`) of a down block's attention layer."""
    match = re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", module)
    block, attention, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    return f"lora_unet_input_blocks_{1 + block * (layers_per_block + 1) + attention}_1_{rest.replace('.', '_')}"


def test_a_kohya_sdxl_lora_in_original_names_with_text_encoder_layers_starts_a_run(tmp_path, shared_workspace):
    """`lora_unet_input_blocks_…` (kohya's usual SDXL names) crashed with peft's "Target modules … not found": they
    need the UNet's config to convert. Its text-encoder layers were dropped without a word."""
    from safetensors.torch import save_file

    pipe = fresh_pipe("tiny-sdxl", shared_workspace)
    g = torch.Generator().manual_seed(5)
    rank, alpha, file = 4, 2.0, {}
    chosen = [(name, module) for name, module in pipe.unet.named_modules()
              if name.startswith("down_blocks") and name.endswith("attn1.to_q")]
    assert chosen
    for name, module in chosen:
        stem = sgm_name(name, pipe.unet.config.layers_per_block)
        file[f"{stem}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.3
        file[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.3
        file[f"{stem}.alpha"] = torch.tensor(alpha)
    te = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    q_proj = next(m for n, m in pipe.text_encoder.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    file[f"{te}.lora_down.weight"] = torch.randn(rank, q_proj.in_features, generator=g)
    file[f"{te}.lora_up.weight"] = torch.randn(q_proj.out_features, rank, generator=g)
    file[f"{te}.alpha"] = torch.tensor(alpha)
    save_file(file, str(tmp_path / "kohya-sdxl.safetensors"))

    config = config_for("tiny-sdxl", make_dataset(tmp_path / "ds"), steps=1, rank=rank, alpha=8,
                        target_modules=["to_q"], init_from=str(tmp_path / "kohya-sdxl.safetensors"))
    config.optimizer.lr = 1e-30  # the step changes nothing: the checkpoint is the starting point
    result = run(config, shared_workspace, tmp_path / "run")
    assert result.status == "finished"
    notices = [e["message"] for e in EventLog(tmp_path / "run" / "events.jsonl").read() if e["kind"] == "notice"]
    assert ("kohya-sdxl.safetensors also adapts 1 text-encoder layer; a run trains the denoiser only, so they are "
            "left out.") in notices
    written, _ = read(result.last_checkpoint)
    for name, _ in chosen:
        ours = "lora_unet_" + name.replace(".", "_")
        stem = sgm_name(name, pipe.unet.config.layers_per_block)
        expected = file[f"{stem}.lora_up.weight"] @ file[f"{stem}.lora_down.weight"] * (alpha / rank)
        got = written[f"{ours}.lora_up.weight"].float() @ written[f"{ours}.lora_down.weight"].float()
        assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max().item()), name  # saved in bf16


@pytest.mark.parametrize("adapter, sentence", [
    ({"target_modules": ["to_q", "typo_proj"]}, "adapter.target_modules names typo_proj, which matches no layer of "
                                                "tiny-sdxl; its layers include"),
    ({"target_modules": ["q_proj"]}, "adapter.target_modules names q_proj, which matches no layer of tiny-sdxl"),
    ({"kind": "lokr", "target_modules": ["to_q", "conv1"]}, "A LoKr adapter cannot train convolutions (conv1 in "
                                                             "adapter.target_modules)"),
])
def test_target_modules_that_fit_no_layer_are_one_sentence_before_any_caption_is_encoded(
        tmp_path, shared_workspace, adapter, sentence):
    """peft said "Target modules … not found" only after every caption was encoded (minutes on a real model),
    trained a typo beside valid names without a word, and a LoKr on a convolution wrote a file nothing loads."""
    dataset = make_dataset(tmp_path / "ds")
    with pytest.raises(UserError) as raised:
        run(config_for("tiny-sdxl", dataset, **adapter), shared_workspace, tmp_path / "run")
    assert str(raised.value).startswith(sentence)
    errors = [e["message"] for e in EventLog(tmp_path / "run" / "events.jsonl").read() if e["kind"] == "error"]
    assert errors == [str(raised.value)]
    assert not [p for p in (dataset / ".blk").rglob("cache/**/*") if p.is_file()]  # no caption or image encoded


def test_an_sdxl_lora_of_layers_kohya_names_cannot_carry_keeps_diffusers_names(tmp_path, shared_workspace):
    """diffusers converts `lora_unet_add_embedding_linear_1` back to no layer: such a file keeps diffusers names,
    which the studio and diffusers read."""
    config = config_for("tiny-sdxl", make_dataset(tmp_path / "ds"), steps=1, target_modules=["to_q", "linear_1"])
    result = run(config, shared_workspace, tmp_path / "run")
    tensors, _ = read(result.last_checkpoint)
    assert all(key.startswith("unet.") for key in tensors) and any("add_embedding.linear_1" in key for key in tensors)
    pipe = fresh_pipe("tiny-sdxl", shared_workspace)
    pipe.load_lora_weights(str(result.last_checkpoint))
    layer = pipe.unet.add_embedding.linear_1
    assert "default_0" in layer.lora_A


def comfy_flux_lora(path, rank: int = 4, alpha: float = 2.0) -> dict:
    """A FLUX LoRA as "ComfyUI format" trainers write it: the original model's module names under
    `diffusion_model.` (q, k, v fused in `qkv`), peft's factor names, an alpha each. Returns the update each
    diffusers layer should get (ComfyUI's reading: up · down · alpha / rank, the fused rows split in three)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(9)
    shapes = {"double_blocks.0.img_attn.qkv": (96, 32), "double_blocks.0.img_attn.proj": (32, 32),
              "single_blocks.0.linear2": (32, 160)}
    file, expected = {}, {}
    for module, (out, inputs) in shapes.items():
        down, up = torch.randn(rank, inputs, generator=g) * 0.3, torch.randn(out, rank, generator=g) * 0.3
        stem = f"diffusion_model.{module}"
        file |= {f"{stem}.lora_A.weight": down, f"{stem}.lora_B.weight": up, f"{stem}.alpha": torch.tensor(alpha)}
        delta = up @ down * (alpha / rank)
        if module.endswith("qkv"):
            for part, rows in zip(("to_q", "to_k", "to_v"), delta.chunk(3)):
                expected[f"transformer_blocks.0.attn.{part}"] = rows
        else:
            expected["transformer_blocks.0.attn.to_out.0" if module.endswith("proj")
                     else "single_transformer_blocks.0.proj_out"] = delta
    save_file(file, str(path))
    return expected


def test_a_comfyui_format_flux_lora_with_peft_factor_names_generates_and_starts_a_run(tmp_path, shared_workspace):
    """`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`: diffusers converts these names only with
    kohya's `lora_down` / `lora_up`, so such a file fitted no layer ("none of its weights fit") at Generate and
    as a run's starting point. Both now apply ComfyUI's update, fused layers split."""
    from blk.models.pipelines import PipelineCache, adapter_name, set_loras
    from blk.models.registry import resolve

    path = tmp_path / "comfy-flux.safetensors"
    expected = comfy_flux_lora(path)
    loaded = PipelineCache().get(resolve("tiny-flux", shared_workspace))
    set_loras(loaded, [(path, 1.0)])
    name = adapter_name(path)
    with torch.no_grad():
        applied = {module_name: module.get_delta_weight(name) for module_name, module
                   in loaded.denoiser.named_modules() if hasattr(module, "lora_A") and name in module.lora_A}
    assert applied.keys() == expected.keys()
    for module_name, delta in expected.items():
        torch.testing.assert_close(applied[module_name], delta, rtol=1e-5, atol=1e-6, msg=module_name)

    config = config_for("tiny-flux", make_dataset(tmp_path / "ds"), steps=1, rank=4, alpha=4,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_out"], init_from=str(path))
    config.optimizer.lr = 1e-30  # the step changes nothing: the checkpoint is the starting point
    result = run(config, shared_workspace, tmp_path / "run")
    assert result.status == "finished"
    written, _ = read(result.last_checkpoint)
    for module_name, delta in expected.items():
        stem = f"transformer.{module_name}"
        got = written[f"{stem}.lora_B.weight"].float() @ written[f"{stem}.lora_A.weight"].float()
        assert torch.allclose(got, delta, atol=2e-2 * delta.abs().max().item()), module_name  # saved in bf16
