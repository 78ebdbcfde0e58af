"""LayerDiffuse: our modules take the official files' exact keys and shapes; tiny RGBA generation end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blk.errors import UserError
from blk.generate.metadata import read_parameters
from blk.generate.sketch import Lora, Sketcher
from blk.models.registry import ResolvedModel, resolve
from blk.stencil.generate import Stenciler, StencilRequest
from blk.stencil.layerdiffuse import convert_forge_lora, find_weights, latent_to_rgba, load_decoder
from blk.stencil.transparent_vae import TINY_WIDTHS, TransparentDecoder, TransparentEncoder, decode_augmented
from tests.support.encoders import record_text_encoder_calls
from tests.support.loras import make_random_lora

# a copy of ../shared/fixtures/layerdiffuse (the exact keys and shapes of the official files), kept in the
# repository so that a clone tests on its own
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "layerdiffuse"


def fixture_shapes(name: str, field="keys") -> dict:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    keys = data[field]["keys"] if field != "keys" else data["keys"]
    return {key: tuple(shape) for key, shape in keys}


def shapes(module: torch.nn.Module, prefix: str = "") -> dict:
    return {prefix + key: tuple(value.shape) for key, value in module.state_dict().items()}


def test_modules_have_the_official_keys_and_shapes():
    assert shapes(TransparentDecoder(4)) == fixture_shapes("sdxl_transparent_decoder")
    assert shapes(TransparentEncoder(4)) == fixture_shapes("sdxl_transparent_encoder")
    flux = shapes(TransparentDecoder(16), "decoder.") | shapes(TransparentEncoder(16), "encoder.")
    assert flux == fixture_shapes("flux_transparent_vae")


def test_flux_file_with_random_tensors_loads_and_ignores_the_base_vae_copy(tmp_path):
    wanted = fixture_shapes("flux_transparent_vae") | fixture_shapes("flux_transparent_vae", "possible_extra_keys_sd_vae")
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator, dtype=torch.float32).to(torch.float16)
             for key, shape in wanted.items()}
    path = tmp_path / "TransparentVAE.pth"
    torch.save(state, path)
    del state
    decoder = load_decoder(path, "flux")
    loaded = decoder.state_dict()
    assert len(loaded) == 538 and loaded["latent_conv_in.weight"].shape == (64, 16, 1, 1)
    again = torch.load(path, weights_only=True)
    assert torch.equal(loaded["conv_out.weight"], again["decoder.conv_out.weight"].float())


@pytest.mark.parametrize("name,file,part", [("sdxl_transparent_decoder", "vae_transparent_decoder.safetensors", "decoder"),
                                       ("sdxl_transparent_encoder", "vae_transparent_encoder.safetensors", "encoder")])
def test_sdxl_files_with_random_tensors_load_exactly(tmp_path, name, file, part):
    from safetensors.torch import save_file

    from blk.stencil.layerdiffuse import load_encoder

    generator = torch.Generator().manual_seed(1)
    state = {key: torch.randn(shape, generator=generator).to(torch.float16) for key, shape in fixture_shapes(name).items()}
    save_file(state, str(tmp_path / file))
    loaded = (load_decoder if part == "decoder" else load_encoder)(tmp_path / file, "sdxl").state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[key], state[key].float()) for key in state)


def test_flux_file_encoder_half_loads_from_random_tensors(tmp_path):
    from blk.stencil.layerdiffuse import load_encoder

    generator = torch.Generator().manual_seed(2)
    state = {key: torch.randn(shape, generator=generator).to(torch.float16)
             for key, shape in fixture_shapes("flux_transparent_vae").items()}
    torch.save(state, tmp_path / "TransparentVAE.pth")
    loaded = load_encoder(tmp_path / "TransparentVAE.pth", "flux").state_dict()
    encoder_keys = {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}
    assert set(loaded) == set(encoder_keys) and len(loaded) == 18
    assert all(torch.equal(loaded[key], encoder_keys[key].float()) for key in encoder_keys)


def test_wrong_or_hostile_files_are_one_sentence(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "TransparentVAE.pth"
    torch.save({"decoder.conv_in.weight": Payload()}, hostile)
    sentence = ("TransparentVAE.pth is damaged, cut short, or not LayerDiffuse's weights file: download it again "
                "(README, Real weights).")  # torch's words advised loading it again unsafely
    with pytest.raises(UserError) as refused:
        load_decoder(hostile, "flux")
    assert str(refused.value) == sentence and not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"decoder.conv_in.weight": torch.zeros(2)}, good)
    hostile.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a download cut in half
    with pytest.raises(UserError) as refused:
        load_decoder(hostile, "flux")
    assert str(refused.value) == sentence

    torch.save({"decoder." + k: v for k, v in
                TransparentDecoder(4, (8, 8, 16, 16, 16, 32, 32)).state_dict().items()}, tmp_path / "x.pth")
    with pytest.raises(UserError, match="does not match LayerDiffuse.s flux decoder"):
        load_decoder(tmp_path / "x.pth", "flux")  # 4 latent channels where Flux has 16


def test_missing_weights_name_the_files_and_the_folder(shared_workspace):
    fake = ResolvedModel(name="flux-dev", family="flux", path=shared_workspace.models / "tiny-flux", source="test",
                         single_file=False, base=None)
    with pytest.raises(UserError) as error:
        find_weights(shared_workspace, fake)
    message = str(error.value)
    assert "TransparentVAE.pth and layerlora.safetensors" in message and "models/layerdiffuse" in message
    assert "ink-to-alpha" in message


def test_test_time_augmentation_is_the_lower_median_of_eight_views():
    class Equivariant(torch.nn.Module):  # a per-pixel function: every view gives the same answer
        def forward(self, pixel, latent):
            return torch.cat([pixel, pixel[:, :1] * 0.5], dim=1)

    class Positional(torch.nn.Module):  # depends on where a pixel is: the views disagree
        def forward(self, pixel, latent):
            ramp = torch.linspace(0, 1, pixel.shape[3]).expand_as(pixel[:, :1])
            return torch.cat([pixel, ramp], dim=1)

    pixel, latent = torch.rand(1, 3, 16, 16), torch.rand(1, 4, 2, 2)
    equivariant = Equivariant()
    assert torch.allclose(decode_augmented(equivariant, pixel, latent), equivariant(pixel, latent).clip(0, 1))
    alpha = decode_augmented(Positional(), pixel, latent)[0, 3]
    # each output pixel sees its column index under 8 orientations; the median of those views is
    # symmetric, so the left and right edges agree (the single pass would give 0 and 1)
    assert torch.allclose(alpha[:, 0], alpha[:, -1]) and torch.allclose(alpha, alpha.flip(0))


def test_augmented_decode_of_a_flipped_input_is_the_flipped_decode():
    """The 8 views of a flipped input are the flipped 8 views of the input (the dihedral group is closed), so
    the median commutes with the flip for any decoder; a single pass of a random decoder does not."""
    torch.manual_seed(0)
    decoder = TransparentDecoder(16, TINY_WIDTHS).eval()
    pixel, latent = torch.rand(1, 3, 64, 64), torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        straight = decode_augmented(decoder, pixel, latent)
        flipped = decode_augmented(decoder, pixel.flip(3), latent.flip(3))
        single = decode_augmented(decoder, pixel, latent, augment=False)
        single_flipped = decode_augmented(decoder, pixel.flip(3), latent.flip(3), augment=False)
    assert torch.allclose(flipped, straight.flip(3), atol=1e-5)
    assert not torch.allclose(single_flipped, single.flip(3), atol=1e-3)
    assert not torch.allclose(straight, single, atol=1e-3)  # and TTA on differs from off


@pytest.mark.parametrize("family, expected", [("flux", [0.1, 0.2, 0.3, 0.4]), ("sdxl", [0.2, 0.3, 0.4, 0.1])])
def test_channel_order_per_family(shared_workspace, family, expected):
    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel, latent):
            values = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)
            return values.expand(pixel.shape[0], 4, *pixel.shape[2:]).clone()

    from blk.models.pipelines import PipelineCache

    loaded = PipelineCache().get(resolve(f"tiny-{family}", shared_workspace))
    if family == "flux":
        latents = torch.zeros(1, (64 // 16) ** 2, 64)
    else:
        latents = torch.zeros(1, 4, 8, 8)
    rgba = latent_to_rgba(loaded, latents, 64, 64, Constant(), augment=False)
    assert rgba.shape == (1, 4, 64, 64)
    assert torch.allclose(rgba[0, :, 5, 7], torch.tensor(expected))


def test_forge_lora_names_become_kohya_names():
    up, down = torch.zeros(8, 2), torch.zeros(2, 8)
    converted = convert_forge_lora({
        "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::0": up,
        "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::1": down,
    })
    assert converted == {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": up,
                         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": down}


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sdxl"])
def test_tiny_transparent_generation(model, shared_workspace, tmp_path):
    stenciler = Stenciler(Sketcher(shared_workspace))
    request = StencilRequest(model, "a cube, thin line", role="FG", seed=4, width=70, height=64, steps=2,
                             out_dir=tmp_path)
    first, = stenciler.run(request)
    again, = stenciler.run(request)
    image = Image.open(first.path)
    assert image.mode == "RGBA" and image.size == (64, 64) and "64 px grid" in first.notice
    pixels = np.asarray(image)
    assert np.array_equal(pixels, np.asarray(Image.open(again.path)))
    assert pixels[..., 3].std() > 0 or pixels[..., 3].max() > 0  # the decoder's alpha, not a constant 255
    assert not (pixels[..., 3] == 255).all()
    parameters = read_parameters(first.path)
    assert parameters["prompt"] == "a cube, thin line, FG" and parameters["role"] == "FG"
    assert parameters["layerdiffuse"]["decoder"] in ("TransparentVAE.pth", "vae_transparent_decoder.safetensors")

    quick, = stenciler.run(StencilRequest(**{**request.__dict__, "augment": False}))
    assert not np.array_equal(np.asarray(Image.open(quick.path)), pixels)  # TTA changes the decode
    assert stenciler.sketcher.cache.load_count == 1


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sdxl"])
def test_several_assets_of_one_prompt_encode_it_once_and_are_the_single_assets(model, shared_workspace, tmp_path,
                                                                                monkeypatch):
    calls = record_text_encoder_calls(monkeypatch)
    stenciler = Stenciler(Sketcher(shared_workspace))
    request = StencilRequest(model, "a leaf", role="FG", seed=6, width=64, height=64, steps=2, augment=False,
                             out_dir=tmp_path / "single")
    singles = []
    for seed in (6, 7):
        calls.clear()
        singles += stenciler.run(StencilRequest(**{**request.__dict__, "seed": seed}))
    one_asset = sorted(calls)
    calls.clear()
    both = stenciler.run(StencilRequest(**{**request.__dict__, "count": 2, "out_dir": tmp_path / "both"}))
    assert one_asset and sorted(calls) == one_asset
    for single, batched in zip(singles, both):
        assert np.array_equal(np.asarray(Image.open(single.path)), np.asarray(Image.open(batched.path)))


def test_out_of_memory_is_one_sentence_that_holds_no_tensors(shared_workspace, tmp_path, monkeypatch):
    """A transparent asset that does not fit: one sentence naming what to change, raised after the handler so
    that no traceback keeps the failed run's tensors (they were never given back to the device)."""
    stenciler = Stenciler(Sketcher(shared_workspace))
    loaded = stenciler.sketcher.cache.get(resolve("tiny-flux", shared_workspace))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(loaded.pipe.transformer, "forward", out_of_memory)
    with pytest.raises(UserError, match=r"^Out of memory at 64×64: turn off test-time augmentation") as caught:
        stenciler.run(StencilRequest("tiny-flux", "a cube", role="FG", seed=1, width=64, height=64, steps=2,
                                     out_dir=tmp_path / "out"))
    assert caught.value.__context__ is None and not list((tmp_path / "out").glob("*"))


