"""Model layer: names resolve to local weights offline, or to one sentence naming the fetch command."""

import json
import shutil
import struct
from pathlib import Path

import pytest

from blk.commands import blk_command
from blk.errors import ModelNotFound, UserError
from blk.models import registry
from blk.models.registry import resolve
from tests.conftest import run_blk
from tests.test_upscale_esrgan import rrdb_file

COMMIT = "0" * 40


def put_in_hf_cache(cache_dir, repo_id, source_folder):
    """Lay out a model the way huggingface-hub caches a download (refs/main → snapshots/COMMIT)."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(source_folder, repo / "snapshots" / COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_missing_model_names_the_fetch_command(workspace, hf_cache):
    with pytest.raises(ModelNotFound) as caught:
        resolve("flux-dev", workspace)
    message = str(caught.value)
    assert f"`{blk_command(workspace, 'models', 'fetch', 'flux-dev')}`" in message and "\n" not in message
    assert f" -m blk --workspace {workspace.root} models fetch flux-dev`" in message  # not the default workspace


def test_matting_and_models_say_the_pip_command_of_this_environment(workspace, monkeypatch, tmp_path):
    import importlib.util
    import sys

    from blk.models.registry import list_support_models
    from blk.stencil.matting import unavailable_reason

    elsewhere = tmp_path / "env" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(elsewhere))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rembg" else
                        real_find_spec(name, *a))
    expected = f"`{elsewhere} -m pip install rembg onnxruntime`"
    assert expected in unavailable_reason(workspace) and ".venv/bin/pip" not in unavailable_reason(workspace)
    birefnet = next(row for row in list_support_models(workspace) if row.name == "birefnet-general")
    assert expected in birefnet.description
    # with an NVIDIA GPU, the runtime that uses it (the plain one runs BiRefNet on the CPU); a pretend GPU here
    import blk.models.device

    monkeypatch.setattr(blk.models.device, "cuda_device_count", lambda: 1)
    assert f"`{elsewhere} -m pip install rembg onnxruntime-gpu`" in unavailable_reason(workspace)


def test_unknown_name_lists_choices(workspace, hf_cache):
    with pytest.raises(ModelNotFound, match="tiny-flux"):
        resolve("flux-pro-ultra", workspace)


def test_a_folder_of_the_workspace_that_is_no_model_is_named_as_such(workspace, hf_cache):
    """An empty (or upscaler's) folder in workspace/models, given by its name, is said to be no diffusers folder,
    not an "Unknown model" the artist can see there."""
    (workspace.models / "my-flux").mkdir(parents=True)
    with pytest.raises(UserError, match=r"my-flux is not a diffusers model folder \(it has no model_index.json\)"):
        resolve("my-flux", workspace)


def test_resolves_from_hf_cache_and_generates(workspace, hf_cache, shared_workspace):
    snapshot = put_in_hf_cache(hf_cache, "black-forest-labs/FLUX.1-schnell", shared_workspace.models / "tiny-flux")
    model = resolve("flux-schnell", workspace)
    assert (model.family, model.source, model.path) == ("flux", "hf-cache", snapshot)
    assert registry.default_model(workspace) == ("flux-schnell", False)
    from blk.generate.text_to_image import TextToImage, generate
    from blk.models.pipelines import PipelineCache

    image = generate(PipelineCache().get(model), TextToImage("ink", seed=3, width=64, height=64, steps=2))
    assert image.size == (64, 64)


def test_resolves_workspace_folder_and_registered_path(workspace, hf_cache, shared_workspace, tmp_path):
    shutil.copytree(shared_workspace.models / "tiny-sdxl", workspace.models / "sdxl")
    model = resolve("sdxl", workspace)
    assert (model.family, model.source) == ("sdxl", "workspace")
    elsewhere = tmp_path / "my-finetune"
    shutil.copytree(shared_workspace.models / "tiny-flux", elsewhere)
    workspace.settings.models["my-finetune"] = str(elsewhere)
    workspace.save_settings()
    from blk.workspace import Workspace

    reopened = Workspace(workspace.root)
    model = resolve("my-finetune", reopened)
    assert (model.family, model.source, model.path) == ("flux", "settings", elsewhere.resolve())
    names = {row.name: row for row in registry.list_models(reopened)}
    assert names["my-finetune"].found and names["sdxl"].found and not names["flux-dev"].found
    assert names["sdxl"].size_bytes > 1_000_000


def test_the_artists_own_models_resolve_by_name_and_start_the_app_out_of_demo_mode(workspace, hf_cache,
                                                                                    shared_workspace, tmp_path):
    """A registered model, or any Flux/SDXL diffusers folder in workspace/models, is a real model: found by
    name, listed, and the default when no known model is there (the app started in demo mode with one)."""
    from blk.workspace import Workspace

    assert registry.default_model(workspace) == ("tiny-flux", True)
    elsewhere = tmp_path / "my-flux"
    shutil.copytree(shared_workspace.models / "tiny-flux", elsewhere)
    workspace.settings.models["my-flux"] = str(elsewhere)
    workspace.save_settings()
    assert registry.default_model(Workspace(workspace.root)) == ("my-flux", False)
    assert registry.default_model(Workspace(workspace.root), family="sdxl") == ("tiny-sdxl", True)

    workspace.settings.models.clear()
    workspace.save_settings()
    shutil.copytree(shared_workspace.models / "tiny-sdxl", workspace.models / "inks-sdxl")
    (workspace.models / "upscalers").mkdir()  # other weights' folders are no base models
    (workspace.models / "sd15").mkdir()
    (workspace.models / "sd15" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    reopened = Workspace(workspace.root)
    model = resolve("inks-sdxl", reopened)
    assert (model.name, model.family, model.source) == ("inks-sdxl", "sdxl", "workspace")
    assert registry.default_model(reopened) == ("inks-sdxl", False)
    rows = {row.name: row for row in registry.list_models(reopened)}
    assert rows["inks-sdxl"].found and rows["inks-sdxl"].description == "diffusers folder in workspace/models"
    assert not rows["sd15"].found and "works with Flux.1 and SDXL" in rows["sd15"].location
    assert "upscalers" not in rows
    from ui.context import StudioContext

    assert StudioContext(reopened, demo=False, demo_reason="").base_models() == ["inks-sdxl"]


def test_path_to_a_diffusers_folder_detects_family(shared_workspace):
    model = resolve(str(shared_workspace.models / "tiny-sdxl"), shared_workspace)
    assert (model.family, model.source, model.single_file) == ("sdxl", "path", False)


def write_safetensors_header(path, keys):
    header = {k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, k in enumerate(keys)}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 * len(keys))


@pytest.mark.parametrize("keys, family", [
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "flux"),
    (["model.diffusion_model.double_blocks.0.img_mod.lin.weight"], "flux"),
    (["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.input_blocks.0.0.weight"], "sdxl"),
    (["add_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight"], "sdxl"),
])
def test_single_file_family_from_header(tmp_path, keys, family, shared_workspace):
    path = tmp_path / "checkpoint.safetensors"
    write_safetensors_header(path, keys)
    model = resolve(str(path), shared_workspace)
    assert (model.family, model.single_file) == (family, True)


def test_wrong_checkpoints_are_one_sentence(tmp_path, shared_workspace):
    sd15 = tmp_path / "sd15.safetensors"
    write_safetensors_header(sd15, ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.x"])
    with pytest.raises(UserError, match="neither a Flux.1 nor an SDXL"):
        resolve(str(sd15), shared_workspace)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UserError, match="not a .safetensors"):
        resolve(str(pickle), shared_workspace)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="not a readable"):
        resolve(str(garbage), shared_workspace)
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    with pytest.raises(UserError, match="model_index.json"):
        resolve(str(folder), shared_workspace)


def test_an_incomplete_model_folder_says_what_it_lacks_and_is_never_the_default(workspace, hf_cache,
                                                                                shared_workspace):
    """A folder without vae/, a component without its weights or a shard: loading said "no file named
    config.json found in directory" naming the model's root (or a traceback), and such a folder became every
    tab's default model (so the app never went to demo mode)."""
    flux = shared_workspace.models / "tiny-flux"
    cases = {"novae": ("vae", None, "novae has no vae/ folder, which its model_index.json lists"),
             "noweights": ("transformer", "*.safetensors", "noweights's transformer/ has no weights file "
                                                           "(.safetensors)"),
             "noconfig": ("text_encoder_2", "config.json", "noconfig's text_encoder_2/ has no config.json")}
    for name, (component, remove, said) in cases.items():
        folder = workspace.models / name
        shutil.copytree(flux, folder)
        if remove is None:
            shutil.rmtree(folder / component)
        else:
            for path in (folder / component).glob(remove):
                path.unlink()
        with pytest.raises(ModelNotFound) as refused:
            resolve(name, workspace)
        assert str(refused.value) == f"{said}: the model is incomplete; copy the whole model folder again.", name
    cut = workspace.models / "cut"  # an interrupted download: the loader said "Unable to load weights", no cause
    shutil.copytree(flux, cut)
    weights = cut / "transformer" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size - 1000)
    with pytest.raises(ModelNotFound) as refused:
        resolve("cut", workspace)
    assert str(refused.value) == (f"cut's transformer/diffusion_pytorch_model.safetensors is cut short ({size - 1000:,} "
                                  f"of its {size:,} bytes): the model is incomplete; copy the whole model folder again.")
    single = workspace.models / "single.safetensors"
    single.write_bytes(weights.read_bytes())
    with pytest.raises(ModelNotFound, match=r"^single\.safetensors is cut short \(.*\): copy or download it again\.$"):
        resolve(str(single), workspace)
    sharded = workspace.models / "sharded"
    shutil.copytree(flux, sharded)
    (sharded / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "diffusion_pytorch_model.safetensors", "b": "part-2.safetensors"}}))
    with pytest.raises(ModelNotFound, match="^sharded's transformer/ lacks part-2.safetensors: the model is"):
        resolve("sharded", workspace)
    assert registry.default_model(workspace) == ("tiny-flux", True)  # none of them: demo mode, not a broken model
    shutil.copytree(workspace.models / "novae", workspace.models / "flux-schnell")  # under a known name
    rows = {row.name: row for row in registry.list_models(workspace)}
    assert not rows["novae"].found and "has no vae/ folder" in rows["novae"].location
    assert not rows["flux-schnell"].found and rows["flux-schnell"].location.startswith(
        "flux-schnell has no vae/ folder, which its model_index.json lists: the model is incomplete; fetch it again "
        "with `"), rows["flux-schnell"].location
    assert registry.default_model(workspace) == ("tiny-flux", True)


