"""The diffusion upscale path on the tiny models: passes, LoRA, seams, alpha, TIFF, plan, CLI."""

import json
import threading

import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.generate.metadata import read_parameters
from blk.models.pipelines import PipelineCache
from blk.models.registry import resolve
from blk.upscale.canvas import Canvas
from blk.upscale.diffusion import (ENLARGING, DiffusionJob, Pass, Stage, effective_steps, estimate, model_defaults,
                                   plan, run, step_sizes, tile_processor)
from blk.upscale.source import ArraySource
from blk.upscale.tiler import Cancelled, run_tiles, spans
from tests.support.loras import make_random_lora


def gradient(width=48, height=40, alpha=False):
    yy, xx = np.mgrid[0:height, 0:width]
    channels = [xx * 255 // width, yy * 255 // height, np.full_like(xx, 128)]
    if alpha:
        channels.append(np.where(xx < width // 2, 255, 0))
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8), "RGBA" if alpha else "RGB")


@pytest.fixture(scope="module")
def pipelines():
    return PipelineCache()


def tiny_job(tmp_path, name="out.png", **fields):
    source = tmp_path / "in.png"
    if not source.exists():
        gradient().save(source)
    return DiffusionJob(**{"input": source, "output": tmp_path / name, "model": "tiny-flux", "scale": 2, "tile": 64,
                           "overlap": 16, "steps": 4, "passes": (Pass(0.5), Pass(0.3)), **fields})


def test_steps_and_plan():
    # as each family's img2img counts: Flux runs 28 − int(28 − 8.4) = 9, SDXL int(8.4) = 8
    assert effective_steps(28, 0.3) == (28, 9) and effective_steps(28, 0.3, "sdxl") == (28, 8)
    assert effective_steps(28, 0.25) == effective_steps(28, 0.25, "sdxl") == (28, 7)  # whole: the same
    assert effective_steps(2, 0.2) == (5, 1)  # never zero steps
    with pytest.raises(UserError, match="between 0.01 and 1"):
        effective_steps(10, 0)
    # a tiny denoise asked 100,000 steps (1e-5) or found none (1e-6: a StopIteration traceback at the CLI)
    assert effective_steps(1, 0.01) == (100, 1)
    for tiny in (1e-5, 1e-6):
        with pytest.raises(UserError, match=f"^Denoise must be between 0.01 and 1; got {tiny:g}.$"):
            effective_steps(28, tiny)
    job = DiffusionJob("in.png", "out.tif", "flux-dev", scale=None, size=(4096, 3072), tile=1024, overlap=96,
                       final_max_pixels=2 * 2**20, device="cpu")
    the_plan = plan(job, 1024, 768, 28)
    assert (the_plan.tiles_per_pass, the_plan.passes, the_plan.final_pass) == (20, 2, False)
    assert the_plan.steps_per_tile == [9, 6] and "20 tiles" in the_plan.sentence()  # 28 × 0.3 and × 0.2 on Flux
    assert plan(job, 1024, 768, 28, 8, "sdxl").steps_per_tile == [8, 6]  # 0.2: 5 of 28 is 0.18, 6 of 30 is 0.2
    assert the_plan.sizes == [(4096, 3072)] and the_plan.notes == [
        "The full-frame pass is left out: a 4096×3072 frame needs about 96.0 GB and about 16.0 GB is free for it; "
        "the tiled result is kept."]  # final_max_pixels: 2 MP at 8 KB per pixel (fp32 on the CPU)
    # steps of at most `step`×: ×16 is two ×4 steps, or four ×2; --size may change the aspect
    assert step_sizes(1000, 500, (16000, 8000), 4) == [(4000, 2000), (16000, 8000)]
    assert step_sizes(1000, 500, (16000, 8000), 2) == [(2000, 1000), (4000, 2000), (8000, 4000), (16000, 8000)]
    assert step_sizes(1000, 500, (9000, 2000), 4) == [(3000, 1000), (9000, 2000)]
    assert step_sizes(1000, 500, (1000, 500), 4) == [(1000, 500)]
    big = plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=16, final_denoise=None), 1000, 500, 28)
    assert big.sizes == [(4000, 2000), (16000, 8000)] and big.tiles == [15, 162] and big.tiles_per_pass == 162
    assert big.total_tiles == 2 * (15 + 162) and "in 2 steps (4000×2000, 16000×8000)" in big.sentence()
    with pytest.raises(UserError, match="above 1"):
        step_sizes(1000, 500, (2000, 1000), 1)


def test_tile_range_notice_for_real_models_only(capsys):
    """Tiles are pixels of the enlarged image; outside the paper's 512–1536 (overlap 64–128) a real model
    gets a one-sentence notice (not an error), the tiny test models none."""
    from blk.cli import main

    odd = plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=2, tile=256, overlap=32, final_denoise=None),
               1024, 768, 28, 16)
    assert odd.notes == ["Tiles of 256 px with 32 px overlap are outside what the diffusion path is made for "
                         "(512–1536 px tiles, 64–128 px overlap, in pixels of the enlarged image), so expect "
                         "weaker texture or visible seams."]
    assert odd.notes[0] in odd.sentence()
    assert plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=2, overlap=200, final_denoise=None),
                1024, 768, 28, 16).notes[0].startswith("Tiles of 1024 px with 200 px overlap are outside")
    assert plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=2, final_denoise=None), 1024, 768, 28, 16).notes == []
    assert plan(DiffusionJob("in.png", "out.tif", "tiny-flux", scale=2, tile=32, overlap=8, final_denoise=None),
                48, 40, 4, 16).notes == []
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    assert "px of the enlarged image each pass refines" in " ".join(capsys.readouterr().out.split())


def test_estimate_is_the_plan_run_shows_first_and_loads_nothing(shared_workspace, workspace, tmp_path, pipelines):
    """The UI's Estimate (`estimate`) is the plan `run` hands `on_plan` before its first tile, made from the
    model's defaults alone: no pipeline loaded, no tiny model built (a fresh workspace stays empty)."""
    gradient(20, 16).save(tmp_path / "small.png")
    job = tiny_job(tmp_path, input=tmp_path / "small.png", scale=4, step=2, tile=32, overlap=8, passes=(Pass(0.5),))
    loads = pipelines.load_count
    planned = estimate(job, workspace)
    assert not (workspace.models / "tiny-flux").exists() and pipelines.load_count == loads
    assert (planned.sizes, planned.tiles, planned.steps_per_tile) == ([(40, 32), (80, 64)], [2, 9], [2])
    events = []
    run(job, shared_workspace, pipelines, progress=lambda done, total, stage: events.append(done),
        on_plan=events.append)
    assert events[0] == planned and len(events) > 1 and all(isinstance(e, int) for e in events[1:])
    # a model given by its folder: its family's grid and defaults from the files, nothing loaded
    assert model_defaults(str(shared_workspace.models / "tiny-sdxl"), shared_workspace) == (4, 8, "sdxl")
    assert model_defaults("flux-dev", workspace) == (28, 16, "flux")  # known: no files needed
    with pytest.raises(UserError, match="Unknown model"):
        estimate(tiny_job(tmp_path, model="no-such-model"), workspace)
    assert not list(workspace.models.iterdir()) and not list(tmp_path.glob(".blk-tmp-*"))


