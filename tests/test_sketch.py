"""Sketch: sizes, seeds, LoRAs from a trained run, embedded parameters, cancel, bad input, CLI."""

import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from blk.data.scan import file_sha256
from blk.errors import BadImage, UserError
from blk.generate.metadata import DISCLOSURE, IPTC_AI, read_parameters
from blk.generate.sizes import round_size, size_for_budget
from blk.generate.sketch import Cancelled, Lora, Sketcher, SketchRequest, request_from_parameters
from tests.conftest import run_blk
from tests.support.encoders import record_text_encoder_calls
from tests.support.loras import make_random_lora


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def zlib_speed_class(path) -> int:
    """FLEVEL of the first IDAT's zlib header: 0 for level 1, 1 for levels 2-5, 2 for 6, 3 for 7-9."""
    data = path.read_bytes()
    start = data.index(b"IDAT") + 4
    return data[start + 1] >> 6


@pytest.fixture(scope="module")
def sketcher(shared_workspace):
    return Sketcher(shared_workspace)


def tiny(model="tiny-flux", **fields):
    return SketchRequest(model=model, **{"prompt": "an ink cube", "seed": 7, "width": 64, "height": 64,
                                         "steps": 2, **fields})


def test_megapixel_budgets_give_the_trained_shapes():
    assert size_for_budget(1.0, "1:1 square") == (1024, 1024)
    assert size_for_budget(1.0, "3:2 landscape") == (1216, 832)
    assert size_for_budget(1.0, "16:9 landscape") == (1344, 768)
    assert size_for_budget(1.0, "2:3 portrait") == (832, 1216)
    for megapixels in (0.5, 2.0):
        width, height = size_for_budget(megapixels, "3:2 landscape")
        assert width % 64 == 0 and height % 64 == 0 and width > height
        assert abs(width * height / (megapixels * 2**20) - 1) < 0.1
    assert round_size(1024, 768, 16) == (1024, 768, "")
    width, height, notice = round_size(1010, 770, 16)
    assert (width, height) == (1008, 768) and "1008×768" in notice
    assert round_size(4096, 4096, 16) == (4096, 4096, "")  # the largest drawn in one piece
    with pytest.raises(UserError, match=r"20000×20000 \(400\.0 MP\) is larger than a model draws in one piece"):
        round_size(20000, 20000, 16)  # a CPU machine would kill the app rather than say "out of memory"


def test_same_seed_same_image_and_parameters_round_trip(sketcher, shared_workspace):
    first, = sketcher.run(tiny())
    again, = sketcher.run(tiny())
    assert first.path != again.path and first.path.parent.parent == shared_workspace.outputs("sketch")
    assert np.array_equal(pixels(first.path), pixels(again.path))
    assert sorted([first.path.name, again.path.name]) == [first.path.name, again.path.name]  # names sort by time

    parameters = read_parameters(first.path)
    assert (parameters["prompt"], parameters["seed"], parameters["model"]) == ("an ink cube", 7, "tiny-flux")
    assert (parameters["steps"], parameters["width"], parameters["height"], parameters["loras"]) == (2, 64, 64, [])
    assert parameters["app_version"]
    text = Image.open(first.path).text
    assert text["Disclosure"] == DISCLOSURE and IPTC_AI in text["XML:com.adobe.xmp"]
    assert "Seed: 7" in text["parameters"]
    assert zlib_speed_class(first.path) == 1  # levels 2-5: faster than Pillow's default 6 (class 2)

    repeat, = sketcher.run(request_from_parameters(parameters, shared_workspace))
    assert np.array_equal(pixels(repeat.path), pixels(first.path))


def test_random_seed_is_reported_and_reproduces(sketcher):
    first, second = sketcher.run(tiny(seed=None, count=2))
    assert second.seed == first.seed + 1 and read_parameters(first.path)["seed"] == first.seed
    fixed, = sketcher.run(tiny(seed=first.seed))
    assert np.array_equal(pixels(fixed.path), pixels(first.path))


