"""Upscale presets: the paper's two recipes ship as presets/upscale-*.yaml, in one schema that the command line
(`--preset`, flags winning) and the Upscale tab's Preset menu both read; mistakes in a preset are one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from blk.errors import UserError
from blk.upscale.preset import load_preset, preset_names
from tests.test_upscale_esrgan import rrdb_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_shipped_presets_carry_the_papers_recipes():
    assert preset_names() == ["upscale-diffusion-flux", "upscale-esrgan"]
    esrgan = load_preset("upscale-esrgan")
    assert (esrgan.path, esrgan.upscaler, esrgan.scale, esrgan.tile) == ("esrgan", "RealESRGAN_x4plus.pth", 4, 512)
    assert 32 <= esrgan.overlap <= 64  # a pad of 16–32 px on each side of a seam
    flux = load_preset("upscale-diffusion-flux")
    assert (flux.path, flux.model, flux.prompt, flux.lora_strength, flux.final_pass) == (
        "diffusion", "flux-dev", "", 1.0, True)
    a, b = flux.denoise
    assert 0.25 <= a <= 0.37 and 0.17 <= b <= 0.23  # pass A injects texture, pass B refines
    assert 512 <= flux.tile <= 1536 and 64 <= flux.overlap <= 128 and 2 <= flux.step_scale <= 4


@pytest.mark.parametrize("text, sentence", [
    ("path: diffusion\n", "model must name the base model of the diffusion path"),
    ("path: diffusion\nmodel: flux-dev\ndenoise: [0.3, 0.9]\n", "denoise of pass B must be from 0.05 to 0.6; it is 0.9"),
    ("path: diffusion\nmodel: flux-dev\ndenoise: [0.3]\n", "denoise must have at least 2"),
    ("scale: 4\ntiles: 512\n", "tiles is not a setting here (did you mean tile?)"),
    ("path: esrgan\nlora_strength: 3\n", "lora_strength must be at most 2"),
    ("path: diffusion\nmodel: flux-dev\nseed: 1180591620717411303424\n", "seed must be at most 4294967295"),
    ("path: diffusion\nmodel: flux-dev\nsteps: 1000000\n", "steps must be at most 500"),
])
def test_a_mistake_in_a_preset_is_one_sentence(text, sentence, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        load_preset(path)
    assert str(refused.value).startswith("mine.yaml: ") and sentence in str(refused.value), refused.value
    with pytest.raises(UserError, match="No upscale preset 'nope': give a YAML file or one of upscale-diffusion-flux, "
                                        "upscale-esrgan."):
        load_preset("nope")


def parsed(workspace, *words):
    """The upscale command's arguments as the command line fills them in (`apply_preset`)."""
    from blk.cli import build_parser
    from blk.upscale.cli import apply_preset

    args = build_parser().parse_args(["upscale", "in.png", *words])
    apply_preset(args, workspace)
    return args


def test_the_command_line_takes_a_preset_and_its_flags_win(workspace, tmp_path):
    upscalers = workspace.models / "upscalers"
    upscalers.mkdir(parents=True)
    rrdb_file(upscalers / "RealESRGAN_x4plus.pth")
    loras = workspace.models / "loras"
    loras.mkdir(parents=True)
    (loras / "ink-texture.safetensors").write_bytes(b"")  # named, not loaded here
    args = parsed(workspace, "--preset", "upscale-esrgan")
    assert (args.path, Path(args.model), args.scale, args.tile, args.overlap) == (
        "esrgan", upscalers / "RealESRGAN_x4plus.pth", 4, 512, 32)
    args = parsed(workspace, "--preset", "upscale-esrgan", "--tile", "64", "--overlap", "0", "--size", "80x60")
    assert (args.tile, args.overlap, args.scale, args.size) == (64, 0, None, "80x60")  # the flags win

    mine = tmp_path / "mine.yaml"
    mine.write_text("path: diffusion\nmodel: tiny-flux\ntexture_lora: ink-texture.safetensors\nlora_strength: 0.8\n"
                    "denoise: [0.32, 0.2, 0.15]\nfinal_pass: false\nseed: 5\nupscaler: null\ntile: 512\n")
    args = parsed(workspace, "--preset", str(mine), "--seed", "9")
    assert (args.path, args.model, args.denoise, args.seed, args.no_final_pass, args.enlarge_model, args.tile) == (
        "diffusion", "tiny-flux", "0.32,0.2,0.15", 9, True, None, 512)
    assert args.lora == f"{loras / 'ink-texture.safetensors'}:0.8" and args.step_scale == 4 and args.prompt == ""
    flux = parsed(workspace, "--preset", "upscale-diffusion-flux", "--lora", "other.safetensors")
    assert (flux.model, flux.enlarge_model, flux.lora, flux.denoise) == (
        "flux-dev", str(upscalers / "RealESRGAN_x4plus.pth"), "other.safetensors", "0.3,0.2")
    # without a preset, the path's own defaults, as before presets
    plain = parsed(workspace, "--path", "diffusion", "--model", "tiny-flux")
    assert (plain.denoise, plain.seed, plain.prompt, plain.no_final_pass, plain.step_scale) == ("0.3,0.2", 0, "",
                                                                                              False, 4)
    refused = [(["--preset", "upscale-diffusion-flux", "--path", "esrgan"],
                "upscale-diffusion-flux is a preset of the diffusion path; leave out --path esrgan"),
               (["--preset", "upscale-esrgan", "--seed", "3"], "--seed is for the diffusion path"),
               ([], "--model is needed")]
    for words, sentence in refused:
        with pytest.raises(UserError, match=sentence):
            parsed(workspace, *words)