def test_a_component_holding_another_models_weights_is_one_sentence(tmp_path, shared_workspace):
    """tiny-sdxl's UNet in a Flux folder's transformer/ left every weight unloaded (a NotImplementedError
    traceback at the first move); CLIP's weights in text_encoder_2/ left T5 random without a word (pictures from
    noise-encoded prompts, training on them). The Flux folder's own files load."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline

    flux, sdxl = shared_workspace.models / "tiny-flux", shared_workspace.models / "tiny-sdxl"
    for component, stranger, count in (("transformer", sdxl / "unet" / "diffusion_pytorch_model.safetensors", 66),
                                       ("text_encoder_2", sdxl / "text_encoder" / "model.safetensors", 19)):
        folder = tmp_path / f"swapped-{component}"
        shutil.copytree(flux, folder)
        shutil.copyfile(stranger, next((folder / component).glob("*.safetensors")))
        with pytest.raises(UserError) as refused:
            load_pipeline(resolve(str(folder), shared_workspace), "text2img", "cpu", MemoryOptions())
        assert str(refused.value) == (
            f"{folder.name}'s {component} does not match its config: 0 of its {count} weights are in "
            f"{folder / component} — they are another model's, or the download is incomplete; put the model's own "
            "files there.")
    pipe = load_pipeline(resolve(str(flux), shared_workspace), "text2img", "cpu", MemoryOptions())
    assert pipe.transformer is not None


def test_a_safetensors_file_cut_short_is_said_so_and_a_lying_header_is_left_to_the_loader(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from blk.models.registry import check_safetensors_whole

    whole = tmp_path / "whole.safetensors"
    save_file({"a": np.zeros((8, 8), np.float32)}, str(whole))
    check_safetensors_whole(whole)  # nothing to say
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-10])
    size = whole.stat().st_size
    with pytest.raises(UserError, match=rf"^cut.safetensors is cut short \({size - 10:,} of its {size:,} bytes\)"):
        check_safetensors_whole(cut)
    for offsets in ([5], ["x", "y"], None):  # a header that lies: the load says what is wrong with it
        header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}).encode()
        (tmp_path / "lying.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
        check_safetensors_whole(tmp_path / "lying.safetensors")


def test_cli_models_list(tmp_path, shared_workspace):
    cache = tmp_path / "hf"
    cache.mkdir()
    put_in_hf_cache(cache, "stabilityai/stable-diffusion-xl-base-1.0", shared_workspace.models / "tiny-sdxl")
    result = run_blk("--workspace", str(shared_workspace.root), "models", "list", "--json", env={"HF_HUB_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) >= {"flux-dev", "flux-schnell", "sdxl", "tiny-flux", "tiny-sdxl"}
    assert rows["sdxl"]["found"] and str(cache) in rows["sdxl"]["location"]
    assert not rows["flux-dev"]["found"] and rows["flux-dev"]["location"].endswith(
        f" -m blk --workspace {shared_workspace.root} models fetch flux-dev")  # the command for this workspace
    assert rows["tiny-flux"]["found"] and rows["tiny-flux"]["size_bytes"] > 0
    text = run_blk("--workspace", str(shared_workspace.root), "models", "list", env={"HF_HUB_CACHE": str(cache)})
    assert text.returncode == 0 and "tiny-sdxl" in text.stdout and "missing" in text.stdout


def test_cli_fetch_refuses_tiny_and_unknown(shared_workspace):
    for name in ("tiny-flux", "nonsense"):
        result = run_blk("--workspace", str(shared_workspace.root), "models", "fetch", name)
        assert result.returncode == 2 and "Nothing to fetch" in result.stderr


def test_fetch_sends_the_users_login_though_the_studio_never_sends_a_token_implicitly(tmp_path, monkeypatch):
    """After `hf auth login` (a saved token) or with HF_TOKEN, `models fetch flux-dev` must send it: the offline
    switches stop huggingface_hub from sending any token by itself, so fetch reads the login explicitly."""
    import os

    from huggingface_hub import constants

    from blk.models.fetch import login_token

    assert os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"
    saved = tmp_path / "token"
    saved.write_text("hf_saved_login\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(saved))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert login_token(None) == "hf_saved_login"
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")
    assert login_token(None) == "hf_from_the_environment"
    assert login_token("hf_given") == "hf_given"
    monkeypatch.delenv("HF_TOKEN")
    saved.unlink()
    assert login_token(None) is None


def test_tiny_models_are_rebuilt_only_when_missing(tmp_path):
    from blk.models.tiny import VERSION_FILE, ensure_tiny_model

    folder = ensure_tiny_model("tiny-flux", tmp_path)
    stamp_time = (folder / VERSION_FILE).stat().st_mtime_ns
    assert ensure_tiny_model("tiny-flux", tmp_path) == folder
    assert (folder / VERSION_FILE).stat().st_mtime_ns == stamp_time
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".blk-tmp")]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["tokenizer_2"][1] in ("T5Tokenizer", "T5TokenizerFast")


def test_device_policy_on_this_machine():
    import torch

    from blk.models.device import pick_device, pick_dtype

    assert pick_device("auto") in ("cpu", "mps") or pick_device("auto").startswith("cuda")
    assert pick_dtype("cpu") == torch.float32
    with pytest.raises(UserError, match="not available"):
        pick_device("cuda:7" if not torch.cuda.is_available() else "cuda:99")


def test_single_file_without_a_base_model_says_what_to_fetch(tmp_path, workspace, hf_cache):
    from blk.models.pipelines import PipelineCache

    path = tmp_path / "my-flux.safetensors"
    write_safetensors_header(path, ["double_blocks.0.img_attn.qkv.weight"])
    model = resolve(str(path), workspace)
    assert model.base is None
    with pytest.raises(UserError, match="models fetch flux-dev"):
        PipelineCache().get(model)
    workspace.settings.models["my-flux"] = str(path)  # registered, it still cannot load: no default, demo mode
    assert registry.default_model(workspace) == ("tiny-flux", True)


def page_load_outputs(demo) -> dict[str, object]:
    """elem_id → the function a page load runs to fill that component."""
    config = demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    return {ids[output]: demo.fns[d["id"]].fn for d in config["dependencies"]
            if any(event == "load" for _, event in d["targets"]) for output in d["outputs"] if ids.get(output)}


def test_models_tab_lists_every_model_and_detects_devices_on_page_load(workspace, hf_cache):
    """Upscalers, LayerDiffuse, BiRefNet and the captioners are listed too, found or missing with where to put
    them; the devices fill in when the page opens (not only on "Detect devices"); Review picks its newest run
    then too."""
    from ui.app import build_app
    from ui.context import StudioContext
    from ui.tabs.models import intro_text, models_table

    (workspace.models / "upscalers").mkdir(parents=True)
    (workspace.models / "upscalers" / "4x-Ink.safetensors").write_bytes(b"u" * 10)
    (workspace.models / "layerdiffuse").mkdir()
    for name in ("TransparentVAE.pth", "layerlora.safetensors", "vae_transparent_decoder.safetensors"):
        (workspace.models / "layerdiffuse" / name).write_bytes(b"w")
    context = StudioContext(workspace, demo=True, demo_reason="test.")
    rows = {row[0]: row for row in models_table(context)}
    assert {"flux-dev", "tiny-flux", "4x-Ink.safetensors", "layerdiffuse-flux", "layerdiffuse-sdxl",
            "birefnet-general", "tiny-vlm", "Qwen/Qwen2.5-VL-7B-Instruct"} <= set(rows)
    assert rows["4x-Ink.safetensors"][1:3] == ["upscaler", "unusable"] and "RealESRGAN_x4plus.pth" not in rows
    assert rows["4x-Ink.safetensors"][5] == "4x-Ink.safetensors is damaged or not a model file (" + \
        rows["4x-Ink.safetensors"][5].split(" (", 1)[1]  # the reason, where a good file says what it is
    assert rows["layerdiffuse-flux"][2] == "found" and rows["layerdiffuse-sdxl"][2] == "missing"
    # the tab that uses each file, in a word that fits a narrow column; a file of a few bytes is not "0.0 MB"
    assert [rows[name][1] for name in ("layerdiffuse-flux", "birefnet-general", "tiny-vlm")] == ["stencil"] * 2 + \
        ["caption"]
    assert rows["4x-Ink.safetensors"][3] == "1 KB" and rows["layerdiffuse-flux"][3] == "1 KB"
    assert "layer_xl_transparent_attn.safetensors" in rows["layerdiffuse-sdxl"][4]
    assert "vae_transparent_encoder.safetensors" in rows["layerdiffuse-sdxl"][5]  # image to image needs it
    assert rows["birefnet-general"][2] == "missing" and "models/matting/birefnet-general.onnx" in \
        rows["birefnet-general"][4]
    assert rows["Qwen/Qwen2.5-VL-7B-Instruct"][2] == "missing" and "hf download" in rows[
        "Qwen/Qwen2.5-VL-7B-Instruct"][4]
    put_in_hf_cache(hf_cache, "Qwen/Qwen2.5-VL-7B-Instruct", workspace.models / "layerdiffuse")
    (hf_cache / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "snapshots" / COMMIT / "config.json").write_text("{}")
    assert {row[0]: row[2] for row in models_table(context)}["Qwen/Qwen2.5-VL-7B-Instruct"] == "found"
    rrdb_file(workspace.models / "upscalers" / "4x-Ink.safetensors.pth")
    good = {row[0]: row for row in models_table(context)}["4x-Ink.safetensors.pth"]
    assert good[2] == "found" and good[5].endswith("(ESRGAN ×4)"), good
    shutil.rmtree(workspace.models / "upscalers")
    missing = {row[0]: row for row in models_table(context)}["RealESRGAN_x4plus.pth"]
    assert missing[2] == "missing" and str(workspace.models / "upscalers") in missing[4]

    loads = page_load_outputs(build_app(context))
    assert "cpu — slow" in loads["blk-devices"]() and "In use:" in loads["blk-devices"]()
    assert f"(`device: auto`, the default: `{workspace.settings_path}` does not exist yet)" in loads["blk-devices"]()
    workspace.settings_path.write_text("device: auto\n")
    assert f"In use: **cpu** (`device: auto`, in `{workspace.settings_path}`)" in loads["blk-devices"]()
    assert "blk-review-run" in loads
    # the fetch command for this workspace, which is not the default one
    assert f"`{blk_command(workspace, 'models', 'fetch', 'NAME')}` in the studio's folder" in intro_text(context)
    assert f" -m blk --workspace {workspace.root} models fetch NAME`" in intro_text(context)


def test_the_demo_banner_says_which_paths_need_a_file(workspace, monkeypatch, tmp_path):
    from ui.app import demo_banner
    from ui.context import StudioContext

    monkeypatch.delenv("BLK_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("BLK_VLLM_VENV", str(tmp_path / "no-vllm-env"))
    context = StudioContext(workspace, demo=True, demo_reason="No real model was found.")
    assert "Caption's vLLM backend needs `python3 studio.py setup-vllm` once" in demo_banner(context)
    (tmp_path / "no-vllm-env" / "bin").mkdir(parents=True)
    (tmp_path / "no-vllm-env" / "bin" / "python").write_text("")
    assert "vLLM" not in demo_banner(context)  # made: nothing to say

    context = StudioContext(workspace, demo=True, demo_reason="No real model was found.")
    text = demo_banner(context)
    assert text.startswith("**Demo mode** — No real model was found.") and "every control works" not in text
    assert f"Real-ESRGAN path needs an upscaler file in `{workspace.models / 'upscalers'}/`" in text  # this one
    assert "matting needs BiRefNet" in text  # no BiRefNet weights in a fresh workspace
    (workspace.models / "upscalers").mkdir(parents=True)
    (workspace.models / "upscalers" / "RealESRGAN_x4plus.pth").write_bytes(b"x")  # damaged: no upscaler
    assert f"needs an upscaler file in `{workspace.models / 'upscalers'}/` (the diffusion path runs without it); the 1 " \
        "there cannot be used (Models & Settings says why)" in demo_banner(context)
    rrdb_file(workspace.models / "upscalers" / "RealESRGAN_x4plus.pth")
    assert "Real-ESRGAN" not in demo_banner(context)


def test_the_demo_banner_is_made_again_on_each_page_load(workspace):
    """An upscaler put in place while the app runs: the next page load's banner no longer asks for one."""
    from ui.app import build_app
    from ui.context import StudioContext

    context = StudioContext(workspace, demo=True, demo_reason="No real model was found.")
    banner = page_load_outputs(build_app(context))["blk-demo-banner"]
    assert "needs an upscaler file" in banner()
    (workspace.models / "upscalers").mkdir(parents=True)
    rrdb_file(workspace.models / "upscalers" / "RealESRGAN_x4plus.pth")
    assert "needs an upscaler file" not in banner() and banner().startswith("**Demo mode**")


def test_training_refuses_a_gpu_without_bfloat16_in_one_sentence(monkeypatch):
    """An older GPU (T4, V100: float16 only) would train without loss scaling and get NaN SDXL latents; it is
    said before anything loads. (The GPU is a pretend one: torch's answers about it are replaced.)"""
    import torch

    from blk.models.device import training_dtype

    # torch.cuda.is_bf16_supported() says yes on a T4 (it counts emulation): the compute capability decides
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(UserError, match=r"^Tesla T4 has no bfloat16, which training needs .*or set device: cpu\.$"):
        training_dtype("cuda:0")
    assert training_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert training_dtype("cuda:1") == torch.bfloat16


def test_no_library_advises_going_online_on_import():
    """bitsandbytes (imported by diffusers and transformers when present) told the artist on a CPU with
    AVX-512 BF16 to `pip install kernels`, a package that downloads kernels at run time; after the engine's
    import that advice is quiet. (On a CPU without AVX-512 BF16 bitsandbytes says nothing either way.)"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import blk, bitsandbytes, logging; "
                           "print(logging.getLogger('bitsandbytes.backends.cpu.ops').getEffectiveLevel())"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "kernels" not in done.stderr and done.stdout.split() == ["40"], (done.stdout, done.stderr)
