"""The diffusion upscale path's checks before work, its strength on few-step models, its time estimate in
denoising steps, its full-frame pass decided once, non-finite output, the CLI's plan, and its resume key."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.generate.text_to_image import img2img_steps
from blk.models.pipelines import PipelineCache
from blk.models.registry import resolve
from blk.upscale.diffusion import (FULL_FRAME, NOT_FINITE, DiffusionJob, EnlargingClock, Pass, effective_steps,
                                   enlarge_work, estimate, plan, run)
from tests.support.loras import make_random_lora
from tests.test_upscale_diffusion import gradient, stop_at, tiny_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipelines():
    return PipelineCache()


@pytest.fixture(scope="module")
def sdxl_lora(shared_workspace, tmp_path_factory):
    return make_random_lora(shared_workspace.models / "tiny-sdxl", "sdxl", tmp_path_factory.mktemp("sdxl-lora"))


@pytest.fixture
def context(workspace, shared_workspace):
    """The app's context over a fresh workspace holding a copy of tiny-flux."""
    from ui.context import StudioContext

    shutil.copytree(shared_workspace.models / "tiny-flux", workspace.models / "tiny-flux")
    return StudioContext(workspace, demo=True, demo_reason="test")


# 3: the strength diffusers uses is the one asked, on few-step and many-step models alike

@pytest.mark.parametrize("family", ["flux", "sdxl"])
@pytest.mark.parametrize("steps", [4, 28])  # FLUX schnell's 4, FLUX dev's 28
def test_the_strength_run_is_within_a_tenth_of_the_denoise_asked(steps, family):
    for denoise in (0.05, 0.06, 0.07, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.45, 0.6, 1.0):
        asked, ran = effective_steps(steps, denoise, family)
        tolerance = max(0.01, 0.1 * denoise)
        assert ran == img2img_steps(family, asked, denoise) and asked >= steps
        assert abs(ran / asked - denoise) <= tolerance, (steps, denoise, asked, ran)
        assert int(asked * denoise) >= 1, (steps, denoise, asked)  # SDXL runs int(asked × denoise): never none
        fewer = [a for a in range(steps, asked) if abs(img2img_steps(family, a, denoise) / a - denoise) <= tolerance
                 and int(a * denoise) >= 1]
        assert fewer == []  # the fewest steps that do


