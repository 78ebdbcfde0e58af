"""Speed options: a compiled denoiser gives the images of the uncompiled one, through LoRA changes;
the attention backend; what cannot run here is one sentence, and a failing compiler falls back.

Compiling on a CPU runs Inductor and g++ (tens of seconds the first time on 2 cores, seconds once
its cache in /tmp/torchinductor_USER is warm), so the compiled path is exercised by one test that
walks a whole LoRA sequence on the tiniest model (tiny-flux, 64 px, 2 steps).
"""

import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.generate.metadata import read_parameters
from blk.generate.sketch import Lora, Sketcher, SketchRequest
from blk.models.device import MemoryOptions
from blk.models.pipelines import PipelineCache
from blk.workspace import Workspace
from tests.support.loras import make_random_lora

# fp32 on a CPU: Inductor sums in another order than eager PyTorch, so a pixel may differ by a level
COMPILED_TOLERANCE = 2  # of 255


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def request(out_dir, loras=(), memory=MemoryOptions(), model="tiny-flux", seed=5):
    return SketchRequest(model=model, prompt="an ink cube", seed=seed, width=64, height=64, steps=2,
                         loras=[Lora(path, scale) for path, scale in loras], memory=memory, out_dir=out_dir)


def test_compiled_images_match_through_lora_add_switch_and_remove(shared_workspace, tmp_path):
    """The test that catches a stale compiled graph (or a fused QKV projection, which skips LoRAs): every
    step of a LoRA sequence must give the uncompiled image, and each LoRA must visibly act."""
    import torch._dynamo.utils

    from blk.models import speed
    from blk.models.registry import resolve

    model = resolve("tiny-flux", shared_workspace)
    lora = make_random_lora(model.path, "flux", tmp_path / "lora", seed=1)
    eager, compiled = Sketcher(shared_workspace), Sketcher(shared_workspace)
    steps = [  # (LoRA stack, what changes); every new stack costs a compile (seconds on a CPU, each)
        ([], "first compile, no LoRA"),
        ([(lora, 1.0)], "a LoRA added"),
        ([(lora, 0.4)], "its strength changed"),
        ([], "the LoRA removed"),
    ]
    seen = []
    for loras, change in steps:
        frames = torch._dynamo.utils.counters["frames"]["ok"]
        expected = pixels(eager.run(request(tmp_path / "eager", loras))[0].path)
        result, = compiled.run(request(tmp_path / "compiled", loras, MemoryOptions(compile=True)))
        assert np.abs(pixels(result.path) - expected).max() <= COMPILED_TOLERANCE, change
        if change == "its strength changed":  # scalings are tensors under compile: no new graph
            assert torch._dynamo.utils.counters["frames"]["ok"] == frames
        assert result.parameters["memory"]["compile"] is True and read_parameters(result.path)["memory"]["compile"]
        assert result.notice == ""
        seen.append(expected)
    # every step changes the image, so a compiled graph that missed a change could not match
    base, full, weaker, removed = seen
    assert np.abs(full - base).mean() > 2.0 and np.abs(weaker - full).mean() > 1.0
    assert np.abs(weaker - base).mean() > 1.0 and np.array_equal(removed, base)
    loaded = compiled.cache._loaded
    assert speed.is_compiled(loaded.denoiser) and compiled.cache.load_count == 1


def test_compile_toggles_in_place_without_reloading(shared_workspace, tmp_path):
    """Compile on and off is switched on the loaded weights (no second load), and off again computes exactly
    as before it was on."""
    from blk.models import speed

    sketcher = Sketcher(shared_workspace)
    uncompiled = pixels(sketcher.run(request(tmp_path / "a"))[0].path)
    compiled, = sketcher.run(request(tmp_path / "b", memory=MemoryOptions(compile=True)))
    denoiser = sketcher.cache._loaded.denoiser
    assert speed.is_compiled(denoiser) and sketcher.cache.load_count == 1 and compiled.notice == ""
    assert np.abs(pixels(compiled.path) - uncompiled).max() <= COMPILED_TOLERANCE
    assert compiled.parameters["memory"]["compile"] is True
    back, = sketcher.run(request(tmp_path / "c"))
    assert not speed.is_compiled(denoiser) and sketcher.cache.load_count == 1
    assert np.array_equal(pixels(back.path), uncompiled) and back.parameters["memory"]["compile"] is False


def test_bench_compile_alternatives_are_valid_and_keep_the_image(shared_workspace, tmp_path, monkeypatch):
    """The Inductor settings bench/generate.py tries on a GPU (`speed.COMPILE_ALTERNATIVES`) are settings
    torch.compile accepts (it refuses `mode` with `options`), reach the blocks, and keep the image."""
    import torch

    from blk.models import speed

    uncompiled = pixels(Sketcher(shared_workspace).run(request(tmp_path / "eager"))[0].path)
    for label, settings in speed.COMPILE_ALTERNATIVES.items():
        torch._dynamo.reset()
        monkeypatch.setattr(speed, "COMPILE_SETTINGS", settings)
        sketcher = Sketcher(shared_workspace)
        result, = sketcher.run(request(tmp_path / label, memory=MemoryOptions(compile=True)))
        assert result.notice == "", label  # no fallback to eager: the settings compiled
        assert speed.is_compiled(sketcher.cache._loaded.denoiser)
        assert np.abs(pixels(result.path) - uncompiled).max() <= COMPILED_TOLERANCE, label
    torch._dynamo.reset()


