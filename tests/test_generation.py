"""64×64 images from the tiny models through the model layer; LoRAs swapped without reloading."""

import numpy as np
import pytest

from blk.errors import UserError
from blk.generate.text_to_image import TextToImage, generate
from blk.models.pipelines import PipelineCache, set_loras
from blk.models.registry import resolve
from tests.support.loras import make_random_lora


def pixels(image):
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def cache():
    return PipelineCache()


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sdxl"])
def test_same_seed_same_image_other_seed_other_image(name, shared_workspace, cache):
    loaded = cache.get(resolve(name, shared_workspace))
    request = TextToImage("an ink cube", seed=42, width=64, height=64, steps=2)
    first, again = generate(loaded, request), generate(loaded, request)
    other = generate(loaded, TextToImage("an ink cube", seed=43, width=64, height=64, steps=2))
    assert first.size == (64, 64) and first.mode == "RGB"
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0
    assert pixels(first).std() > 1.0  # an image, not a flat field


def test_pipeline_stays_loaded_between_calls(shared_workspace):
    cache = PipelineCache()
    flux = resolve("tiny-flux", shared_workspace)
    for seed in range(3):
        generate(cache.get(flux), TextToImage("x", seed=seed, width=64, height=64, steps=1))
    assert cache.load_count == 1
    cache.get(resolve("tiny-sdxl", shared_workspace))
    assert cache.load_count == 2


def test_progress_callback_counts_steps(shared_workspace, cache):
    seen = []
    generate(cache.get(resolve("tiny-flux", shared_workspace)),
             TextToImage("x", width=64, height=64, steps=3), callback=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_size_must_fit_the_family_grid(shared_workspace, cache):
    with pytest.raises(UserError, match="multiples of 16"):
        generate(cache.get(resolve("tiny-flux", shared_workspace)), TextToImage("x", width=72, height=64, steps=1))


@pytest.mark.parametrize("name, family", [("tiny-flux", "flux"), ("tiny-sdxl", "sdxl")])
def test_lora_scale_changes_without_reloading_the_base(name, family, shared_workspace, tmp_path):
    model = resolve(name, shared_workspace)
    lora = make_random_lora(model.path, family, tmp_path / "lora")
    cache = PipelineCache()
    request = TextToImage("a cloud", seed=5, width=64, height=64, steps=2)
    base = pixels(generate(cache.get(model), request))

    loaded = cache.get(model)
    set_loras(loaded, [(lora, 1.0)])
    full = pixels(generate(cache.get(model), request))
    set_loras(cache.get(model), [(lora, 0.5)])
    half = pixels(generate(cache.get(model), request))
    set_loras(cache.get(model), [(lora, 0.0)])
    zero = pixels(generate(cache.get(model), request))
    set_loras(cache.get(model), [])
    removed = pixels(generate(cache.get(model), request))

    assert np.abs(full - base).mean() > 1.0
    assert np.abs(half - base).mean() > 0.5 and np.abs(half - full).mean() > 0.5
    assert np.array_equal(zero, base) and np.array_equal(removed, base)
    assert cache.load_count == 1 and cache.get(model).adapters == {}


def test_lora_file_errors_are_sentences(shared_workspace, tmp_path):
    loaded = PipelineCache().get(resolve("tiny-flux", shared_workspace))
    not_lora = tmp_path / "weights.bin"
    not_lora.write_bytes(b"\x80\x04.")
    with pytest.raises(UserError, match="not a .safetensors"):
        set_loras(loaded, [(not_lora, 1.0)])
    sdxl_lora = make_random_lora(resolve("tiny-sdxl", shared_workspace).path, "sdxl", tmp_path / "sdxl")
    with pytest.raises(UserError, match="is a SDXL LoRA and the base model is FLUX: it will not load there"):
        set_loras(loaded, [(sdxl_lora, 1.0)])


def test_memory_modes_int8_with_lora_and_vae_tiling(shared_workspace, tmp_path):
    from blk.models.device import MemoryOptions

    model = resolve("tiny-flux", shared_workspace)
    lora = make_random_lora(model.path, "flux", tmp_path / "lora")
    cache = PipelineCache()
    request = TextToImage("a cube", seed=9, width=64, height=64, steps=2)
    plain = pixels(generate(cache.get(model), request))
    loaded = cache.get(model, memory=MemoryOptions(int8=True, vae_tiling=True))
    assert cache.load_count == 2 and loaded.pipe.vae.use_tiling
    assert "QLinear" in type(loaded.pipe.transformer.transformer_blocks[0].attn.to_q).__name__
    base = pixels(generate(loaded, request))
    assert base.shape == plain.shape and np.abs(base - plain).mean() < 20  # int8 stays close to fp32
    set_loras(loaded, [(lora, 1.0)])
    with_lora = pixels(generate(loaded, request))
    set_loras(loaded, [(lora, 0.0)])
    assert np.abs(with_lora - base).mean() > 1.0  # the LoRA acts on int8 weights (never fused)
    assert np.array_equal(pixels(generate(loaded, request)), base)


def test_an_image_to_image_view_keeps_the_loaded_dtype(shared_workspace, monkeypatch):
    """On a GPU the base loads in bfloat16; diffusers' `from_pipe` casts every shared module to float32 unless
    told (a FLUX transformer doubled in place, and int8 weights refuse any cast). Loaded here in bfloat16, as
    a GPU loads it."""
    import torch

    from blk.models import pipelines

    monkeypatch.setattr(pipelines, "pick_dtype", lambda device: torch.bfloat16)
    cache, model = PipelineCache(), resolve("tiny-flux", shared_workspace)
    base = cache.get(model, device="cpu")
    view = cache.get(model, task="img2img", device="cpu")
    modules = (base.pipe.transformer, base.pipe.vae, base.pipe.text_encoder, base.pipe.text_encoder_2,
               view.pipe.transformer)
    assert [module.dtype for module in modules] == [torch.bfloat16] * 5


def test_switching_models_frees_the_previous_pipeline_before_loading(shared_workspace, monkeypatch):
    """Only one base model in memory at a time: the previous pipeline (and its img2img view) is gone by the time
    the next one has loaded, offload hooks and compiled graphs notwithstanding (`PipelineCache._release`)."""
    import weakref

    from blk.models import pipelines

    cache = PipelineCache()
    flux = cache.get(resolve("tiny-flux", shared_workspace), device="cpu")
    cache.get(resolve("tiny-flux", shared_workspace), task="img2img", device="cpu")
    gone = weakref.ref(flux.pipe.transformer)
    del flux
    load, seen = pipelines.load_pipeline, []

    def load_when_freed(*args, **kwargs):
        seen.append(gone() is None)  # the moment the next model starts loading
        return load(*args, **kwargs)

    monkeypatch.setattr(pipelines, "load_pipeline", load_when_freed)
    cache.get(resolve("tiny-sdxl", shared_workspace), device="cpu")
    assert seen == [True] and cache.load_count == 2
    cache.clear()
    assert cache.loaded_options(resolve("tiny-sdxl", shared_workspace), "cpu") is None
