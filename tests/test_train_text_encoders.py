"""Text encoders leave memory once every text a run can use is cached, for SDXL as for Flux, and the run trains and
samples exactly what it would have with them."""

import gc
import weakref

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from blk.train.config import TrainConfig
from blk.train.runner import EventLog, run
from tests.conftest import make_noise_dataset


def sdxl_config(dataset, **data) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "encoders", "model": {"name": "tiny-sdxl"},
        "data": {"dataset": str(dataset), "resolutions": [64], **data},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 2e-2},
        "schedule": {"steps": 3, "seed": 7}, "checkpoints": {"every": 3},
        "sampling": {"every": 3, "prompts": ["a cloud"], "steps": 2, "size": 64},
    })


def test_sdxl_with_fixed_captions_lets_its_encoders_go_and_trains_the_same(shared_workspace, tmp_path):
    """Token shuffling that keeps every token in place (keep_tokens above their count) trains on the captions as
    written but keeps the encoders, as shuffling must: the same run with fixed captions frees them, and its
    losses, checkpoint and samples are bit-identical."""
    dataset = make_noise_dataset(tmp_path / "ds", count=3)
    kept = run(sdxl_config(dataset, shuffle_tokens=True, keep_tokens=99), shared_workspace, tmp_path / "kept")
    freed = run(sdxl_config(dataset), shared_workspace, tmp_path / "freed")
    assert (kept.status, freed.status) == ("finished", "finished")
    kept_events = EventLog(tmp_path / "kept" / "events.jsonl").read()
    freed_events = EventLog(tmp_path / "freed" / "events.jsonl").read()
    assert kept_events[-1]["text_encoders_released"] is False
    assert freed_events[-1]["text_encoders_released"] is True
    kept_losses = [e["loss"] for e in kept_events if e["kind"] == "loss"]
    assert len(kept_losses) == 3 and kept_losses == [e["loss"] for e in freed_events if e["kind"] == "loss"]
    a, b = load_file(str(kept.last_checkpoint)), load_file(str(freed.last_checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("step-000000-0.png", "step-000003-0.png"):  # samples from cached embeddings, with and without
        pair = [np.asarray(Image.open(folder / "samples" / name)) for folder in (tmp_path / "kept", tmp_path / "freed")]
        assert np.array_equal(*pair), name


def test_released_sdxl_encoders_are_freed_and_samples_keep_their_negative(shared_workspace, tmp_path):
    """After caching, nothing holds the encoders any more (they are garbage); a model that encodes an empty
    negative for guidance (force_zeros_for_empty_prompt off) gets its "" cached too, and a sample from the cached
    embeddings is the image the pipeline makes from the prompt with its encoders."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.cache import TensorCache
    from blk.train.runner import TextSource, _load_family, _release_text_encoders

    model = resolve("tiny-sdxl", shared_workspace)
    config = sdxl_config(tmp_path / "unused")
    family = _load_family(config, model, torch.float32, "cpu")
    family.pipe.register_to_config(force_zeros_for_empty_prompt=False)
    assert family.sample_texts("a cloud") == ["a cloud", ""]
    encoders = [weakref.ref(family.pipe.text_encoder), weakref.ref(family.pipe.text_encoder_2)]
    text_for = TextSource(family, TensorCache(tmp_path / "text"))
    assert _release_text_encoders(family, config, {"blkstyle, ink"}, text_for, "cpu") is True
    gc.collect()
    assert [ref() for ref in encoders] == [None, None]
    assert text_for.cache.misses == 3  # the caption, the sample prompt and the negative ""

    def image(pipe, **inputs):
        return np.asarray(pipe(**inputs, width=64, height=64, num_inference_steps=2, guidance_scale=3.5,
                               generator=torch.Generator("cpu").manual_seed(0)).images[0])

    reference = load_pipeline(model, "text2img", "cpu", MemoryOptions())
    reference.register_to_config(force_zeros_for_empty_prompt=False)
    cached = family.prompt_inputs(*[text_for(text) for text in family.sample_texts("a cloud")])
    assert text_for.cache.misses == 3  # read back from the cache: no encoder was needed
    with_empty_negative = image(reference, prompt="a cloud")
    assert np.array_equal(image(family.pipe, **cached), with_empty_negative)
    reference.register_to_config(force_zeros_for_empty_prompt=True)
    assert not np.array_equal(image(reference, prompt="a cloud"), with_empty_negative)  # the "" really counts


def test_flux_texts_are_encoded_before_the_transformer_is_placed(shared_workspace, tmp_path, monkeypatch):
    """The order that keeps a FLUX run's peak down on a GPU: every text is encoded (T5 and CLIP run) before the
    transformer is moved to the run's device, so the two never share it. Observed on the CPU through the calls
    torch and transformers receive: each T5 forward, each transformer `.to`."""
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    calls = []
    module_to, t5_forward = torch.nn.Module.to, T5EncoderModel.forward

    def recording_to(self, *args, **kwargs):
        if isinstance(self, FluxTransformer2DModel):
            calls.append("transformer placed")
        return module_to(self, *args, **kwargs)

    def recording_forward(self, *args, **kwargs):
        calls.append("T5 encodes")
        return t5_forward(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    monkeypatch.setattr(T5EncoderModel, "forward", recording_forward)
    dataset = make_noise_dataset(tmp_path / "ds", count=2)
    config = TrainConfig.model_validate({
        "name": "order", "model": {"name": "tiny-flux"}, "data": {"dataset": str(dataset), "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"steps": 1, "seed": 3}, "checkpoints": {"every": 1},
        "sampling": {"every": 0, "prompts": []},
    })
    assert run(config, shared_workspace, tmp_path / "run").status == "finished"
    assert "T5 encodes" in calls and "transformer placed" in calls
    last_encode = max(i for i, call in enumerate(calls) if call == "T5 encodes")
    assert last_encode < calls.index("transformer placed"), calls


def flux_config(dataset, int8_base: bool, shuffle_tokens: bool) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "int8-text", "model": {"name": "tiny-flux", "int8_base": int8_base},
        "data": {"dataset": str(dataset), "resolutions": [64], "shuffle_tokens": shuffle_tokens, "keep_tokens": 1},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"steps": 2, "seed": 3}, "checkpoints": {"every": 2}, "sampling": {"every": 0, "prompts": []},
    })


def test_flux_shuffling_on_an_int8_base_keeps_t5_in_int8_with_its_own_cache_keys(shared_workspace, tmp_path):
    """Token shuffling keeps the text encoders beside the denoiser; with an int8 base Flux's T5 (9.5 GB in bf16 at
    full size) is quantized too, CLIP stays as it is, and its embeddings (close to full precision's, not equal)
    never share a cache entry with full precision's. Without shuffling, or without an int8 base, T5 is untouched."""
    from optimum.quanto import QLinear

    from blk.models.registry import resolve
    from blk.train.cache import TensorCache
    from blk.train.runner import TextSource, _load_family, _quantize_resident_text_encoder

    model = resolve("tiny-flux", shared_workspace)
    dataset = make_noise_dataset(tmp_path / "ds", count=2)
    for int8_base, shuffle in ((False, True), (True, False)):
        untouched = _load_family(flux_config(dataset, int8_base, shuffle), model, torch.float32, "cpu")
        assert _quantize_resident_text_encoder(untouched, flux_config(dataset, int8_base, shuffle)) is False
        assert not any(isinstance(m, QLinear) for m in untouched.pipe.text_encoder_2.modules())

    config = flux_config(dataset, True, True)
    family = _load_family(config, model, torch.float32, "cpu")
    assert _quantize_resident_text_encoder(family, config) is True
    t5_linears = [m for m in family.pipe.text_encoder_2.modules() if isinstance(m, torch.nn.Linear)]
    assert t5_linears and all(isinstance(m, QLinear) for m in t5_linears)
    assert not any(isinstance(m, QLinear) for m in family.pipe.text_encoder.modules())

    cache = TensorCache(tmp_path / "text")
    int8_text = TextSource(family, cache, int8_text=True)("blkstyle, ink on paper")
    full_text = TextSource(untouched, cache)("blkstyle, ink on paper")
    assert cache.misses == 2 and cache.hits == 0  # one entry each: neither reads the other's
    a, b = int8_text["prompt_embeds"], full_text["prompt_embeds"]
    assert a.shape == b.shape and not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    assert torch.equal(int8_text["pooled"], full_text["pooled"])  # CLIP's pooled text: not quantized

    # the trainer's own wiring: a held-out image's caption (encoded as written, so cached) lands under the int8 keys
    config.data.validation_images, config.data.validation_every = 1, 1
    result = run(config, shared_workspace, tmp_path / "run")
    assert result.status == "finished"
    losses = [e["loss"] for e in EventLog(tmp_path / "run" / "events.jsonl").read() if e["kind"] == "loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    from blk.train.cache import model_key

    run_cache = TensorCache(dataset / ".blk" / "cache" / model_key(model.path) / "text")
    captions = [(dataset / f"img{i}.txt").read_text() for i in range(2)]
    assert any(run_cache._path(f"flux|int8-text|{caption}").exists() for caption in captions)
    assert not any(run_cache._path(f"flux|{caption}").exists() for caption in captions)