def test_a_preset_job_from_the_command_line_runs_with_its_settings(tmp_path, capsys):
    from blk.cli import main

    workspace = tmp_path / "ws"
    (workspace / "models" / "upscalers").mkdir(parents=True)
    rrdb_file(workspace / "models" / "upscalers" / "RealESRGAN_x4plus.pth")
    image = tmp_path / "art.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "art.tif"
    assert main(["--workspace", str(workspace), "upscale", str(image), "--preset", "upscale-esrgan", "--scale", "2",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    with tifffile.TiffFile(out) as tif:
        parameters = json.loads(tif.pages[0].description)
        assert tif.pages[0].shape == (40, 48, 3)
    assert (parameters["model"], parameters["tile"], parameters["overlap"]) == ("RealESRGAN_x4plus.pth", 512, 32)


def test_the_tabs_preset_menu_fills_the_form_and_says_what_is_missing(workspace):
    from ui.context import StudioContext
    from ui.tabs.upscale import DIFFUSION, ESRGAN, preset_form, switch_path

    context = StudioContext(workspace, demo=True, demo_reason="test")
    values, kept, note = preset_form(context, "upscale-diffusion-flux", {"shown": ESRGAN})
    assert note.startswith("RealESRGAN_x4plus.pth is not in workspace/models/upscalers") and "Lanczos" in note
    assert "upscaler" not in values and values["enlarge_first"] is False  # the form keeps its own: Lanczos
    assert (values["path_kind"], values["model"], values["denoise_a"], values["denoise_b"], values["use_c"],
            values["tile"], values["overlap"], values["scale"], values["lora"]) == (
        DIFFUSION, "flux-dev", 0.3, 0.2, False, 1024, 96, 2, "")
    # the Path radio's change handler then moves nothing: the preset's tile and overlap stay in the form
    assert switch_path(DIFFUSION, 2, 1024, 96, kept) == (True, kept, {"scale": 2, "tile": 1024, "overlap": 96})

    (workspace.models / "upscalers").mkdir(parents=True)
    rrdb_file(workspace.models / "upscalers" / "RealESRGAN_x4plus.pth")
    run = workspace.runs / "texture-run" / "checkpoints"
    run.mkdir(parents=True)
    (run / "step-000500.safetensors").write_bytes(b"")  # listed, not loaded here
    mine = Path(workspace.root) / "mine.yaml"
    mine.write_text("path: diffusion\nmodel: tiny-flux\ntexture_lora: texture-run/step-000500.safetensors\n"
                    "denoise: [0.3, 0.2, 0.14]\nupscaler: RealESRGAN_x4plus.pth\n")
    values, _, note = preset_form(context, str(mine), None)
    assert note == "" and values["upscaler"] == str(workspace.models / "upscalers" / "RealESRGAN_x4plus.pth")
    assert values["lora"] == str(run / "step-000500.safetensors") and values["enlarge_first"] is True
    assert (values["use_c"], values["denoise_c"]) == (True, 0.14)
    values, _, _ = preset_form(context, "upscale-esrgan", None)
    assert (values["path_kind"], values["tile"], values["overlap"], values["scale"]) == (ESRGAN, 512, 32, 4)


def test_a_training_preset_given_as_an_upscale_preset_and_back_says_what_it_is(tmp_path, capsys):
    """Each was refused with the other schema's mistakes ("model must be a valid string", "path is not a setting")."""
    from blk.cli import main
    from blk.train.config import load_config
    from blk.upscale.preset import PRESETS

    with pytest.raises(UserError) as refused:
        load_preset(PRESETS / "texture-flux.yaml")
    assert str(refused.value) == (f"texture-flux.yaml is a training preset: run it with `python -m blk train "
                                  f"{PRESETS / 'texture-flux.yaml'}`, or load it in the Train tab.")
    with pytest.raises(UserError) as refused:
        load_config(PRESETS / "upscale-esrgan.yaml")
    assert str(refused.value) == ("upscale-esrgan.yaml is an upscale preset: use it with `python -m blk upscale IMAGE "
                                  "--preset upscale-esrgan` or the Upscale tab's Preset menu.")
    mine = tmp_path / "mine.yaml"
    mine.write_text("path: diffusion\nmodel: tiny-flux\n")
    assert main(["--workspace", str(tmp_path / "ws"), "train", str(mine)]) == 2
    assert f"--preset {mine}`" in capsys.readouterr().err


def test_what_a_preset_leaves_out_is_its_paths_default_everywhere(workspace, tmp_path, capsys):
    """A diffusion preset without scale or overlap got the Real-ESRGAN path's 4 and 32 (below the paper's 64–128);
    a preset's upscaler missing stopped the command line, where the tab enlarges with Lanczos."""
    from ui.context import StudioContext
    from ui.tabs.upscale import preset_form

    mine = tmp_path / "mine.yaml"
    mine.write_text("path: diffusion\nmodel: tiny-flux\nupscaler: RealESRGAN_x4plus.pth\n")
    args = parsed(workspace, "--preset", str(mine))
    assert (args.scale, args.tile, args.overlap, args.enlarge_model) == (None, None, None, None)  # the CLI's 2, 1024, 96
    assert "RealESRGAN_x4plus.pth is not in workspace/models/upscalers, so each step enlarges with Lanczos." in \
        capsys.readouterr().err
    values, _, _ = preset_form(StudioContext(workspace, demo=True, demo_reason="test"), str(mine), None)
    assert (values["scale"], values["tile"], values["overlap"]) == (2, 1024, 96)
    assert parsed(workspace, "--preset", "upscale-diffusion-flux", "--enlarge-model", "lanczos").enlarge_model is None
    esrgan = tmp_path / "esrgan.yaml"
    esrgan.write_text("path: esrgan\nupscaler: x.pth\n")
    values, _, _ = preset_form(StudioContext(workspace, demo=True, demo_reason="test"), str(esrgan), None)
    assert (values["scale"], values["tile"], values["overlap"]) == (4, 0, 32)


def test_a_preset_that_changes_the_path_keeps_what_the_form_had_for_the_path_left(workspace, tmp_path, monkeypatch):
    """The form's typed Real-ESRGAN values were lost (or an older set came back) after a diffusion preset; and a file
    of the preset's name in the app's working folder was taken, outside the workspace."""
    from ui.context import StudioContext
    from ui.tabs.upscale import DIFFUSION, ESRGAN, preset_form, switch_path

    context = StudioContext(workspace, demo=True, demo_reason="test")
    typed = {"scale": 3, "tile": 64, "overlap": 12}
    _, kept, _ = preset_form(context, "upscale-diffusion-flux", {"shown": ESRGAN, ESRGAN: {"scale": 4, "tile": 0,
                                                                                        "overlap": 32}}, typed)
    assert switch_path(ESRGAN, 2, 1024, 96, kept)[2] == typed
    assert kept[DIFFUSION] == {"scale": 2, "tile": 1024, "overlap": 96}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RealESRGAN_x4plus.pth").write_bytes(b"not in the workspace")
    values, _, note = preset_form(context, "upscale-esrgan", None)
    assert "upscaler" not in values and note.startswith("RealESRGAN_x4plus.pth is not in workspace/models/upscalers")
    (tmp_path / "ink.safetensors").write_bytes(b"")
    mine = tmp_path / "mine.yaml"
    mine.write_text("path: diffusion\nmodel: tiny-flux\ntexture_lora: ink.safetensors\n")
    values, _, note = preset_form(context, str(mine), None)
    assert values["lora"] == "" and "The texture LoRA ink.safetensors is not among this workspace's LoRAs" in note


def test_a_training_config_of_shared_keys_only_is_told_its_own_mistake(tmp_path):
    """`name` and `model` are settings of both schemas: a training file with `model: flux-dev` (a name, where a
    section belongs) was called an upscale preset."""
    from blk.train.config import load_config

    mine = tmp_path / "ink.yaml"
    mine.write_text("name: ink\nmodel: flux-dev\n")
    with pytest.raises(UserError) as refused:
        load_config(mine)
    assert "upscale preset" not in str(refused.value) and str(refused.value).startswith("ink.yaml: model"), \
        refused.value