def test_trained_checkpoints_and_scales_without_reloading_the_base(trained_run, shared_workspace):
    sketcher = Sketcher(shared_workspace)
    checkpoints = sorted((trained_run / "checkpoints").glob("step-*.safetensors"))
    assert len(checkpoints) == 3
    base = pixels(sketcher.run(tiny())[0].path)
    results = {}
    for checkpoint in checkpoints:
        for scale in (0.0, 0.5, 1.0):
            result, = sketcher.run(tiny(loras=[Lora(checkpoint, scale)]))
            results[checkpoint.name, scale] = pixels(result.path)
    assert sketcher.cache.load_count == 1
    last = checkpoints[-1].name
    assert all(np.array_equal(results[c.name, 0.0], base) for c in checkpoints)  # scale 0 is the base
    assert np.abs(results[last, 1.0] - base).mean() > 1.0
    assert np.abs(results[last, 0.5] - results[last, 1.0]).mean() > 0.5
    assert np.abs(results[checkpoints[0].name, 1.0] - results[last, 1.0]).mean() > 0.5

    both, = sketcher.run(tiny(loras=[Lora(checkpoints[0], 1.0), Lora(checkpoints[-1], 0.5)]))
    recorded = read_parameters(both.path)["loras"]
    assert [(r["name"], r["scale"]) for r in recorded] == [(f"tiny-run/{checkpoints[0].name}", 1.0),
                                                           (f"tiny-run/{last}", 0.5)]
    assert recorded[0]["sha256"] == file_sha256(checkpoints[0])


def test_sdxl_uses_its_negative_prompt(shared_workspace, tmp_path):
    sketcher = Sketcher(shared_workspace)
    lora = make_random_lora(shared_workspace.models / "tiny-sdxl", "sdxl", tmp_path / "lora")
    plain, = sketcher.run(tiny("tiny-sdxl", out_dir=tmp_path))
    negative, = sketcher.run(tiny("tiny-sdxl", negative_prompt="blurry", out_dir=tmp_path))
    with_lora, = sketcher.run(tiny("tiny-sdxl", loras=[Lora(lora, 1.0)], out_dir=tmp_path))
    assert np.abs(pixels(negative.path) - pixels(plain.path)).mean() > 0.5
    assert np.abs(pixels(with_lora.path) - pixels(plain.path)).mean() > 0.5
    assert read_parameters(negative.path)["negative_prompt"] == "blurry"


def test_bad_input_is_one_sentence_and_writes_nothing(sketcher, shared_workspace, tmp_path):
    out = tmp_path / "out"
    sdxl_lora = make_random_lora(shared_workspace.models / "tiny-sdxl", "sdxl", tmp_path / "sdxl")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    flux_lora = make_random_lora(shared_workspace.models / "tiny-flux", "flux", tmp_path / "flux")
    truncated = tmp_path / "truncated.safetensors"  # a LoRA for this model, its download interrupted
    truncated.write_bytes(flux_lora.read_bytes()[:-100])
    whole = flux_lora.stat().st_size
    for lora, message in ((sdxl_lora, "is a SDXL LoRA and the base model is FLUX: it will not load there"),
                          (corrupt, "not a readable .safetensors"),
                          (truncated, f"^truncated.safetensors is cut short \\({whole - 100:,} of its {whole:,} bytes\\): "
                                      "copy or download it again.$"),
                          (tmp_path / "missing.safetensors", "does not exist")):
        with pytest.raises(UserError, match=message):
            sketcher.run(tiny(loras=[Lora(lora, 1.0)], out_dir=out))
    assert not out.exists() or not any(out.iterdir())

    rounded, = sketcher.run(tiny(width=70, height=60, prompt="", out_dir=out))  # empty prompt is fine
    assert Image.open(rounded.path).size == (64, 64) and "70×60" in rounded.notice
    assert sketcher.run(tiny(out_dir=out))[0].path.exists()  # the failed LoRAs left nothing behind

    with pytest.raises(BadImage, match="no BLK Studio parameters"):
        Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
        read_parameters(tmp_path / "plain.png")