def test_sdxl_decodes_in_fp32_and_gives_the_shared_vae_back_in_fp16(shared_workspace):
    """SDXL's VAE overflows in fp16, so a transparent decode upcasts it; the VAE is the pipeline's own, shared
    with Sketch, and stayed fp32: Sketch's next fp16 latents met fp32 weights (a GPU's dtype error)."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.stencil.layerdiffuse import _decode_sdxl

    vae = load_pipeline(resolve("tiny-sdxl", shared_workspace), "text2img", "cpu", MemoryOptions()).vae
    vae.register_to_config(force_upcast=True)
    vae.to(torch.float16)
    raw = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    pixels = _decode_sdxl(vae, raw.half())
    assert pixels.dtype == torch.float16 and pixels.shape == (1, 3, 64, 64) and torch.isfinite(pixels).all()
    assert vae.dtype == torch.float16


def test_style_lora_changes_the_asset_and_roles_are_checked(shared_workspace, tmp_path):
    stenciler = Stenciler(Sketcher(shared_workspace))
    style = make_random_lora(shared_workspace.models / "tiny-flux", "flux", tmp_path / "style")
    base = StencilRequest("tiny-flux", "a cloud", role="MG", seed=2, width=64, height=64, steps=2, augment=False,
                          out_dir=tmp_path)
    plain, = stenciler.run(base)
    styled, = stenciler.run(StencilRequest(**{**base.__dict__, "loras": [Lora(style, 1.0)]}))
    difference = np.abs(np.asarray(Image.open(plain.path)).astype(int) - np.asarray(Image.open(styled.path)).astype(int))
    assert difference.mean() > 0.5
    with pytest.raises(UserError, match="Z-role"):
        stenciler.run(StencilRequest(**{**base.__dict__, "role": "foreground"}))


def test_cli_stencil_generate(shared_workspace, tmp_path):
    from tests.conftest import run_blk

    result = run_blk("--workspace", str(shared_workspace.root), "stencil", "generate", "--model", "tiny-flux",
                     "--prompt", "an icosahedron", "--role", "BG-overlay", "--seed", "5", "--size", "64x64",
                     "--steps", "2", "--no-tta", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = next(tmp_path.glob("*.png"))
    assert Image.open(path).mode == "RGBA" and f"seed 5: {path}" in result.stdout
    assert read_parameters(path)["augment"] is False
    refined = run_blk("--workspace", str(shared_workspace.root), "stencil", "generate", "--model", "tiny-flux",
                      "--image", str(path), "--strength", "0.5", "--seed", "5", "--steps", "2", "--no-tta",
                      "--out", str(tmp_path / "refined"))
    assert refined.returncode == 0, refined.stderr
    second = next((tmp_path / "refined").glob("*.png"))
    assert read_parameters(second)["source_image"] == path.name and Image.open(second).size == (64, 64)
    bad = run_blk("--workspace", str(shared_workspace.root), "stencil", "generate", "--model", "no-such-model")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_matting_says_how_to_stage_it(shared_workspace):
    import importlib.util

    from blk.stencil.matting import matte, unavailable_reason

    reason = unavailable_reason(shared_workspace)
    if importlib.util.find_spec("rembg") is None:
        assert "rembg" in reason and "birefnet-general.onnx" in reason and "models/matting" in reason
        with pytest.raises(UserError, match="Matting needs"):
            matte(shared_workspace, Image.new("RGB", (8, 8)))


def test_forge_format_layer_lora_is_converted_and_acts_on_sdxl(shared_workspace, tmp_path):
    """SDXL's official layer LoRA is in Forge's `::lora::` layout: converted once, it loads and changes the image."""
    from safetensors.torch import save_file

    from blk.generate.text_to_image import TextToImage, generate
    from blk.models.pipelines import PipelineCache, set_loras
    from blk.stencil.layerdiffuse import loadable_lora

    generator = torch.Generator().manual_seed(0)
    forge = {}
    for attention in ("attn1", "attn2"):
        for projection in ("to_q", "to_out.0"):
            name = f"diffusion_model.input_blocks.4.1.transformer_blocks.0.{attention}.{projection}.weight"
            forge[f"{name}::lora::0"] = torch.randn(64, 4, generator=generator)  # up
            forge[f"{name}::lora::1"] = torch.randn(4, 64, generator=generator) * 0.5  # down
    path = tmp_path / "layer_xl_transparent_attn.safetensors"
    save_file(forge, str(path))
    loadable = loadable_lora(path)
    assert loadable != path and loadable.parent.name == ".converted" and loadable_lora(path) == loadable

    cache = PipelineCache()
    loaded = cache.get(resolve("tiny-sdxl", shared_workspace))
    request = TextToImage("a cube", seed=1, width=64, height=64, steps=2)
    base = np.asarray(generate(loaded, request)).astype(int)
    set_loras(loaded, [(loadable, 1.0)])
    layered = np.asarray(generate(loaded, request)).astype(int)
    assert np.abs(layered - base).mean() > 0.5


# RGBA → latent (image-to-image with transparency) ---------------------------------------------------

def _disc(size=64, colour=(220, 40, 30)) -> Image.Image:
    """A red disc on a fully transparent field whose hidden colour is black (as many exports store it)."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    pixels = np.zeros((size, size, 4), np.uint8)
    pixels[inside] = (*colour, 255)
    return Image.fromarray(pixels, "RGBA")