def test_passes_give_a_deterministic_refined_image(shared_workspace, tmp_path, pipelines):
    first = run(tiny_job(tmp_path), shared_workspace, pipelines)
    again = run(tiny_job(tmp_path, "again.png"), shared_workspace, pipelines)
    out = np.asarray(Image.open(first.path)).astype(int)
    assert out.shape == (80, 96, 3) and (first.width, first.height) == (96, 80)
    assert np.array_equal(out, np.asarray(Image.open(again.path)).astype(int))  # same seed, same tiles
    lanczos = np.asarray(gradient().resize((96, 80), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(out - lanczos).mean() > 2  # the passes changed the enlargement
    parameters = read_parameters(first.path)
    assert parameters["path"] == "diffusion" and parameters["passes"][0] == {"denoise": 0.5, "lora_scale": 1.0}
    assert parameters["final_denoise"] == 0.1 and parameters["enlarge"] == "lanczos"
    assert "diffusion model" in Image.open(first.path).text["Disclosure"]
    assert "compositeWithTrainedAlgorithmicMedia" in Image.open(first.path).text["XML:com.adobe.xmp"]
    assert pipelines.load_count == 1 and not list(tmp_path.glob(".blk-tmp-*"))


def test_texture_lora_and_its_scale(shared_workspace, tmp_path, pipelines):
    lora = make_random_lora(shared_workspace.models / "tiny-flux", "flux", tmp_path / "texture")
    plain = run(tiny_job(tmp_path, "plain.png", final_denoise=None), shared_workspace, pipelines)
    textured = run(tiny_job(tmp_path, "lora.png", texture_lora=lora, final_denoise=None), shared_workspace, pipelines)
    off = run(tiny_job(tmp_path, "off.png", texture_lora=lora, passes=(Pass(0.5, 0.0), Pass(0.3, 0.0)),
                       final_denoise=None), shared_workspace, pipelines)
    read = lambda r: np.asarray(Image.open(r.path)).astype(int)  # noqa: E731
    assert np.abs(read(textured) - read(plain)).mean() > 1.0
    assert np.array_equal(read(off), read(plain))
    assert read_parameters(textured.path)["loras"][0]["name"] == lora.name


def test_sdxl_passes_with_a_texture_lora(shared_workspace, tmp_path, pipelines):
    """The same path on SDXL (4-channel latents, its own img2img pipeline): non-square, two passes, deterministic."""
    lora = make_random_lora(shared_workspace.models / "tiny-sdxl", "sdxl", tmp_path / "texture")
    job = dict(model="tiny-sdxl", final_denoise=0.1, steps=2)
    first = run(tiny_job(tmp_path, "sdxl.png", **job), shared_workspace, pipelines)
    again = run(tiny_job(tmp_path, "sdxl-again.png", **job), shared_workspace, pipelines)
    textured = run(tiny_job(tmp_path, "sdxl-lora.png", texture_lora=lora, **job), shared_workspace, pipelines)
    read = lambda r: np.asarray(Image.open(r.path)).astype(int)  # noqa: E731
    assert read(first).shape == (80, 96, 3) and np.array_equal(read(first), read(again))
    lanczos = np.asarray(gradient().resize((96, 80), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(read(first) - lanczos).mean() > 2 and np.abs(read(textured) - read(first)).mean() > 1.0
    parameters = read_parameters(textured.path)
    assert parameters["model"] == "tiny-sdxl" and parameters["loras"][0]["name"] == lora.name


@pytest.mark.parametrize("name, guidance", [("tiny-flux", 3.5), ("tiny-sdxl", 5.0)])
def test_a_pass_encodes_its_prompt_once_and_draws_what_the_prompt_draws(shared_workspace, pipelines, monkeypatch,
                                                                         name, guidance):
    """Every tile call encoded the prompt again (T5-XXL per tile; under CPU offload T5 sent to the GPU per tile):
    a pass encodes it once, and each tile is what the pipeline draws from the prompt itself, pixel for pixel."""
    import torch

    loaded = pipelines.get(resolve(name, shared_workspace), task="img2img")
    encoder = loaded.pipe.text_encoder_2  # T5 for Flux, CLIP-G for SDXL
    original, encodes = encoder.forward, []

    def counted(*args, **kwargs):
        encodes.append(1)
        return original(*args, **kwargs)

    yy, xx = np.mgrid[0:64, 0:64]
    tiles = np.stack([np.stack([xx / 64, yy / 64, 0.5 + 0 * xx], -1)] * 3).astype(np.float32)
    process = tile_processor(loaded, "a cube", 0.5, 4, guidance, 3)
    monkeypatch.setattr(encoder, "forward", counted)
    out = process(tiles)
    # once for the three tiles (SDXL also encodes its empty negative prompt then, unless its config zeroes it)
    assert len(encodes) == (1 if name == "tiny-flux" or loaded.pipe.config.force_zeros_for_empty_prompt else 2)
    monkeypatch.undo()
    tensor = torch.from_numpy(np.ascontiguousarray(tiles[0].transpose(2, 0, 1)))[None]
    sizes = {"width": 64, "height": 64} if name == "tiny-flux" else {}
    direct = loaded.pipe(prompt="a cube", image=tensor, strength=0.5, num_inference_steps=4, guidance_scale=guidance,
                         generator=torch.Generator("cpu").manual_seed(3), output_type="np", **sizes).images[0]
    assert np.array_equal(out[0], np.clip(np.asarray(direct, dtype=np.float32), 0, 1))
    assert np.array_equal(out[0], out[2])  # same tile, same seed


def test_feathered_tiles_show_no_seam(shared_workspace, pipelines, tmp_path):
    loaded = pipelines.get(resolve("tiny-flux", shared_workspace), task="img2img")
    yy, xx = np.mgrid[0:64, 0:160]
    image = np.stack([xx / 160, yy / 64, 0.5 + 0 * xx], -1).astype(np.float32)
    process = tile_processor(loaded, "", 0.5, 4, 3.5, 0)
    steps = {}
    for blend in ("sine", "hard"):
        canvas = Canvas(tmp_path / f"{blend}.canvas", 160, 64, 3)
        run_tiles(ArraySource(image), canvas, process, scale=1, tile=64, overlap=32, batch=1, blend=blend)
        out = canvas.read(0, 0, 160, 64)
        canvas.remove()
        steps[blend] = np.abs(np.diff(out, axis=1)).mean(axis=(0, 2))  # mean jump between neighbouring columns
    cuts = [s.end - 16 - 1 for s in spans(160, 64, 32)[:-1]]  # hard paste: the middle of each overlap
    # measured: 0.18–0.20 at the hard cuts against about 0.07 there with feathering
    assert steps["hard"][cuts].mean() > 1.8 * steps["sine"][cuts].mean()


def test_alpha_passes_through_and_tiff_output(shared_workspace, tmp_path, pipelines, monkeypatch):
    """Alpha is kept as it was; img2img sees, under transparent pixels, the colour of their visible neighbours,
    as the ESRGAN path's model does — not the black the premultiplied enlargement leaves there, which it would
    paint into the edges."""
    import tifffile

    from blk.upscale import diffusion

    seen, real = [], diffusion.tile_processor

    def recording(*args, **kwargs):  # the studio's own tile processor, its input tiles kept
        process = real(*args, **kwargs)
        return lambda tiles: seen.append(tiles.copy()) or process(tiles)

    monkeypatch.setattr(diffusion, "tile_processor", recording)
    gradient(alpha=True).save(tmp_path / "in.png")
    run(tiny_job(tmp_path, "one-pass.png", passes=(Pass(0.5),)), shared_workspace, pipelines)

    def near_visible(alpha: np.ndarray) -> np.ndarray:  # transparent pixels within 8 px right of a visible one
        visible = alpha > 0
        return ~visible & np.any([np.roll(visible, shift, axis=1) & (np.arange(alpha.shape[1]) >= shift)
                                  for shift in range(1, 9)], axis=0)

    # the first pass's tiles and the full-frame pass; the input's blue is 0.5 everywhere it is visible
    assert len(seen) >= 3
    near_edge = np.concatenate([tile[..., 2][near_visible(tile[..., 3])] for tile in seen[0]] +
                               [tile[..., 2][near_visible(tile[..., 3])] for batch in seen[1:-1] for tile in batch])
    assert near_edge.size and np.abs(near_edge - 0.5).max() < 0.05  # not black
    full_frame = seen[-1][0]
    assert full_frame.shape == (80, 96, 4) and full_frame[..., 2][near_visible(full_frame[..., 3])].min() > 0.02
    monkeypatch.undo()

    result = run(tiny_job(tmp_path, "out.tif"), shared_workspace, pipelines)
    with tifffile.TiffFile(result.path) as tiff:
        page = tiff.pages[0]
        pixels = page.asarray()
        description = json.loads(page.description)
    assert pixels.shape == (80, 96, 4) and page.is_tiled
    assert (pixels[:, :40, 3] == 255).all() and (pixels[:, 56:, 3] == 0).all()  # alpha kept, not repainted
    assert description["path"] == "diffusion"


def test_esrgan_enlargement_first(shared_workspace, tmp_path, pipelines):
    from tests.test_upscale_esrgan import rrdb_file

    model = rrdb_file(tmp_path / "RealESRGAN_x4plus_tiny.pth")
    result = run(tiny_job(tmp_path, enlarge_model=model, final_denoise=None), shared_workspace, pipelines)
    assert Image.open(result.path).size == (96, 80)
    assert read_parameters(result.path)["enlarge"] == model.name
    # two ×2 steps: the second enlargement runs the model on the first step's refined image
    gradient(20, 16).save(tmp_path / "small.png")
    stepped = run(tiny_job(tmp_path, "stepped.png", input=tmp_path / "small.png", enlarge_model=model, scale=4,
                           step=2, tile=48, overlap=8, passes=(Pass(0.5),), final_denoise=None),
                  shared_workspace, pipelines)
    assert Image.open(stepped.path).size == (80, 64) and stepped.sizes == [(40, 32), (80, 64)]
    assert stepped.tiles == 1 + 4 and not list(tmp_path.glob(".blk-tmp-*"))


def model_calls(monkeypatch, before_call) -> list:
    """Every call of an ESRGAN model, from a wrapper on spandrel's own descriptor class (not ours):
    `before_call(n)` runs before the n-th (1-based) and may raise, as a kill at that tile would."""
    import spandrel

    original, calls = spandrel.ImageModelDescriptor.__call__, []

    def calling(self, *args, **kwargs):
        calls.append(len(calls) + 1)
        before_call(len(calls))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(spandrel.ImageModelDescriptor, "__call__", calling)
    return calls


def test_esrgan_steps_enlarge_the_previous_canvas_with_one_model_load(shared_workspace, tmp_path, pipelines,
                                                                      monkeypatch):
    """Two ×2 steps with an ESRGAN enlargement: step 2 runs the model straight on step 1's canvas (no
    TIFF of it, nothing hashed again), the model file is loaded once for the job, and the pixels are
    exactly those of two one-step jobs chained through a 16-bit TIFF (what step 2 used to be given):
    the direct path is lossless. Both endings of an enlargement: a ×2 model's result is renamed into
    the stage's canvas, a ×4 model's is resampled into it."""
    import tifffile

    from tests.test_upscale_esrgan import count_file_loads, rrdb_file

    levels = (np.asarray(gradient(20, 16), np.uint16) * 257 + np.arange(20, dtype=np.uint16)[None, :, None] * 37)
    tifffile.imwrite(tmp_path / "scan.tif", levels, photometric="rgb")  # 16 bits that no 8-bit image holds
    seen = []  # every temp file present while a model or a refinement tile runs
    look = lambda *_: seen.extend(p.name for p in tmp_path.glob(".blk-tmp-*"))  # noqa: E731
    for model in (rrdb_file(tmp_path / "x2.pth", in_ch=12), rrdb_file(tmp_path / "x4.pth")):
        def job(source, name, scale):
            return tiny_job(tmp_path, name, input=source, enlarge_model=model, scale=scale, step=2, tile=48,
                            overlap=8, passes=(Pass(0.5),), final_denoise=None, keep_16bit=True)

        loads, calls = count_file_loads(monkeypatch), model_calls(monkeypatch, look)
        seen.clear()
        stepped = run(job(tmp_path / "scan.tif", "stepped.tif", 4), shared_workspace, pipelines, progress=look)
        assert loads == [model.name] and len(calls) == 2  # one load, one model pass per ×2 step
        assert not [name for name in seen if name.endswith((".tif", ".tiff"))]  # no image file in between
        assert stepped.sizes == [(40, 32), (80, 64)] and any(".enlarge2." in name for name in seen)
        assert not list(tmp_path.glob(".blk-tmp-*"))
        first = run(job(tmp_path / "scan.tif", "first.tif", 2), shared_workspace, pipelines)
        chained = run(job(first.path, "chained.tif", 2), shared_workspace, pipelines)
        assert tifffile.imread(stepped.path).dtype == np.uint16
        assert np.array_equal(tifffile.imread(stepped.path), tifffile.imread(chained.path))


def test_killed_in_a_later_steps_enlargement_resumes_exactly(shared_workspace, tmp_path, pipelines, monkeypatch):
    """×12 in two steps of ×3.46 with a ×2 model (two model passes per enlargement, the second from a
    shrunk copy, then a resample): a Ctrl+C at step 2's second model pass keeps step 1's canvas and the
    enlargement's finished pass; the same job then runs only the missing model pass, loads the model
    once, and gives the uninterrupted pixels. The first enlargement keeps 16 bits of the model's output
    (an 8-bit input's used to be rounded to 8 bits on its way through a TIFF)."""
    from tests.test_upscale_esrgan import count_file_loads, rrdb_file

    gradient(12, 10).save(tmp_path / "small.png")
    model = rrdb_file(tmp_path / "x2.pth", in_ch=12)

    def job(name):
        return tiny_job(tmp_path, name, input=tmp_path / "small.png", enlarge_model=model, scale=12, step=4,
                        tile=48, overlap=8, passes=(Pass(0.5),), final_denoise=None)

    first_enlargement = []

    def keep_first_enlargement(done, total, stage):  # during step 1's pass A, stage 0's canvas is its source
        token = json.loads((tmp_path / ".blk-tmp-whole.png.journal.json").read_text())["token"]
        if not first_enlargement and stage.what == "pass A":
            first_enlargement.append(Canvas(tmp_path / f".blk-tmp-{token}.pass0.canvas", 42, 35, 3, create=False))
            first_enlargement.append(first_enlargement[0].read_raw(0, 0, 42, 35))
            first_enlargement[0].close()

    calls = model_calls(monkeypatch, lambda n: None)
    whole = run(job("whole.png"), shared_workspace, pipelines, progress=keep_first_enlargement)
    assert whole.sizes == [(42, 35), (144, 120)] and len(calls) == 4  # 2 model passes per step
    # the time estimate's work: the ×2 model's output of each pass (12×10 and 21×18 into 42×35, then 42×35 and
    # 72×60 into 144×120), read from the model file
    assert estimate(job("again.png"), shared_workspace).enlarge_work == [4 * (120 + 378), 4 * (1470 + 4320)]
    assert (first_enlargement[1] % 257 != 0).mean() > 0.5  # 16 bits, not an 8-bit result widened

    def stop(n):
        if n == 4:  # step 2's second model pass
            assert not list(tmp_path.glob("*.tif"))
            raise KeyboardInterrupt()

    model_calls(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt):
        run(job("out.png"), shared_workspace, pipelines)
    state = json.loads((tmp_path / ".blk-tmp-out.png.journal.json").read_text())
    token = state["token"]
    inner = json.loads((tmp_path / f".blk-tmp-{token}.enlarge2.journal.json").read_text())
    assert state["pass"] == 2 and inner["pass"] == 1  # in step 2's enlargement, its first model pass done
    # step 1's refined canvas, and the enlargement's state: its first pass, the shrunk input of its second,
    # the second's canvas and the band its row saved before writing (all under the job's token)
    assert sorted(p.name.removeprefix(f".blk-tmp-{token}.") for p in tmp_path.glob(f".blk-tmp-{token}.*")) == [
        "enlarge2.band", "enlarge2.journal.json", "enlarge2.pass0.canvas", "enlarge2.pass1.canvas",
        "enlarge2.pass1.input.canvas", "pass1.canvas"]

    loads, notes = count_file_loads(monkeypatch), []
    calls = model_calls(monkeypatch, lambda n: None)
    resumed = run(job("out.png"), shared_workspace, pipelines, log=notes.append)
    assert notes == ["Resuming an interrupted job at step 2 of 2, its enlargement."]
    assert len(calls) == 1 and loads == [model.name]  # only the unfinished model pass ran again
    assert np.array_equal(np.asarray(Image.open(resumed.path)), np.asarray(Image.open(whole.path)))
    assert not list(tmp_path.glob(".blk-tmp-*"))


def test_a_cancel_in_the_first_enlargement_keeps_its_finished_rows(shared_workspace, tmp_path, pipelines):
    """The enlargement's rows were kept by its own journal, then removed with the job's files (the job itself
    had no finished tile yet), under a message saying they were kept. They stay; the same job continues."""
    from tests.test_upscale_esrgan import rrdb_file

    model = rrdb_file(tmp_path / "x4.pth")
    gradient(128, 96).save(tmp_path / "wide.png")

    def job(name):  # the enlargement in rows of 64 px tiles
        return tiny_job(tmp_path, name, input=tmp_path / "wide.png", enlarge_model=model, enlarge_tile=64,
                        passes=(Pass(0.5),), final_denoise=None)

    whole = run(job("whole.png"), shared_workspace, pipelines)
    cancel = threading.Event()

    def cancel_after_a_row(done, total, stage):
        if stage.what == ENLARGING and stage.done >= stage.total // 2:
            cancel.set()

    with pytest.raises(Cancelled, match="finished tiles are kept"):
        run(job("out.png"), shared_workspace, pipelines, progress=cancel_after_a_row, cancel=cancel)
    assert any(p.name.endswith(".enlarge0.journal.json") for p in tmp_path.glob(".blk-tmp-*"))
    notes = []
    resumed = run(job("out.png"), shared_workspace, pipelines, log=notes.append)
    assert notes == ["Resuming an interrupted job at step 1 of 1, its enlargement."]
    assert np.array_equal(np.asarray(Image.open(resumed.path)), np.asarray(Image.open(whole.path)))
    assert not list(tmp_path.glob(".blk-tmp-*"))


def strip_job(tmp_path, name, model, **fields):
    """20×100 in two ×1.5 steps (30×150, 45×225) with an ESRGAN enlargement of 64 px tiles: the model's
    overlap (32 px) leaves one column and 3 rows of tiles at step 1, 4 rows at step 2, so every batch of
    the tiler (the columns of one row) is one tile."""
    if not (tmp_path / "strip.png").exists():
        gradient(20, 100).save(tmp_path / "strip.png")
    return tiny_job(tmp_path, name, input=tmp_path / "strip.png", enlarge_model=model, enlarge_tile=64,
                    **{"scale": 2.25, "step": 1.5, "passes": (Pass(0.5),), "final_denoise": 0.1, **fields})


def stop_in_enlargement(step: int, tile: int):
    """A progress callback that presses Ctrl+C when step `step`'s enlargement reports its tile `tile`."""
    def progress(done, total, stage):
        if stage.enlarging and (stage.step, stage.done) == (step, tile):
            raise KeyboardInterrupt()
    return progress


def test_enlargement_reports_each_tile_under_its_step(shared_workspace, tmp_path, pipelines, monkeypatch):
    """An ESRGAN enlargement reports through `progress` as the passes do: first "tile 0 of N" before any model
    call (N: its tile count), then one report right after each model call, in order, under its step, while the
    job's own count (refinement tiles) holds still; then the passes count on from there. Lanczos reports the
    whole image as one tile."""
    from blk.upscale.tiler import count_tiles
    from tests.test_upscale_esrgan import rrdb_file

    model = rrdb_file(tmp_path / "x4.pth")
    events = []
    calls = model_calls(monkeypatch, lambda n: events.append(("model call", n)))
    job = strip_job(tmp_path, "out.png", model)
    tiles = plan(job, 20, 100, 4, 16).tiles
    result = run(job, shared_workspace, pipelines, progress=lambda *report: events.append(report))
    enlarged = [count_tiles(20, 100, 64, 32), count_tiles(30, 150, 64, 32)]  # tiles the model reads, per step
    assert result.sizes == [(30, 150), (45, 225)] and enlarged == [3, 4] and len(calls) == 3 + 4
    total, expected, call, done = sum(tiles) + 1, [], 0, 0
    for step, (n, refined) in enumerate(zip(enlarged, tiles), 1):
        expected.append((done, total, Stage(step, 2, "enlarging", 0, n)))
        for k in range(1, n + 1):
            call += 1
            expected += [("model call", call), (done, total, Stage(step, 2, "enlarging", k, n))]
        expected += [(done + k, total, Stage(step, 2, "pass A", k, refined)) for k in range(1, refined + 1)]
        done += refined
    expected += [(total - 1, total, Stage(2, 2, "full-frame pass", 0, 1)),  # told before it starts
                 (total, total, Stage(2, 2, "full-frame pass", 1, 1))]
    assert events == expected
    assert [events[i][2].label for i in (0, 2, -3)] == ["step 1 of 2: enlarging"] * 2 + ["step 2 of 2: pass A"]
    assert events[-1][2].label == "full-frame pass"
    tile_reports = [e for e in events if e[0] != "model call" and e[2].enlarging and e[2].done > 0]
    assert len(tile_reports) == sum(enlarged) == len(calls)

    lanczos, job = [], tiny_job(tmp_path, "lanczos.png", scale=1.5, passes=(Pass(0.5),), final_denoise=None)
    n = plan(job, 48, 40, 4, 16).tiles[0]
    run(job, shared_workspace, pipelines, progress=lambda *report: lanczos.append(report))
    assert lanczos[:2] == [(0, n, Stage(1, 1, "enlarging", 0, 1)), (0, n, Stage(1, 1, "enlarging", 1, 1))]
    assert lanczos[2:] == [(k, n, Stage(1, 1, "pass A", k, n)) for k in range(1, n + 1)]
    assert not list(tmp_path.glob(".blk-tmp-*"))


def test_another_enlargement_model_never_reuses_the_old_ones_tiles(shared_workspace, tmp_path, pipelines,
                                                                   monkeypatch):
    """Stopped after the first row of the enlargement, then the model file is replaced (same name, other
    weights): the same command starts afresh — the old run's files are gone before the first tile, the
    enlargement runs from its first tile — and gives exactly what a fresh run with the new model gives."""
    import torch

    from tests.test_upscale_esrgan import rrdb_file, rrdb_state

    model = rrdb_file(tmp_path / "x4.pth")
    one_step = dict(scale=1.5, overlap=8, final_denoise=None)  # 30×150
    job = strip_job(tmp_path, "out.png", model, **one_step)
    with pytest.raises(KeyboardInterrupt):
        run(job, shared_workspace, pipelines, progress=stop_in_enlargement(1, 2))
    old = json.loads((tmp_path / ".blk-tmp-out.png.journal.json").read_text())["token"]
    inner = json.loads((tmp_path / f".blk-tmp-{old}.enlarge0.journal.json").read_text())
    assert (inner["pass"], inner["tiles_done"]) == (0, 1)  # one row of the old model's tiles on disk

    torch.save(rrdb_state(seed=1), model)
    events, notes = [], []
    calls = model_calls(monkeypatch, lambda n: None)

    def progress(*report):
        if not events:  # before the first tile: nothing of the old run is left
            events.append(sorted(p.name for p in tmp_path.glob(f".blk-tmp-{old}.*")))
        events.append(report)

    resumed = run(job, shared_workspace, pipelines, progress=progress, log=notes.append)
    assert notes == [] and events[0] == [] and len(calls) == 3
    assert [e[2].done for e in events[1:] if e[2].enlarging] == [0, 1, 2, 3]
    fresh = run(strip_job(tmp_path, "fresh.png", model, **one_step), shared_workspace, pipelines)
    assert np.array_equal(np.asarray(Image.open(resumed.path)), np.asarray(Image.open(fresh.path)))
    assert not list(tmp_path.glob(".blk-tmp-*"))


def test_an_enlargement_left_under_another_key_is_redone(shared_workspace, tmp_path, pipelines, monkeypatch):
    """A job stopped in step 2's enlargement resumes on another device (or in another precision): the state
    that enlargement left holds another key and tiles drawn there. The resume keeps the job's finished step
    1, but throws that state away before the enlargement's first tile and runs all its tiles again: the result
    is the uninterrupted run's, bit for bit (reusing the stale row would put its pixels in the result).
    (A CPU-only machine cannot change device, so the test writes what such a run leaves: the same files
    under another key, with other pixels.)"""
    from blk.upscale.journal import job_key
    from tests.test_upscale_esrgan import rrdb_file

    model = rrdb_file(tmp_path / "x4.pth")
    whole = run(strip_job(tmp_path, "whole.png", model), shared_workspace, pipelines)
    with pytest.raises(KeyboardInterrupt):
        run(strip_job(tmp_path, "out.png", model), shared_workspace, pipelines, progress=stop_in_enlargement(2, 2))
    token = json.loads((tmp_path / ".blk-tmp-out.png.journal.json").read_text())["token"]
    inner_path, canvas_path = (tmp_path / f".blk-tmp-{token}.enlarge2.{name}" for name in ("journal.json",
                                                                                           "pass0.canvas"))
    inner = json.loads(inner_path.read_text())
    assert (inner["pass"], inner["tiles_done"]) == (0, 1) and canvas_path.stat().st_size == 120 * 600 * 3 * 2
    stale = job_key({"device": "cuda:0", "precision": "torch.float16"})
    inner_path.write_text(json.dumps(inner | {"key": stale}))
    canvas_path.write_bytes(np.full(120 * 600 * 3, 20000, np.uint16).tobytes())  # the other device's pixels

    events, notes, seen = [], [], []
    calls = model_calls(monkeypatch, lambda n: None)

    def progress(done, total, stage):
        if not events:  # the enlargement's first report, before its first tile
            state = json.loads(inner_path.read_text())
            seen.extend([state["key"] != stale, state["tiles_done"], canvas_path.exists()])
        events.append((done, total, stage))

    resumed = run(strip_job(tmp_path, "out.png", model), shared_workspace, pipelines, progress=progress,
                  log=notes.append)
    assert notes == ["Resuming an interrupted job at step 2 of 2, its enlargement."]  # step 1 is not redone
    assert seen == [True, 0, False]  # a fresh state under the new key, the stale canvas removed
    assert [e[2].done for e in events if e[2].enlarging] == [0, 1, 2, 3, 4] and len(calls) == 4
    assert events[0][2] == Stage(2, 2, "enlarging", 0, 4)
    assert np.array_equal(np.asarray(Image.open(resumed.path)), np.asarray(Image.open(whole.path)))
    assert not list(tmp_path.glob(".blk-tmp-*"))


def test_bad_requests_are_one_sentence(shared_workspace, tmp_path, pipelines):
    with pytest.raises(UserError, match="larger"):
        run(tiny_job(tmp_path, scale=0.5), shared_workspace, pipelines)
    with pytest.raises(UserError, match="at least one refinement pass"):
        run(tiny_job(tmp_path, passes=()), shared_workspace, pipelines)
    with pytest.raises(UserError, match="overlap"):
        run(tiny_job(tmp_path, tile=32, overlap=24), shared_workspace, pipelines)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".blk-tmp-*"))


def test_cancel_writes_no_result_and_keeps_what_was_finished_for_the_same_job(shared_workspace, tmp_path,
                                                                              pipelines):
    import threading

    from blk.upscale.tiler import Cancelled

    cancel = threading.Event()
    cancel.set()  # before anything: the enlargement stops at its first band of rows, and nothing is kept
    with pytest.raises(Cancelled) as cancelled:
        run(tiny_job(tmp_path), shared_workspace, pipelines, cancel=cancel)
    assert not cancelled.value.kept and not list(tmp_path.glob(".blk-tmp-*"))
    cancel.clear()
    logged = []
    with pytest.raises(Cancelled) as cancelled:  # at pass A's first tile: the enlargement and that tile were done
        run(tiny_job(tmp_path), shared_workspace, pipelines, cancel=cancel,
            progress=lambda done, total, stage: None if stage.enlarging else cancel.set())
    assert not (tmp_path / "out.png").exists()
    assert cancelled.value.kept and list(tmp_path.glob(".blk-tmp-*"))
    run(tiny_job(tmp_path), shared_workspace, pipelines, log=logged.append)
    assert any("Resuming" in line for line in logged), logged  # the same job continues from it
    assert (tmp_path / "out.png").exists() and not list(tmp_path.glob(".blk-tmp-*"))


def test_cli_diffusion_killed_then_resumed(shared_workspace, tmp_path):
    """A real child process dies after 3 of 4 pass-A tiles; the same command finishes the job, and
    the result equals an uninterrupted run's, with nothing left behind."""
    from tests.conftest import run_blk

    gradient().save(tmp_path / "in.png")
    common = ["--workspace", str(shared_workspace.root), "upscale", str(tmp_path / "in.png"), "--path", "diffusion",
              "--model", "tiny-flux", "--scale", "2", "--tile", "64", "--overlap", "16", "--steps", "4",
              "--denoise", "0.5,0.3", "--no-final-pass"]
    whole = run_blk(*common, "--out", str(tmp_path / "whole.png"))
    assert whole.returncode == 0, whole.stderr
    killed = run_blk(*common, "--out", str(tmp_path / "out.png"), env={"BLK_TEST_KILL_AFTER_TILES": "3"})
    assert killed.returncode != 0 and not (tmp_path / "out.png").exists()
    assert list(tmp_path.glob(".blk-tmp-out.png.journal.json"))
    resumed = run_blk(*common, "--out", str(tmp_path / "out.png"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming an interrupted job" in resumed.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(Image.open(tmp_path / "whole.png")))
    assert not list(tmp_path.glob(".blk-tmp-*"))
    bad = run_blk(*common[:-1], "--denoise", "lots", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "--denoise takes numbers" in bad.stderr


def record_calls(monkeypatch, pipelines, workspace, fail_when=None) -> list:
    """(width, height, generator seed) of every img2img call, from a wrapper on the loaded pipeline's class
    (diffusers' object); `fail_when(width, height)` raises an out-of-memory error for such calls."""
    import torch

    pipe_class = type(pipelines.get(resolve("tiny-flux", workspace), task="img2img").pipe)
    original, calls = pipe_class.__call__, []

    def recording(self, *args, **kwargs):
        calls.append((kwargs["width"], kwargs["height"], kwargs["generator"].initial_seed()))
        if fail_when is not None and fail_when(kwargs["width"], kwargs["height"]):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", recording)
    return calls


def stop_at(tile: int):
    """A progress callback that presses Ctrl+C once the count of refinement tiles reaches `tile` (the job
    keeps its files)."""
    def progress(done, total, stage):
        if done == tile and not stage.enlarging:
            raise KeyboardInterrupt()
    return progress


def test_steps_repeat_with_one_tile_shape_and_seed_and_resume(shared_workspace, tmp_path, pipelines, monkeypatch):
    """×4 in two ×2 steps over a non-square image: enlarge and refine at 40×32, again at 80×64, then the
    full-frame pass; every tile call has one shape and one seed; a job stopped mid-step and again right
    after the full-frame pass finishes with the uninterrupted pixels and never refines twice."""
    gradient(20, 16).save(tmp_path / "small.png")

    def job(name):
        return tiny_job(tmp_path, name, input=tmp_path / "small.png", scale=4, step=2, tile=32, overlap=8,
                        passes=(Pass(0.5),), seed=7)

    the_plan = plan(job("a.png"), 20, 16, 4, 16)
    assert (the_plan.sizes, the_plan.tiles, the_plan.final_pass) == ([(40, 32), (80, 64)], [2, 9], True)
    # 2 steps a tile at 0.5; the full frame runs 1 of 10 at 0.1
    assert the_plan.sentence() == ("80×64 in 2 steps (40×32, 80×64): 1 pass each of 2 + 9 tiles plus one full-frame "
                                   "pass (22 denoising steps of tiles and 1 of the full frame).")
    calls = record_calls(monkeypatch, pipelines, shared_workspace)
    whole = run(job("a.png"), shared_workspace, pipelines)
    # 2 tiles at 40×32, 9 at 80×64, all 32×32 with seed 7; then the whole 80×64 frame
    assert calls == [(32, 32, 7)] * 11 + [(80, 64, 7)] and whole.tiles == 12
    read = lambda path: np.asarray(Image.open(path)).astype(int)  # noqa: E731
    assert read(whole.path).shape == (64, 80, 3) and whole.sizes == [(40, 32), (80, 64)] and whole.final_pass
    lanczos = np.asarray(gradient(20, 16).resize((80, 64), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(read(whole.path) - lanczos).mean() > 2
    assert read_parameters(whole.path)["step_sizes"] == [[40, 32], [80, 64]]

    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # in step 2's second row of tiles (tiles 6–8)
        run(job("b.png"), shared_workspace, pipelines, progress=stop_at(7))
    state = json.loads((tmp_path / ".blk-tmp-b.png.journal.json").read_text())
    # stages: 0 enlarge to 40×32, 1 pass A there, 2 enlarge to 80×64, 3 pass A there, 4 the full frame
    assert (state["pass"], state["rows_done"], state["tiles_done"]) == (3, 1, 3) and len(calls) == 7
    canvases = {p.name.split(".")[-2]: p.stat().st_size for p in tmp_path.glob(f".blk-tmp-{state['token']}.*.canvas")}
    assert canvases == {"pass2": 80 * 64 * 3 * 2, "pass3": 80 * 64 * 3 * 2}  # step 1's canvases are gone

    calls.clear()
    notes = []
    with pytest.raises(KeyboardInterrupt):  # right after the full-frame pass is recorded as done
        run(job("b.png"), shared_workspace, pipelines, progress=stop_at(12), log=notes.append)
    assert notes == ["Resuming an interrupted job at step 2 of 2, pass A, tile 6 of 12 (tiles of at most 32 px)."]
    assert calls == [(32, 32, 7)] * 6 + [(80, 64, 7)]  # the rest of step 2 and the full-frame pass
    assert json.loads((tmp_path / ".blk-tmp-b.png.journal.json").read_text())["pass"] == 5

    calls.clear()
    notes.clear()
    resumed = run(job("b.png"), shared_workspace, pipelines, log=notes.append)
    assert calls == [] and notes == ["Resuming an interrupted job after its last pass: writing the result."]
    assert np.array_equal(read(resumed.path), read(whole.path))  # same seed, same pixels, refined once
    assert read_parameters(resumed.path)["final_denoise"] == 0.1 and not list(tmp_path.glob(".blk-tmp-*"))


def test_a_job_stopped_in_its_full_frame_pass_resumes_there(shared_workspace, tmp_path, pipelines, monkeypatch):
    """Ctrl+C during the full-frame pass, every tile done: the resume starts at that pass (it raised
    AttributeError, the model being loaded only by a tile pass) and gives the uninterrupted pixels."""
    gradient(20, 16).save(tmp_path / "small.png")

    def job(name):
        return tiny_job(tmp_path, name, input=tmp_path / "small.png", scale=4, step=2, tile=32, overlap=8,
                        passes=(Pass(0.5),), seed=7)

    whole = run(job("whole.png"), shared_workspace, pipelines)
    pipe_class = type(pipelines.get(resolve("tiny-flux", shared_workspace), task="img2img").pipe)
    original, frames = pipe_class.__call__, []

    def stopped_in_the_full_frame(self, *args, **kwargs):
        if (kwargs["width"], kwargs["height"]) == (80, 64):
            frames.append(kwargs["width"])
            if len(frames) == 1:
                raise KeyboardInterrupt()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", stopped_in_the_full_frame)
    with pytest.raises(KeyboardInterrupt):
        run(job("out.png"), shared_workspace, pipelines)
    assert json.loads((tmp_path / ".blk-tmp-out.png.journal.json").read_text())["pass"] == 4  # the full frame
    notes = []
    resumed = run(job("out.png"), shared_workspace, pipelines, log=notes.append)
    assert frames == [80, 80] and notes and notes[0].startswith("Resuming an interrupted job")
    assert np.array_equal(np.asarray(Image.open(resumed.path)), np.asarray(Image.open(whole.path)))
    assert not list(tmp_path.glob(".blk-tmp-*"))


def test_full_frame_pass_changes_pixels_and_out_of_memory_skips_it(shared_workspace, tmp_path, pipelines,
                                                                    monkeypatch):
    gradient(24, 20).save(tmp_path / "small.png")

    def job(name, **fields):
        return tiny_job(tmp_path, name, input=tmp_path / "small.png", tile=32, overlap=8, passes=(Pass(0.5),),
                        **fields)

    read = lambda result: np.asarray(Image.open(result.path)).astype(int)  # noqa: E731
    tiled = run(job("tiled.png", final_denoise=None), shared_workspace, pipelines)
    final = run(job("final.png", final_denoise=0.3), shared_workspace, pipelines)
    assert np.abs(read(final) - read(tiled)).mean() > 1 and final.final_pass and not tiled.final_pass
    assert read_parameters(final.path)["final_denoise"] == 0.3

    notes = []
    calls = record_calls(monkeypatch, pipelines, shared_workspace, fail_when=lambda w, h: (w, h) != (32, 32))
    skipped = run(job("skipped.png", final_denoise=0.3), shared_workspace, pipelines, log=notes.append)
    assert calls[-1] == (48, 48, 0)  # 48×40 padded to Flux's grid: the full frame, which ran out of memory
    assert notes == ["The full-frame pass ran out of memory at 48×40 and was skipped; the tiled result is kept."]
    assert np.array_equal(read(skipped), read(tiled)) and not skipped.final_pass
    assert read_parameters(skipped.path)["final_denoise"] is None and not list(tmp_path.glob(".blk-tmp-*"))

    calls.clear()
    notes.clear()  # larger than it may be: left out before it starts, with a note
    small = run(job("small-budget.png", final_denoise=0.3, final_max_pixels=1000), shared_workspace, pipelines,
                log=notes.append)
    assert (48, 48, 0) not in calls and np.array_equal(read(small), read(tiled))
    assert len(notes) == 1 and notes[0].startswith("The full-frame pass is left out: a 48×40 frame needs about")


def test_cli_16bit_icc_dpi_and_print_copy(shared_workspace, tmp_path, capsys):
    """--16bit, --icc, --dpi and --print-dpi reach the diffusion path's TIFF and its print copy."""
    import tifffile
    from PIL import ImageCms

    from blk.cli import main

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    (tmp_path / "profile.icc").write_bytes(icc)
    tifffile.imwrite(tmp_path / "scan.tif", (np.asarray(gradient(24, 20), np.float32) * 257).astype(np.uint16),
                     photometric="rgb")
    common = ["--workspace", str(shared_workspace.root), "upscale", str(tmp_path / "scan.tif"), "--path", "diffusion",
              "--model", "tiny-flux", "--scale", "2", "--tile", "48", "--overlap", "8", "--steps", "4",
              "--denoise", "0.5", "--no-final-pass", "--16bit"]
    code = main(common + ["--icc", str(tmp_path / "profile.icc"), "--dpi", "300", "--print-dpi", "240",
                          "--out", str(tmp_path / "big.tif")])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert "48×40, 16-bit, 1 step(s) of 1 pass(es), 1 tiles" in said.out
    assert f"print copy: {tmp_path / 'big.print.tif'}" in said.out and "outside what" not in said.err
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        page = tif.pages[0]
        master = page.asarray()
        assert page.dtype == np.uint16 and master.shape == (40, 48, 3) and page.tags["InterColorProfile"].value == icc
        x, y = page.tags["XResolution"].value
        assert abs(x / y - 300) < 1e-6 and json.loads(page.description)["bits"] == 16
    assert (master % 257 != 0).mean() > 0.5  # 16 bits of the model's output, not 8 bits widened
    with tifffile.TiffFile(tmp_path / "big.print.tif") as tif:
        page = tif.pages[0]
        printed = page.asarray()
        assert page.dtype == np.uint8 and printed.shape == (40, 48, 3) and page.tags["InterColorProfile"].value == icc
        x, y = page.tags["XResolution"].value
        assert abs(x / y - 240) < 1e-6
    assert np.abs(printed - master / 257).max() <= 0.5 + 1e-6  # rounded once from the 16-bit master
    code = main(common + ["--out", str(tmp_path / "big.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "16-bit results are written as TIFF" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "big.png").exists() and not list(tmp_path.glob(".blk-tmp-*"))


def test_a_small_or_thin_image_runs_with_the_default_tile_and_overlap(shared_workspace, tmp_path, pipelines):
    """An image smaller than a tile along a side is one tile there, so the default overlap (96) has nothing to
    overlap: a 48×40 drawing or a 120×16 banner was refused with "An overlap of 96 px needs tiles of at least
    192 px", a setting the artist never touched."""
    for name, size in (("small.png", (48, 40)), ("banner.png", (120, 16))):
        source = tmp_path / name
        gradient().resize(size).save(source)
        job = DiffusionJob(input=source, output=tmp_path / f"out-{name}", model="tiny-flux", scale=2, steps=2,
                           passes=(Pass(0.3),), final_denoise=None)
        assert (job.tile, job.overlap) == (1024, 96)  # the defaults
        result = run(job, shared_workspace, pipelines)
        assert Image.open(result.path).size == (size[0] * 2, size[1] * 2) and result.tiles == 1
    with pytest.raises(UserError, match="An overlap of 96 px needs tiles of at least 192 px"):  # the setting itself
        estimate(DiffusionJob(input=source, output=tmp_path / "x.png", model="tiny-flux", scale=2, tile=128),
                 shared_workspace)


def test_compile_covers_the_denoiser_and_the_enlargement_and_keeps_the_pixels(shared_workspace, tmp_path,
                                                                              monkeypatch):
    """`memory.compile` on the diffusion path: the denoiser's blocks and the enlargement network's repeated block
    compile, and the result is the uncompiled one's within a level or two."""
    import torch
    import torch._dynamo

    from blk.models import speed
    from blk.models.device import MemoryOptions
    from blk.upscale import compiled_network
    from tests.test_upscale_esrgan import rrdb_state

    networks = []  # what the job compiled, seen on the way (compile_network itself runs)
    compile_network = compiled_network.compile_network
    monkeypatch.setattr(compiled_network, "compile_network", lambda net: networks.append(net) or compile_network(net))

    model = tmp_path / "RealESRGAN_x4plus_3blocks.pth"
    torch.save(rrdb_state(nb=3), model)
    settings = {"enlarge_model": model, "final_denoise": None, "passes": (Pass(0.5),)}
    eager = run(tiny_job(tmp_path, "eager.png", **settings), shared_workspace, PipelineCache())
    torch._dynamo.reset()
    cache = PipelineCache()
    compiled = run(tiny_job(tmp_path, "compiled.png", memory=MemoryOptions(compile=True), **settings),
                   shared_workspace, cache)
    assert speed.is_compiled(cache._loaded.denoiser) and read_parameters(compiled.path)["compile"] is True
    assert "compile" not in read_parameters(eager.path)
    a, b = (np.asarray(Image.open(r.path).convert("RGB")).astype(int) for r in (eager, compiled))
    assert a.shape == b.shape == (80, 96, 3) and np.abs(a - b).max() <= 2
    assert [type(net).__name__ for net in networks] == ["RRDBNet"] and compiled_network.is_compiled(networks[0])
    assert eager.denoising_key == "diffusion|tiny-flux|64|per-step" and eager.enlarging_key.startswith("enlarge|")
    assert (compiled.denoising_key, compiled.enlarging_key) == (eager.denoising_key + "|compiled",
                                                                eager.enlarging_key + "|compiled")
    # the compiler gone before the upscaler's first batch: it falls back, and its pace is filed as uncompiled
    # beside the denoiser's compiled one (both were filed under the job's "compile", false once one fell back)
    import contextlib

    import torch._inductor.config
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    with contextlib.ExitStack() as gone:
        def compiler_goes(done, total, stage):  # after the job's check that a compiler is there
            if not gone._exit_callbacks:
                gone.enter_context(torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}))
                gone.enter_context(temporary_cache_dir(str(tmp_path / "cache")))

        other = tmp_path / "RealESRGAN_x4plus_2blocks.pth"  # another network: compiled anew, not from memory
        torch.save(rrdb_state(nb=2), other)
        fell_back = run(tiny_job(tmp_path, "fell-back.png", memory=MemoryOptions(compile=True),
                                 **{**settings, "enlarge_model": other}), shared_workspace, cache, progress=compiler_goes)
    assert not compiled_network.is_compiled(networks[-1]) and "compile" not in read_parameters(fell_back.path)
    assert speed.is_compiled(cache._loaded.denoiser)
    assert (fell_back.denoising_key, fell_back.enlarging_key) == (compiled.denoising_key,
                                                                  "enlarge|RealESRGAN_x4plus_2blocks.pth|auto")
    torch._dynamo.reset()


def test_compile_without_a_compiler_stops_the_diffusion_path_before_any_work(shared_workspace, tmp_path,
                                                                             monkeypatch):
    """The enlargement runs (and would compile) before the denoiser loads: the check comes before both."""
    import torch._inductor.config

    from blk.models.device import MemoryOptions
    from tests.test_upscale_esrgan import rrdb_file

    model = rrdb_file(tmp_path / "RealESRGAN_x4plus_tiny.pth")
    calls = model_calls(monkeypatch, lambda n: None)
    cache = PipelineCache()
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}), \
            pytest.raises(UserError, match="needs a C\\+\\+ compiler"):
        run(tiny_job(tmp_path, enlarge_model=model, memory=MemoryOptions(compile=True)), shared_workspace, cache)
    assert calls == [] and cache.load_count == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RealESRGAN_x4plus_tiny.pth", "in.png"]


def test_a_job_that_outgrows_the_disk_is_refused_before_its_first_tile(shared_workspace, tmp_path, pipelines):
    """Its first step's canvases fit, its second step's do not: the job used to refine the whole first step
    (hours at mural sizes) before the disk refused. Now one sentence comes before any tile, nothing is left."""
    from tests.test_faults import tmpfs

    gradient().save(tmp_path / "in.png")
    with tmpfs(tmp_path / "small-disk", "160k") as disk:
        job = tiny_job(tmp_path, input=tmp_path / "in.png", scale=4, step=2, tile=48, overlap=8)
        job.output = disk / "mural.tif"
        reports = []
        with pytest.raises(UserError, match=r"has \d+ (KB|MB) free and this job needs about \d+ (KB|MB)") as refused:
            run(job, shared_workspace, pipelines, progress=lambda *a: reports.append(a))
        assert reports == [] and "\n" not in str(refused.value)
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("enlarge", ["lanczos", "esrgan"])
def test_the_disk_need_covers_every_moment_of_a_job(shared_workspace, tmp_path, pipelines, enlarge):
    """The canvases on the disk at each tile report (a stage's canvas beside the one it reads) never exceed the
    need the job is checked against before it starts."""
    from blk.upscale.diffusion import disk_need
    from tests.test_upscale_esrgan import rrdb_file

    model = rrdb_file(tmp_path / "x4.pth") if enlarge == "esrgan" else None
    job = tiny_job(tmp_path, scale=4, step=2, tile=48, overlap=8, enlarge_model=model)
    on_disk = []

    def measure(*_):
        on_disk.append(sum(p.stat().st_size for p in tmp_path.glob(".blk-tmp-*.canvas")))

    result = run(job, shared_workspace, pipelines, progress=measure)
    canvases, pixels = disk_need((48, 40), result.sizes, len(job.passes), True, 3, 8, False,
                                 4 if model else None)
    assert result.sizes == [(96, 80), (192, 160)] and pixels == 192 * 160 * 3
    canvas = lambda w, h: w * h * 3 * 2  # noqa: E731  (16-bit RGB)
    # the peak: a pass of the last step, its canvas beside the one it refines; with ESRGAN, the ×4 model's
    # 384×320 canvas of the second step's enlargement beside the first step's result
    assert max(on_disk) == (2 * canvas(192, 160) if model is None else canvas(384, 320) + canvas(96, 80))
    # the need adds what no report sees: the ×4 canvas resampled to 192×160 beside both
    assert max(on_disk) <= max(canvases) <= 1.25 * max(on_disk)