def test_out_of_memory_names_only_the_modes_still_off(shared_workspace, tmp_path, monkeypatch):
    """The sentence never advises turning on what is on (CPU offload only helps on a GPU)."""
    import torch

    from blk.models.device import MemoryOptions
    from blk.models.registry import resolve

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    sketcher = Sketcher(shared_workspace)
    model = resolve("tiny-flux", shared_workspace)
    said = {}
    for memory in (MemoryOptions(), MemoryOptions(vae_tiling=True), MemoryOptions(vae_tiling=True, int8=True)):
        loaded = sketcher.cache.get(model, memory=memory)
        monkeypatch.setattr(loaded.pipe.transformer, "forward", out_of_memory)
        with pytest.raises(UserError) as caught:
            sketcher.run(tiny(memory=memory, out_dir=tmp_path))
        said[memory] = str(caught.value)
        # raised after the handler: no context whose traceback would keep the failed run's tensors alive
        assert caught.value.__context__ is None and caught.value.__cause__ is None
        assert "\n" not in said[memory] and "64×64" in said[memory] and "smaller size" in said[memory]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    plain, tiled, both = said.values()
    assert "int8 weights or VAE tiling" in plain and "CPU offload" not in plain
    assert "int8 weights" in tiled and "VAE tiling" not in tiled
    assert "int8" not in both and "VAE tiling" not in both and "every memory mode" in both
    from blk.generate.sketch import out_of_memory_sentence

    on_gpu = out_of_memory_sentence(replace(loaded, device="cuda:0", memory=MemoryOptions(int8=True)), 1024, 1024)
    assert "turn on CPU offload or VAE tiling" in on_gpu


def test_cancel_keeps_finished_images(sketcher, tmp_path):
    """Cancel during the second image: the first, still being saved on the saving thread while the
    second generated, is on disk when `run` raises; nothing of the second is."""
    cancel = threading.Event()
    kept = []

    def progress(done, total):
        if done == total // 3 + 1:  # the second image's first step
            cancel.set()

    with pytest.raises(Cancelled, match="1 of 3 images was finished"):
        sketcher.run(tiny(count=3, out_dir=tmp_path), progress=progress, cancel=cancel, on_image=kept.append)
    assert len(kept) == 1 and [p.name for p in tmp_path.iterdir()] == [kept[0].path.name]
    assert Image.open(kept[0].path).size == (64, 64)