def test_compile_without_a_compiler_is_one_sentence_before_loading(shared_workspace, tmp_path):
    import torch._inductor.config

    sketcher = Sketcher(shared_workspace)
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}), \
            pytest.raises(UserError, match="needs a C\\+\\+ compiler") as caught:
        sketcher.run(request(tmp_path / "out", memory=MemoryOptions(compile=True)))
    assert "\n" not in str(caught.value) and sketcher.cache.load_count == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_compiler_failing_mid_run_falls_back_to_the_same_image(shared_workspace, tmp_path):
    import torch._dynamo
    import torch._inductor.config
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    from blk.models import speed

    from blk.models.registry import resolve

    expected = pixels(Sketcher(shared_workspace).run(request(tmp_path / "eager", seed=11))[0].path)
    sketcher = Sketcher(shared_workspace)
    loaded = sketcher.cache.get(resolve("tiny-flux", shared_workspace), memory=MemoryOptions(compile=True))
    assert speed.is_compiled(loaded.denoiser)
    torch._dynamo.reset()  # nothing compiled earlier can be reused
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}), \
            temporary_cache_dir(str(tmp_path / "inductor")):  # the compiler goes away, and no cached kernel helps
        result, = sketcher.run(request(tmp_path / "out", memory=MemoryOptions(compile=True), seed=11))
    assert "Compile failed" in result.notice and "uncompiled" in result.notice
    assert np.array_equal(pixels(result.path), expected) and not speed.is_compiled(loaded.denoiser)
    again, = sketcher.run(request(tmp_path / "out", memory=MemoryOptions(compile=True), seed=11))
    assert again.notice == ""  # said once


def test_attention_backend_same_image_and_unusable_ones_are_sentences(shared_workspace, tmp_path):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from blk.models import speed

    default = _AttentionBackendRegistry._active_backend
    sketcher = Sketcher(shared_workspace)
    expected = pixels(sketcher.run(request(tmp_path / "a"))[0].path)
    usable = speed.usable_attention_backends("cpu", __import__("torch").float32)
    assert "native" in usable and "_native_cudnn" not in usable  # cuDNN is a GPU kernel
    result, = sketcher.run(request(tmp_path / "b", memory=MemoryOptions(attention="_native_math")))
    assert np.abs(pixels(result.path) - expected).max() <= 1 and result.parameters["memory"]["attention"] == \
        "_native_math"
    processors = [m.processor for m in sketcher.cache._loaded.denoiser.modules() if hasattr(m, "processor")]
    assert processors and all(p._attention_backend == "_native_math" for p in processors)
    assert _AttentionBackendRegistry._active_backend == default  # other models keep the default
    for name, words in (("_native_cudnn", "does not run on cpu"), ("magic", "Unknown attention backend")):
        loads = sketcher.cache.load_count
        with pytest.raises(UserError, match=words):
            sketcher.run(request(tmp_path / "c", memory=MemoryOptions(attention=name)))
        assert sketcher.cache.load_count == loads
    sdxl, = sketcher.run(request(tmp_path / "d", memory=MemoryOptions(attention="_native_math"), model="tiny-sdxl"))
    assert sdxl.parameters["memory"]["attention"] == ""  # a Flux option: SDXL runs (and says) the default


def test_speed_defaults_in_settings(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    assert (workspace.settings.compile, workspace.settings.attention) == (False, "")
    workspace.settings.compile, workspace.settings.attention = True, "_native_cudnn"
    workspace.save_settings()
    again = Workspace(tmp_path / "ws")
    assert (again.settings.compile, again.settings.attention) == (True, "_native_cudnn")
    (tmp_path / "ws" / "settings.yaml").write_text("compile: sometimes\n")
    with pytest.raises(UserError, match="not valid settings"):
        Workspace(tmp_path / "ws")


def test_review_and_sketch_share_one_load_with_the_same_speed_options(shared_workspace, tmp_path):
    """A grid with the settings' speed options reuses the pipeline Sketch loaded with the same ones."""
    from blk.generate.review import GridSpec, Reviewer

    cache = PipelineCache()
    sketcher = Sketcher(shared_workspace, cache)
    memory = MemoryOptions(attention="_native_math")
    sketcher.run(request(tmp_path / "s", memory=memory))
    spec = GridSpec(model="tiny-flux", checkpoints=[], prompts=["a"], include_base=True, width=64, height=64,
                    steps=1, memory=memory)
    Reviewer(sketcher).grid(spec, tmp_path / "review")
    assert cache.load_count == 1


def test_training_keeps_attention_off_cudnn():
    """The trainer turns cuDNN attention off (its backward failed on an H200 with torch 2.11); Sketch does not."""
    import torch

    from blk.models.device import avoid_cudnn_attention_backward

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        avoid_cudnn_attention_backward()
        assert torch.backends.cuda.cudnn_sdp_enabled() is False
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