def test_schnells_four_steps_start_at_the_noise_level_asked():
    """As FLUX.1-schnell's scheduler is configured (shift 1, no dynamic shifting) and Flux img2img sets it: 0.3
    started at sigma 0.5 and 0.15 above 0.2; now each starts within a tenth of what was asked, in order."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline

    assert effective_steps(4, 0.3) == (10, 3) and effective_steps(28, 0.3) == (28, 9)
    starts = []
    for denoise in (0.3, 0.2, 0.15, 0.1):
        asked, ran = effective_steps(4, denoise)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / asked, asked))
        timesteps, count = FluxImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), asked, denoise,
                                                             "cpu")
        starts.append(float(timesteps[0]) / 1000)
        assert count == ran and abs(starts[-1] - denoise) <= max(0.01, 0.1 * denoise), (denoise, starts)
    assert starts == sorted(starts, reverse=True)


# 1: a LoRA of another family is refused before any work

def test_a_lora_of_another_family_is_refused_before_any_work(shared_workspace, workspace, tmp_path, pipelines,
                                                             sdxl_lora, context):
    from ui.tabs.upscale import DIFFUSION
    from ui.tabs.upscale import estimate as estimate_in_the_tab

    sentence = ("pytorch_lora_weights.safetensors is a SDXL LoRA and the base model is FLUX: it will not load "
                "there (choose a SDXL base model, or remove it).")
    events = []
    with pytest.raises(UserError) as refused:
        run(tiny_job(tmp_path, texture_lora=sdxl_lora), shared_workspace, pipelines,
            progress=lambda done, total, stage: events.append(stage), on_plan=events.append)
    assert str(refused.value) == sentence and events == [] and not list(tmp_path.glob(".blk-tmp-*"))
    with pytest.raises(UserError, match="is a SDXL LoRA and the base model is FLUX"):
        estimate(tiny_job(tmp_path, texture_lora=sdxl_lora), workspace)  # the model's family from the registry
    kept = context.workspace.models / "loras" / "texture.safetensors"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sdxl_lora, kept)
    image = tmp_path / "in.png"
    text = estimate_in_the_tab(context, str(image), DIFFUSION, 2, "", None, "tiny-flux", 64, 16, 4, 0.3, 0.2, False,
                               0.15, False, None, str(kept))
    assert "**texture.safetensors is a SDXL LoRA and the base model is FLUX" in text


# 2: the time before a job counts its denoising steps

def test_the_plans_work_counts_every_passs_steps_and_the_full_frame(shared_workspace):
    job = DiffusionJob("in.png", "out.tif", "flux-dev", scale=None, size=(4096, 3072), final_max_pixels=64 * 2**20,
                       device="cpu")
    the_plan = plan(job, 1024, 768, 28)
    assert the_plan.tiles == [20] and the_plan.steps_per_tile == [9, 6] and the_plan.final_pass
    # 20 tiles × (9 + 6) steps; the full frame: 3 of 28 steps at 0.1, each the area of 12 tiles of 1024²
    assert the_plan.final_work == 3 * 12 and the_plan.work == 20 * 15 + 36
    few = plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=2, steps=4, final_denoise=None), 1024, 768, 28)
    many = plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=2, steps=40, final_denoise=None), 1024, 768, 28)
    three = plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=2, steps=40, final_denoise=None,
                              passes=(Pass(0.3), Pass(0.2), Pass(0.15))), 1024, 768, 28)
    assert few.total_tiles == many.total_tiles == 12  # what the estimate used to multiply, whatever the steps
    assert (few.work, many.work, three.work) == (6 * (3 + 1), 6 * (12 + 8), 6 * (12 + 8 + 6))


def test_the_time_shown_follows_the_steps_and_an_old_rate_file_gives_none(context, tmp_path):
    from blk.upscale.rates import _path, rate_key, record
    from ui.tabs.upscale import DIFFUSION, estimate

    image = tmp_path / "art.png"
    gradient(40, 32).save(image)

    def time_shown(steps, use_c=False):
        text = estimate(context, str(image), DIFFUSION, 2, "", None, "tiny-flux", 32, 8, steps, 0.3, 0.2, use_c,
                        0.15, False)
        return text.split("Time: ")[1]

    _path(context.workspace).parent.mkdir(parents=True, exist_ok=True)
    _path(context.workspace).write_text(json.dumps({"diffusion|tiny-flux|32": 2.0}))  # seconds per tile, before
    assert time_shown(4).startswith("shown once the first tiles are done")
    record(context.workspace, rate_key("diffusion", "tiny-flux", 32), 9.0, 9)  # 1 s per tile-step
    # 9 tiles of 80×64; at 4 steps 0.3 runs 3 of 10, 0.2 one of 5: 36 tile-steps; at 40, 12 + 8: 180
    assert time_shown(4).startswith("about 36 s of denoising") and time_shown(40).startswith("about 3 min of denoising")
    assert time_shown(40, use_c=True).startswith("about 4 min of denoising")  # pass C's 6 steps a tile: 234 s
    record(context.workspace, "enlarge|lanczos|auto", 2.56, 2560)  # a Lanczos enlargement: 1 ms per pixel made
    assert time_shown(4) == ("about 41 s: about 36 s of denoising and about 5 s of enlarging (loading and writing "
                             "come on top), from the last jobs with these settings on this machine.")
    # a resume with every pass done: its rate would give "under a second", no rate "shown once the first tiles…"
    from blk.upscale.rates import time_sentence

    for key in ("diffusion|tiny-flux|32|per-step", "diffusion|never-ran|32|per-step"):
        assert time_sentence(context.workspace, key, 0, ("enlarge|lanczos|auto", 0)) == \
            "Time: only the result is left to write."


def test_a_job_records_its_seconds_per_tile_step(shared_workspace, tmp_path, pipelines):
    """The engine times its denoising: every tile call but the first (the warm-up), in tile-steps."""
    job = tiny_job(tmp_path, final_denoise=None)
    the_plan = estimate(job, shared_workspace)
    result = run(job, shared_workspace, pipelines)
    seconds, work = result.denoising
    assert work == the_plan.work - the_plan.steps_per_tile[0] and seconds > 0  # the first tile left out
    assert result.tiles == the_plan.total_tiles
    seconds, work = result.enlarging  # the Lanczos enlargement to 96×80, timed apart and whole
    assert work == sum(the_plan.enlarge_work) == 96 * 80 and seconds > 0


def test_an_upscalers_enlargement_counts_the_models_pixels_and_its_time_after_the_first_batch():
    """A ×4 model asked for 2× runs its whole ×4 and shrinks: as much work as a 4× step (pixels made would
    rate it 4× too fast). Its time starts after its first batch (the warm-up, or the compiler's 10 s), its work
    counts the tiles after it; a resumed enlargement's first report already counts finished tiles."""
    assert enlarge_work((100, 100), [(200, 200)], 4) == enlarge_work((100, 100), [(400, 400)], 4) == [160_000]
    assert enlarge_work((100, 100), [(200, 200)], None) == [40_000]  # Lanczos: pixels made
    assert enlarge_work((100, 100), [(200, 200), (800, 800)], 4) == [160_000, 640_000]  # each from the last

    def timed(reports, model=True):
        clock = EnlargingClock()
        clock.begin()
        for done, total in reports:
            clock.report(done, total)
        clock.end(400, model)
        return clock.work, clock.seconds

    assert timed([(0, 4), (1, 4), (2, 4), (4, 4)])[0] == 300  # 3 of 4 tiles after the first batch
    assert timed([(2, 4), (3, 4), (4, 4)])[0] == 100  # resumed with 2 done: 1 tile after its first batch
    assert timed([(0, 4), (4, 4)]) == (0, 0.0)  # one batch: nothing known but the warm-up
    assert timed([(0, 1), (1, 1)], model=False)[0] == 400  # Lanczos: whole


# 4 and 9: the full-frame pass is decided once, announced before it runs, counted only when it ran

def frames_and_reports(monkeypatch, pipelines, workspace, frame, out_of_memory=False) -> list:
    """What the job did, in order: ("call", w, h) for each img2img call (diffusers' own pipeline class, wrapped;
    `out_of_memory`: a call at `frame` size fails as CUDA would) and ("report", what, done) for each progress."""
    import torch

    pipe_class = type(pipelines.get(resolve("tiny-flux", workspace), task="img2img").pipe)
    original, events = pipe_class.__call__, []

    def calling(self, *args, **kwargs):
        events.append(("call", kwargs["width"], kwargs["height"]))
        if out_of_memory and (kwargs["width"], kwargs["height"]) == frame:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", calling)
    return events


def test_the_full_frame_pass_is_announced_first_and_on_a_cpu_checked_again_once_the_model_is_in(
        shared_workspace, tmp_path, pipelines, monkeypatch):
    """The pass needs 63 MB (96×80 at 8 KB a pixel) of a quarter of free RAM (psutil's reading). With 400 MB free
    throughout it runs, said before it starts. With 200 MB once the model is in, a CPU leaves it out with the
    note (it has no out-of-memory error to catch: the system would kill the job, and its resume, each time):
    not counted, never said to be done."""
    import psutil

    for after_load, runs in ((400, True), (200, False)):
        readings = []

        def available():
            readings.append(1)
            return SimpleNamespace(available=(400 if len(readings) == 1 else after_load) * 2**20)

        events = frames_and_reports(monkeypatch, pipelines, shared_workspace, (96, 80))
        monkeypatch.setattr(psutil, "virtual_memory", available)
        plans, notes = [], []
        (tmp_path / str(after_load)).mkdir()
        result = run(tiny_job(tmp_path / str(after_load), final_denoise=0.1, device="cpu"), shared_workspace,
                     pipelines, log=notes.append, on_plan=plans.append,
                     progress=lambda done, total, stage: events.append(("report", stage.what, stage.done, done, total)))
        assert plans[0].final_pass and result.final_pass == runs
        assert result.tiles == plans[0].total_tiles + runs
        if runs:
            assert notes == []
            frame = events.index(("call", 96, 80))
            total = result.tiles
            assert events[frame - 1] == ("report", FULL_FRAME, 0, total - 1, total)  # told before it starts
            assert events[frame + 1:] == [("report", FULL_FRAME, 1, total, total)]
        else:
            assert notes == ["The full-frame pass is left out: a 96×80 frame needs about 0.1 GB and about 0.0 GB "
                             "is free for it; the tiled result is kept."]
            assert ("call", 96, 80) not in events and events[-1][1:3] == (FULL_FRAME, 0)


def test_a_full_frame_pass_skipped_out_of_memory_is_not_counted(shared_workspace, tmp_path, pipelines, monkeypatch):
    events = frames_and_reports(monkeypatch, pipelines, shared_workspace, (96, 80), out_of_memory=True)
    notes = []
    the_plan = estimate(tiny_job(tmp_path, final_denoise=0.1), shared_workspace)
    result = run(tiny_job(tmp_path, final_denoise=0.1), shared_workspace, pipelines, log=notes.append,
                 progress=lambda done, total, stage: events.append(("report", stage.what, stage.done, done, total)))
    assert the_plan.final_pass and not result.final_pass and result.tiles == the_plan.total_tiles
    assert notes == ["The full-frame pass ran out of memory at 96×80 and was skipped; the tiled result is kept."]
    assert events[-1] == ("call", 96, 80) and events[-2][1:3] == (FULL_FRAME, 0)  # never said to be done


def test_a_resumed_job_keeps_the_full_frame_decision_it_began_with(shared_workspace, tmp_path, pipelines):
    """Begun with too little memory for the full-frame pass, stopped, resumed with plenty: the resume leaves the
    pass out as the job began (it ran it, refining only what the resume did: another picture than an
    uninterrupted job's), says so in its plan, and gives the uninterrupted pixels."""
    little, plenty = dict(final_denoise=0.3, final_max_pixels=1), dict(final_denoise=0.3, final_max_pixels=None)
    whole = run(tiny_job(tmp_path, "whole.png", **little), shared_workspace, pipelines)
    assert not whole.final_pass
    with pytest.raises(KeyboardInterrupt):
        run(tiny_job(tmp_path, "out.png", **little), shared_workspace, pipelines, progress=stop_at(3))
    assert estimate(tiny_job(tmp_path, "fresh.png", **plenty), shared_workspace).final_pass  # a fresh job would
    estimated = estimate(tiny_job(tmp_path, "out.png", **plenty), shared_workspace)  # Estimate: what Start will do
    plans, notes = [], []
    resumed = run(tiny_job(tmp_path, "out.png", **plenty), shared_workspace, pipelines, on_plan=plans.append,
                  log=notes.append)
    assert not plans[0].final_pass and not resumed.final_pass and "plus one full-frame pass" not in plans[0].sentence()
    assert not estimated.final_pass and estimated.notes[:1] == plans[0].notes
    assert estimated.notes[1] == notes[1].replace("Resuming an interrupted job", "Starting resumes the interrupted job")
    assert notes[1].startswith("Resuming an interrupted job at step 1 of 1, pass A, tile ")
    assert notes[0] == ("The full-frame pass is left out, as when this job began (too little memory was free for it "
                        "then); the tiled result is kept.")
    assert np.array_equal(np.asarray(Image.open(resumed.path)), np.asarray(Image.open(whole.path)))
    assert not list(tmp_path.glob(".blk-tmp-*"))


def test_a_job_whose_canvases_are_gone_is_estimated_and_run_afresh(shared_workspace, tmp_path, pipelines):
    """Its journal alone does not make a resume: Estimate said "Starting resumes…" where Start began afresh."""
    with pytest.raises(KeyboardInterrupt):
        run(tiny_job(tmp_path, final_denoise=None), shared_workspace, pipelines, progress=stop_at(3))
    assert any("Starting resumes" in note for note in estimate(tiny_job(tmp_path, final_denoise=None),
                                                               shared_workspace).notes)
    for canvas in tmp_path.glob(".blk-tmp-*.canvas"):
        canvas.unlink()
    fresh = estimate(tiny_job(tmp_path, final_denoise=None), shared_workspace)
    assert not any("resumes" in note for note in fresh.notes) and fresh.work_done == 0
    notes = []
    run(tiny_job(tmp_path, final_denoise=None), shared_workspace, pipelines, log=notes.append)
    assert not any(note.startswith("Resuming") for note in notes), notes


def test_a_failure_while_the_plan_is_shown_frees_the_lock_and_keeps_a_resumed_jobs_files(shared_workspace, tmp_path,
                                                                                          pipelines):
    """The journal is taken before the plan is shown (a resume follows its first run's plan): a caller failing
    there leaves a fresh job nothing and a resumed one every file, and never the lock held."""
    def failing(the_plan):
        raise RuntimeError("the window went away")

    with pytest.raises(RuntimeError):
        run(tiny_job(tmp_path, final_denoise=None), shared_workspace, pipelines, on_plan=failing)
    assert not list(tmp_path.glob(".blk-tmp-*"))  # a fresh job: nothing left, the lock file neither
    with pytest.raises(KeyboardInterrupt):
        run(tiny_job(tmp_path, final_denoise=None), shared_workspace, pipelines, progress=stop_at(3))
    kept = sorted(p.name for p in tmp_path.glob(".blk-tmp-*"))
    with pytest.raises(RuntimeError):
        run(tiny_job(tmp_path, final_denoise=None), shared_workspace, pipelines, on_plan=failing)
    assert sorted(p.name for p in tmp_path.glob(".blk-tmp-*")) == kept  # a resumed job: every file kept
    notes = []
    run(tiny_job(tmp_path, final_denoise=None), shared_workspace, pipelines, log=notes.append)  # not locked out
    assert notes[0].startswith("Resuming an interrupted job") and not list(tmp_path.glob(".blk-tmp-*"))


# 5: a non-finite LoRA strength, or a tile that is not finite, is one sentence, not a black image

def test_a_non_finite_lora_strength_is_refused_when_read():
    from blk.generate.sketch import Lora

    for text in ("tex.safetensors:nan", "tex.safetensors:inf", "tex.safetensors:-inf"):
        with pytest.raises(UserError, match=r"^A LoRA's strength goes from -1 to 2; tex\.safetensors has "
                                            r"-?(nan|inf)\.$"):
            Lora.parse(text)
    assert Lora.parse("tex.safetensors:-5") == Lora(Lora.parse("tex.safetensors").path, -5.0)


def test_a_texture_lora_out_of_range_or_unreadable_is_refused_before_the_enlargement(shared_workspace, tmp_path,
                                                                                      pipelines, capsys):
    """A strength of 50 or -7 ran and wrote a picture fallen apart; a 0-byte LoRA was found after the enlargement,
    whose work was then deleted; and the CLI printed that error at the end of the progress line."""
    from blk.cli import main

    lora = make_random_lora(shared_workspace.models / "tiny-flux", "flux", tmp_path / "texture")
    for strength in (50.0, -7.0):
        job = tiny_job(tmp_path, texture_lora=lora, passes=(Pass(0.5, strength),))
        for call in (lambda: estimate(job, shared_workspace), lambda: run(job, shared_workspace, pipelines)):
            with pytest.raises(UserError, match=rf"^A LoRA's strength goes from -1 to 2; {lora.name} has "
                                                rf"{strength:g}\.$"):
                call()
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    events = []
    with pytest.raises(UserError, match=r"^empty\.safetensors is not a readable \.safetensors file: copy or "):
        run(tiny_job(tmp_path, texture_lora=empty), shared_workspace, pipelines, on_plan=events.append,
            progress=lambda *a: events.append(a))
    assert events == [] and not list(tmp_path.glob(".blk-tmp-*"))
    code = main(["--workspace", str(shared_workspace.root), "upscale", str(tmp_path / "in.png"), "--path",
                 "diffusion", "--model", "tiny-flux", "--lora", f"{empty}:0.5", "--out", str(tmp_path / "cli.png")])
    assert code == 2 and capsys.readouterr().err.splitlines()[-1].startswith("error: empty.safetensors is not")


def test_a_tile_that_is_not_finite_stops_the_job_in_one_sentence(shared_workspace, tmp_path, pipelines):
    from safetensors.torch import load_file, save_file

    lora = make_random_lora(shared_workspace.models / "tiny-flux", "flux", tmp_path / "texture")
    blown = tmp_path / "blown.safetensors"  # weights that overflow: a NaN strength is refused before any work now
    save_file({key: value * 1e30 for key, value in load_file(str(lora)).items()}, str(blown))
    with pytest.raises(UserError) as stopped:
        run(tiny_job(tmp_path, texture_lora=blown, passes=(Pass(0.5, 1.0),), final_denoise=None),
            shared_workspace, pipelines)
    assert str(stopped.value) == NOT_FINITE and not (tmp_path / "out.png").exists()
    assert not list(tmp_path.glob(".blk-tmp-*"))


# 6, 7 and 8: the command line

def test_the_cli_shows_the_plan_and_its_time_before_the_first_tile(context, tmp_path, capsys):
    from blk.cli import main

    image = tmp_path / "in.png"
    gradient().save(image)
    command = ["--workspace", str(context.workspace.root), "upscale", str(image), "--path", "diffusion", "--model",
               "tiny-flux", "--scale", "2", "--tile", "64", "--overlap", "16", "--steps", "4", "--denoise", "0.5,0.3",
               "--no-final-pass"]
    assert main([*command, "--out", str(tmp_path / "a.png")]) == 0
    said = capsys.readouterr().err
    planned = ("96×80: 2 passes of 4 tiles (20 denoising steps in all). "  # 2 of 4 steps at 0.5, 3 of 10 at 0.3
               "Time: shown once the first tiles are done (no earlier job with these settings).")
    assert said.startswith(planned + "\n"), said
    assert main([*command, "--out", str(tmp_path / "b.png")]) == 0  # the first job's pace, kept
    assert capsys.readouterr().err.startswith("96×80: 2 passes of 4 tiles (20 denoising steps in all). Time: ")
    rates = json.loads((context.workspace.outputs("upscale") / ".rates.json").read_text())
    assert list(rates) == ["diffusion|tiny-flux|64|per-step", "enlarge|lanczos|auto"]
    assert rates["diffusion|tiny-flux|64|per-step"] > 0 and rates["enlarge|lanczos|auto"] > 0


def test_the_cli_says_the_diffusion_paths_scale_and_keeps_the_step_scale_in_range(capsys):
    from blk.cli import main

    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    assert "(default 4 for esrgan, 2 for diffusion)" in " ".join(capsys.readouterr().out.split())
    for given in ("1.01", "4.5"):
        with pytest.raises(SystemExit) as refused:
            main(["upscale", "in.png", "--path", "diffusion", "--model", "flux-dev", "--step-scale", given])
        assert refused.value.code == 2
        assert f"argument --step-scale: {float(given):g} is outside the range (at least 1.5, at most 4)" in \
            capsys.readouterr().err
    with pytest.raises(UserError, match=r"^The largest enlargement per step is from 1\.5 to 4; got 1\.01\.$"):
        plan(DiffusionJob("in.png", "out.tif", "flux-dev", scale=4, step=1.01), 1000, 1000, 28, 16)


# 10: the resume key holds the device and precision the tiles were drawn with

def test_a_job_resumes_under_its_resolved_device_not_the_word_auto(shared_workspace, tmp_path, pipelines):
    from blk.models.device import pick_device

    with pytest.raises(KeyboardInterrupt):
        run(tiny_job(tmp_path, device="auto"), shared_workspace, pipelines, progress=stop_at(2))
    notes = []
    resumed = run(tiny_job(tmp_path, device=pick_device("auto")), shared_workspace, pipelines, log=notes.append)
    assert notes and notes[0].startswith("Resuming an interrupted job at step 1 of 1, pass A"), notes
    whole = run(tiny_job(tmp_path, "whole.png"), shared_workspace, pipelines)
    assert np.array_equal(np.asarray(Image.open(resumed.path)), np.asarray(Image.open(whole.path)))


def test_a_tile_halved_for_memory_grows_the_total_and_progress_never_passes_it_or_goes_back(
        shared_workspace, tmp_path, pipelines, monkeypatch):
    """The job's counts came from the plan, made before a GPU ran out of memory and the tile was halved: the bar
    read "tile 13 of 8", then fell back to 5 at the next pass, and the result said 8 tiles. A resumed job counted
    the passes that had halved at their planned tiles (24 where the job took 40)."""
    import torch

    pipe_class = type(pipelines.get(resolve("tiny-flux", shared_workspace), task="img2img").pipe)
    original, calls = pipe_class.__call__, []

    def calling(self, *args, **kwargs):
        calls.append((kwargs["width"], kwargs["height"]))
        if len(calls) == 3:  # pass A's third tile of a row of four, as a GPU would
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    def recorded(reports):
        return lambda done, total, stage: reports.append((done, total, stage.what, stage.done, stage.total))

    monkeypatch.setattr(pipe_class, "__call__", calling)
    gradient(96, 40).save(tmp_path / "in.png")  # ×2: 192×80, rows of four 64 px tiles
    planned = estimate(tiny_job(tmp_path, final_denoise=None), shared_workspace).total_tiles
    reports = []
    whole = run(tiny_job(tmp_path, "whole.png", final_denoise=None), shared_workspace, pipelines,
                progress=recorded(reports))
    assert whole.parameters["tile"] == 32 and set(calls[3:]) == {(32, 32)}
    # the tiles of the result's layouts (8 planned at 64 px): all calls but the failed one and the two before it,
    # whose row the smaller tiles redid
    assert whole.tiles == len(calls) - 3 > planned
    for counts in ([r[0] for r in reports], *([r[3] for r in reports if r[2] == what] for what in ("pass A",
                                                                                                   "pass B"))):
        assert counts == sorted(counts), reports  # never back: 1, 2, then 2 until the smaller tiles pass it
    assert all(done <= total and n <= of for done, total, _, n, of in reports), reports
    assert reports[-1][:2] == (whole.tiles, whole.tiles)

    calls.clear()  # again, stopped in pass B, then resumed without running out of memory
    with pytest.raises(KeyboardInterrupt):
        run(tiny_job(tmp_path, "resumed.png", final_denoise=None), shared_workspace, pipelines,
            progress=lambda done, total, stage: stage.what == "pass B" and stage.done == 3 and stop())
    calls.append("past the failure")
    notes, again = [], []
    resumed = run(tiny_job(tmp_path, "resumed.png", final_denoise=None), shared_workspace, pipelines,
                  progress=recorded(again), log=notes.append)
    pass_a = max(r[0] for r in reports if r[2] == "pass A")
    # stopped in pass B's first row (of 11 tiles): it starts again at that row, with pass A's 44 tiles counted
    assert notes == [f"Resuming an interrupted job at step 1 of 1, pass B, tile {pass_a + 1} of {whole.tiles} "
                     "(tiles of at most 32 px)."]
    assert resumed.tiles == whole.tiles and again[-1][:2] == (whole.tiles, whole.tiles)
    assert again[0][0] == pass_a + 1 and [r[0] for r in again] == sorted(r[0] for r in again)


def stop():
    raise KeyboardInterrupt()