def test_progress_counts_every_step_of_the_batch(sketcher, tmp_path):
    seen = []
    sketcher.run(tiny(count=2, out_dir=tmp_path), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cli_sketch(shared_workspace, trained_run, tmp_path):
    checkpoint = trained_run / "checkpoints" / "step-000012.safetensors"
    result = run_blk("--workspace", str(shared_workspace.root), "sketch", "--model", "tiny-flux",
                     "--lora", f"{checkpoint}:0.8", "--prompt", "a cloud", "--seed", "3", "--size", "64x64",
                     "--steps", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    path = next(tmp_path.glob("*.png"))
    parameters = read_parameters(path)
    assert (parameters["seed"], parameters["loras"][0]["scale"], parameters["prompt"]) == (3, 0.8, "a cloud")
    assert f"seed 3: {path}" in result.stdout

    bad = run_blk("--workspace", str(shared_workspace.root), "sketch", "--model", "tiny-flux", "--size", "big")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_a_lora_rewritten_in_place_while_loaded_does_not_bring_the_app_down(shared_workspace, trained_run, tmp_path):
    """diffusers maps a LoRA file into memory and its adapter reads from there: a file rewritten in place (another
    tool saving again under the same name) killed the whole process with a bus error at the next generation
    that used an adapter of that content.
    The pipeline loads a private copy. Run in a child process: the failure is a signal, not an exception."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    shutil.copy(trained_run / "checkpoints" / "step-000008.safetensors", first)
    shutil.copy(first, second)  # a copy kept elsewhere: the same content, so the loaded adapter is used again
    script = f"""
from pathlib import Path
from blk.generate.sketch import Lora, Sketcher, SketchRequest
from blk.workspace import Workspace
sketcher = Sketcher(Workspace({str(shared_workspace.root)!r}))
def draw(lora):
    return sketcher.run(SketchRequest("tiny-flux", "an ink cube", loras=[Lora(Path(lora), 0.8)], seed=7, width=64,
                                      height=64, steps=2, out_dir={str(tmp_path)!r}))[0].path
draw({str(first)!r})
Path({str(first)!r}).write_bytes(b"rewritten in place by another tool")  # the same file, truncated
print("drawn:", draw({str(second)!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "drawn:" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_a_prompt_longer_than_the_encoders_read_is_said(sketcher, tmp_path):
    """diffusers cuts a long prompt and only logs it; the artist reads it in the status. The tiny tokenizers
    give one token per letter (plus start and end), as a real one gives one per word piece."""
    long_prompt = "an ink cube " * 10  # 90 letters: over CLIP's 77
    result, = sketcher.run(tiny(model="tiny-sdxl", prompt=long_prompt, out_dir=tmp_path))
    assert result.notice == ("The prompt is 92 tokens long for CLIP-L and OpenCLIP-bigG, which read the first 77: "
                             "the words after that were not used."), result.notice
    result, = sketcher.run(tiny(model="tiny-sdxl", negative_prompt="blurry " * 14, out_dir=tmp_path))
    assert result.notice.startswith("The negative prompt is ") and "The prompt is" not in result.notice
    assert sketcher.run(tiny(model="tiny-sdxl", out_dir=tmp_path))[0].notice == ""  # within 77: nothing said
    # FLUX: CLIP's cut is not said (it only gives a pooled summary); T5's is
    assert sketcher.run(tiny(prompt=long_prompt, out_dir=tmp_path))[0].notice == ""
    result, = sketcher.run(tiny(prompt="an ink cube " * 80, out_dir=tmp_path))  # 721 T5 tokens
    assert "for T5-XXL, which reads the first 512" in result.notice, result.notice


def test_cpu_offload_without_a_gpu_is_said_and_not_recorded(sketcher, tmp_path):
    """CPU offload moves weights between the CPU and a GPU: on the CPU it does nothing, so the image's parameters
    must not claim it, and ticking it must not load the base again."""
    from blk.models.device import MemoryOptions

    plain, = sketcher.run(tiny(out_dir=tmp_path))
    loads = sketcher.cache.load_count
    offloaded, = sketcher.run(tiny(out_dir=tmp_path, memory=MemoryOptions(cpu_offload=True)))
    assert offloaded.notice == "CPU offload only acts on a GPU; it was not used on cpu."
    assert offloaded.parameters["memory"]["cpu_offload"] is False and plain.notice == ""
    assert sketcher.cache.load_count == loads  # the same pipeline: nothing changed for it
    assert np.array_equal(pixels(plain.path), pixels(offloaded.path))


@pytest.mark.parametrize("model, fields", [("tiny-flux", {}),
                                           ("tiny-sdxl", {"negative_prompt": "blurry", "guidance": 5.0})])
def test_several_images_of_one_prompt_encode_it_once_and_make_the_same_images(sketcher, tmp_path, monkeypatch,
                                                                               model, fields):
    """A request for 3 images runs the text encoders as often as a one-image request does (observed on
    transformers' own forward calls), and its images are those of 3 one-image requests with the same seeds:
    the embeddings are the pipeline's own."""
    calls = record_text_encoder_calls(monkeypatch)
    one_by_one = []
    for seed in (3, 4, 5):
        calls.clear()
        one_by_one += sketcher.run(tiny(model, seed=seed, out_dir=tmp_path / "single", **fields))
    one_image = sorted(calls)
    assert "CLIPTextModel" in one_image and ("T5EncoderModel" in one_image) == (model == "tiny-flux")
    calls.clear()
    together = sketcher.run(tiny(model, seed=3, count=3, out_dir=tmp_path / "batch", **fields))
    assert sorted(calls) == one_image  # once for the three images
    assert [r.seed for r in together] == [3, 4, 5]
    for single, batched in zip(one_by_one, together):
        assert np.array_equal(pixels(single.path), pixels(batched.path))
        assert read_parameters(batched.path)["prompt"] == "an ink cube"