def test_padding_keeps_visible_colour_and_fills_the_clear_area_from_it():
    from blk.stencil.layerdiffuse import pad_rgb

    rgba = torch.from_numpy(np.asarray(_disc(), np.float32) / 255).permute(2, 0, 1)[None]
    padded = pad_rgb(rgba)
    inside = rgba[0, 3] == 1
    assert torch.allclose(padded[0][:, inside], rgba[0, :3][:, inside], atol=1e-6)
    # the clear area is red-ish (carried from the disc), not the black stored under alpha 0
    outside = padded[0][:, ~inside]
    assert outside[0].min() > 0.5 and outside[1].max() < 0.3 and outside[2].max() < 0.3


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sdxl"])
def test_encoder_moves_the_vae_latent_and_sees_alpha_in_its_family_order(model, shared_workspace):
    from blk.models.pipelines import PipelineCache
    from blk.stencil.layerdiffuse import find_encoder, load_encoder, rgba_to_latent

    resolved = resolve(model, shared_workspace)
    vae = PipelineCache().get(resolved).pipe.vae
    encoder = load_encoder(find_encoder(shared_workspace, resolved), resolved.family)
    rgba = torch.from_numpy(np.asarray(_disc(), np.float32) / 255).permute(2, 0, 1)[None]
    seen = []
    encoder.blocks[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    latent = rgba_to_latent(vae, resolved.family, encoder, rgba)
    alpha_channel = 3 if resolved.family == "flux" else 0
    assert torch.equal(seen[0][:, alpha_channel], rgba[:, 3])

    # with the encoder silenced the latent is the base VAE's mean of the premultiplied colour, scaled
    with torch.no_grad():
        encoder.blocks[-1].weight.zero_()
        encoder.blocks[-1].bias.zero_()
    plain = rgba_to_latent(vae, resolved.family, encoder, rgba)
    with torch.no_grad():
        mean = vae.encode((rgba[:, :3] * 2 - 1) * rgba[:, 3:]).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    # (5e-4: the contiguous and channels-last inputs take different convolution kernels, ~1e-4 apart)
    assert torch.allclose(plain, (mean - shift) * vae.config.scaling_factor, atol=5e-4)
    assert latent.shape == plain.shape and (latent - plain).abs().mean() > 1e-2  # the offset moved it


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sdxl"])
def test_image_to_image_with_transparency(model, shared_workspace, tmp_path):
    source = tmp_path / "disc.png"
    _disc(size=96).resize((100, 96)).save(source)  # 100 px wide: rounded to 64 with a notice
    stenciler = Stenciler(Sketcher(shared_workspace))
    request = StencilRequest(model, "a disc", role="FG", seed=3, steps=4, augment=False, out_dir=tmp_path / "out",
                             image=source, strength=0.5)
    first, = stenciler.run(request)
    again, = stenciler.run(request)
    stronger, = stenciler.run(StencilRequest(**{**request.__dict__, "strength": 1.0}))
    image = Image.open(first.path)
    assert image.mode == "RGBA" and image.size == (128, 128) and "64 px grid" in first.notice
    pixels = np.asarray(image)
    assert np.array_equal(pixels, np.asarray(Image.open(again.path)))
    assert not np.array_equal(pixels, np.asarray(Image.open(stronger.path)))
    parameters = read_parameters(first.path)
    assert parameters["source_image"] == "disc.png" and parameters["strength"] == 0.5
    assert "compositeWithTrainedAlgorithmicMedia" in image.text["XML:com.adobe.xmp"]
    assert stenciler.sketcher.cache.load_count == 1  # the img2img view shares the loaded base

    # progress ends with the run: 7 steps at 0.6 are 5 denoising steps on Flux (7 − int(2.8)), 4 on SDXL
    # (int(4.2)), then the decode; counting int(7 × 0.6) for Flux went past 100 % before the decode
    ticks = []
    stenciler.run(StencilRequest(**{**request.__dict__, "steps": 7, "strength": 0.6}),
                  progress=lambda done, total: ticks.append((done, total)))
    runs = {"tiny-flux": 5, "tiny-sdxl": 4}[model]
    assert ticks == [(step, runs + 1) for step in range(1, runs + 1)] + [(runs + 1, runs + 1)]

    with pytest.raises(UserError, match="Strength"):
        stenciler.run(StencilRequest(**{**request.__dict__, "strength": 1.5}))
    with pytest.raises(UserError, match="does not exist"):
        stenciler.run(StencilRequest(**{**request.__dict__, "image": tmp_path / "missing.png"}))


def test_an_artists_model_named_tiny_gets_no_random_layerdiffuse_weights(shared_workspace, tmp_path):
    """Only the built-in tiny models get random LayerDiffuse weights; the artist's own `tiny-inks` folder in
    workspace/models is a real model: told what is missing, nothing written into it."""
    import shutil

    from blk.errors import UserError
    from blk.models.registry import resolve
    from blk.stencil.layerdiffuse import find_weights
    from blk.workspace import Workspace

    workspace = Workspace(tmp_path / "workspace")
    shutil.copytree(shared_workspace.models / "tiny-flux", workspace.models / "tiny-inks",
                    ignore=shutil.ignore_patterns("layerdiffuse"))
    model = resolve("tiny-inks", workspace)
    assert not model.is_tiny
    with pytest.raises(UserError, match="LayerDiffuse for flux needs"):
        find_weights(workspace, model)
    assert not (workspace.models / "tiny-inks" / "layerdiffuse").exists()
