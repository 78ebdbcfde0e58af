"""LoRA training on the tiny models: loss falls, checkpoints load, resume is exact, caches hit."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from blk.errors import UserError
from blk.train.config import TrainConfig, load_config
from blk.train.runner import EventLog, run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train") / "ds"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"blkstyle, a drawing number {i}, ink")
    return folder


def config_for(model: str, dataset, **schedule) -> TrainConfig:
    config = TrainConfig.model_validate({
        "name": "test", "model": {"name": model},
        "data": {"dataset": str(dataset), "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 4},
        "optimizer": {"name": "adamw", "lr": 2e-3},
        "schedule": {"steps": 8, "seed": 3, **schedule},
        "checkpoints": {"every": 4, "keep": 8},
    })
    return config


def fixed_batch_loss(model_name, workspace, dataset, lora=None) -> float:
    """Mean loss over fixed noise draws on one image, with or without a trained LoRA."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.cache import TensorCache
    from blk.train.data import load_items
    from blk.train.families import FluxFamily, SDXLFamily
    from blk.train.config import DataSection
    from blk.train.runner import LatentSource

    model = resolve(model_name, workspace)
    pipe = load_pipeline(model, "text2img", "cpu", MemoryOptions())
    if lora:
        pipe.load_lora_weights(str(lora))
    family = FluxFamily(pipe) if model.family == "flux" else SDXLFamily(pipe)
    item = load_items(dataset, [64], False)[0]
    cache = TensorCache(dataset.parent / "eval-cache")
    latents = LatentSource(family, cache, dataset, model.path, DataSection())(item)["params"]
    with torch.no_grad():
        text = {k: v[None] for k, v in family.encode_text(item.caption).items()}
        losses = [family.loss(latents, text, torch.Generator().manual_seed(s)).item() for s in range(16)]
    return float(np.mean(losses))


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sdxl"])
def test_short_run_learns_and_its_checkpoint_loads(model, dataset, shared_workspace, tmp_path):
    config = config_for(model, dataset, steps=30)
    config.checkpoints.every, config.checkpoints.keep = 10, 2
    config.sampling.every, config.sampling.prompts, config.sampling.steps, config.sampling.size = 15, ["a cloud"], 2, 64
    result = run(config, shared_workspace, tmp_path / "run")
    assert result.status == "finished" and result.step == 30
    events = EventLog(tmp_path / "run" / "events.jsonl").read()
    losses = [e for e in events if e["kind"] == "loss"]
    assert [e["step"] for e in losses] == list(range(1, 31)) and all(np.isfinite(e["loss"]) for e in losses)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["step-000020.safetensors", "step-000030.safetensors"]  # newest 2 kept
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == \
        ["step-000000-0.png", "step-000015-0.png", "step-000030-0.png"]  # with a step-0 baseline
    assert load_config(tmp_path / "run" / "config.yaml").data.dataset == str(dataset)
    # the text encoders (Flux's T5 and CLIP, SDXL's two CLIPs) go once every caption and sample prompt is cached;
    # its samples then come from the cached embeddings, and the step-0 sample (a zero LoRA) is the base image
    assert events[-1]["text_encoders_released"] is True
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve

    plain = load_pipeline(resolve(model, shared_workspace), "text2img", "cpu", MemoryOptions())
    base_sample = plain(prompt="a cloud", width=64, height=64, num_inference_steps=2,
                        guidance_scale=config.sampling.guidance,
                        generator=torch.Generator("cpu").manual_seed(config.sampling.seed)).images[0]
    step_zero = Image.open(tmp_path / "run" / "samples" / "step-000000-0.png")
    assert np.array_equal(np.asarray(step_zero), np.asarray(base_sample))

    before = fixed_batch_loss(model, shared_workspace, dataset)
    after = fixed_batch_loss(model, shared_workspace, dataset, result.last_checkpoint)
    assert after < before, (before, after)

    from blk.generate.text_to_image import TextToImage, generate
    from blk.models.pipelines import PipelineCache, set_loras
    from blk.models.registry import resolve

    cache = PipelineCache()
    loaded = cache.get(resolve(model, shared_workspace))
    request = TextToImage("blkstyle, a drawing", seed=1, width=64, height=64, steps=2)
    base = np.asarray(generate(loaded, request)).astype(int)
    set_loras(loaded, [(result.last_checkpoint, 1.0)])
    trained = np.asarray(generate(loaded, request)).astype(int)
    set_loras(loaded, [(result.last_checkpoint, 0.0)])
    assert np.abs(trained - base).mean() > 0.5
    assert np.array_equal(np.asarray(generate(loaded, request)).astype(int), base)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(dataset, shared_workspace, tmp_path):
    from safetensors.torch import load_file

    whole = run(config_for("tiny-flux", dataset), shared_workspace, tmp_path / "whole")
    halted = run(config_for("tiny-flux", dataset), shared_workspace, tmp_path / "halted", stop_after=4)
    assert halted.status == "stopped" and halted.step == 4
    resumed = run(config_for("tiny-flux", dataset), shared_workspace, tmp_path / "halted", resume=True)
    assert resumed.step == 8
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on the CPU: same data, noise and state
    statuses = [e["status"] for e in EventLog(tmp_path / "halted" / "events.jsonl").read() if e["kind"] == "status"]
    assert statuses == ["started", "stopped", "resumed", "finished"]


def test_a_resume_trains_on_at_the_configs_learning_rate(dataset, shared_workspace, tmp_path):
    """A NaN loss says: lower the learning rate, then resume. The resume restored the optimizer's saved rate and
    hit the same NaN; it now takes the config's (an unchanged config resumes bit-identically: the test above)."""
    config = config_for("tiny-flux", dataset, steps=4, lr_schedule="constant")
    assert run(config, shared_workspace, tmp_path / "r", stop_after=2).step == 2
    lowered = config.model_copy(deep=True)
    lowered.optimizer.lr, lowered.optimizer.weight_decay = 1e-6, 0.5
    assert run(lowered, shared_workspace, tmp_path / "r", resume=True).step == 4
    rates = {e["step"]: e["lr"] for e in EventLog(tmp_path / "r" / "events.jsonl").read() if e["kind"] == "loss"}
    assert rates[2] == pytest.approx(2e-3) and rates[3] == rates[4] == pytest.approx(1e-6)


def test_a_resume_to_another_length_steps_at_the_new_schedules_rate(dataset, shared_workspace, tmp_path):
    """A finished cosine run resumed to a later step ("Resume to step", --steps) trained its first new step at the
    old schedule's last rate, 0: a step that changed nothing. The restored rate is now the new schedule's; an
    unchanged cosine resume stays bit-identical."""
    from safetensors.torch import load_file

    config = config_for("tiny-flux", dataset, steps=4, lr_schedule="cosine", warmup_steps=1)
    config.checkpoints.every = 1
    whole = run(config, shared_workspace, tmp_path / "whole")
    assert run(config, shared_workspace, tmp_path / "r", stop_after=2).step == 2
    resumed = run(config, shared_workspace, tmp_path / "r", resume=True)
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)
    finished = load_file(str(tmp_path / "r" / "state" / "adapter.safetensors"))
    longer = config.model_copy(deep=True)
    longer.schedule.steps = 8
    assert run(longer, shared_workspace, tmp_path / "r", resume=True, stop_after=5).step == 5
    fifth = load_file(str(tmp_path / "r" / "state" / "adapter.safetensors"))
    assert any(not torch.equal(finished[k], fifth[k]) for k in finished)


def test_noise_seeds_stay_distinct_at_any_number_of_micro_batches_and_unchanged_up_to_97():
    """`seed·1000003 + step·97 + micro` gave micro-batch 97 + j of a step the noise of micro-batch j of the next."""
    from blk.train.runner import noise_seed

    seeds = [noise_seed(3, step, micro, 128) for step in range(3) for micro in range(128)]
    assert len(set(seeds)) == len(seeds)
    assert noise_seed(3, 5, 96, 97) == 3 * 1_000_003 + 5 * 97 + 96  # a run of up to 97 resumes as it began


def test_seeds_beyond_what_the_generators_take_are_refused_on_reading(tmp_path):
    """schedule.seed 10**14 passed, and crashed the run at its first step after loading the model."""
    from pydantic import ValidationError

    from blk.generate.sketch import MAX_SEED
    from blk.train.config import MAX_SEED as TRAIN_MAX_SEED

    assert TRAIN_MAX_SEED == MAX_SEED  # the same range as Sketch's and the command line's seeds
    for section in ("schedule", "sampling"):
        for seed in (10**14, MAX_SEED + 1, -1):
            with pytest.raises(ValidationError, match=f"{section}.seed"):
                TrainConfig.model_validate({section: {"seed": seed}})
        assert getattr(TrainConfig.model_validate({section: {"seed": MAX_SEED}}), section).seed == MAX_SEED
    (tmp_path / "huge.yaml").write_text("schedule: {seed: 100000000000000}\n")
    with pytest.raises(UserError) as refused:
        load_config(tmp_path / "huge.yaml")
    assert "\n" not in str(refused.value) and "schedule.seed" in str(refused.value)


def test_a_stop_during_the_last_step_finishes_the_run(dataset, shared_workspace, tmp_path):
    """Stop pressed during the last step left the run "stopped" at 1 of 1, though it trained every step: it is
    finished. The largest seeds train too (the step's noise, the samples of steps 0 and 1)."""
    import threading

    from blk.train.config import MAX_SEED
    from blk.train.process import run_info

    config = config_for("tiny-flux", dataset, steps=1, seed=MAX_SEED)
    config.sampling.every, config.sampling.prompts, config.sampling.steps, config.sampling.size = 1, ["a"], 1, 64
    config.sampling.seed = MAX_SEED
    stop = threading.Event()
    stop.set()  # as if pressed while the one step ran
    result = run(config, shared_workspace, tmp_path / "r", stop=stop)
    assert (result.status, result.step) == ("finished", 1)
    assert run_info(tmp_path / "r").status == "finished"


def test_second_run_hits_the_caches(dataset, shared_workspace, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns(".blk"))
    first = run(config_for("tiny-flux", copy, steps=4), shared_workspace, tmp_path / "a")
    second = run(config_for("tiny-flux", copy, steps=4), shared_workspace, tmp_path / "b")
    assert first.latent_encodes > 0 and first.text_encodes > 0
    assert (second.latent_encodes, second.text_encodes) == (0, 0)


def test_a_model_replaced_at_the_same_path_encodes_again(dataset, shared_workspace, tmp_path):
    """The caches were named by the model's path only: a VAE replaced there (a new download, another fine-tune
    saved under the name) trained on the old VAE's latents. Its files' sizes and times are in the name now."""
    from safetensors.torch import load_file, save_file

    from blk.workspace import Workspace

    workspace = Workspace(tmp_path / "workspace")
    shutil.rmtree(workspace.models)
    shutil.copytree(shared_workspace.models, workspace.models)
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns(".blk"))
    first = run(config_for("tiny-flux", copy, steps=2), workspace, tmp_path / "a")
    assert run(config_for("tiny-flux", copy, steps=2), workspace, tmp_path / "b").latent_encodes == 0

    vae = workspace.models / "tiny-flux" / "vae" / "diffusion_pytorch_model.safetensors"
    save_file({name: tensor * 1.5 for name, tensor in load_file(str(vae)).items()}, str(vae))  # another VAE
    again = run(config_for("tiny-flux", copy, steps=2), workspace, tmp_path / "c")
    assert again.latent_encodes == first.latent_encodes > 0
    assert len(list((copy / ".blk" / "cache").iterdir())) == 2  # one cache per model as it was


def test_the_estimate_counts_every_round_of_samples_validation_and_checkpoints():
    """Each is timed once at the probe's last step (samples with one prompt) and counted as often as the run
    makes it: the probe used to time the steps alone, and a run sampling often took far longer than it said."""
    from blk.train.probe import overheads

    config = TrainConfig.model_validate({"schedule": {"steps": 1000}, "checkpoints": {"every": 300},
                                         "data": {"validation_every": 100, "validation_images": 2},
                                         "sampling": {"every": 250, "prompts": ["a", "b", "c"]}})
    events = [{"t": 9.0, "step": 3, "kind": "loss"}, {"t": 10.0, "step": 4, "kind": "loss"},
              {"t": 10.5, "step": 4, "kind": "checkpoint"}, {"t": 11.5, "step": 4, "kind": "eval"},
              {"t": 14.5, "step": 4, "kind": "sample"}, {"t": 15.0, "step": 4, "kind": "status"}]
    # samples: step 0 and every 250th, of 3 prompts; validation: step 0 and every 100th; checkpoints: 3 + the last
    assert sorted(overheads(config, events, 4)) == sorted([(9.0, 5), (1.0, 11), (0.5, 4)])


def test_a_batch_of_two_trains_two_images_of_one_size(shared_workspace, tmp_path):
    """Landscape and portrait images bucket to two sizes; each step of a batch-2 run trains two of one size."""
    folder = tmp_path / "ds"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, shape in enumerate([(96, 128, 3), (96, 128, 3), (128, 96, 3), (128, 96, 3)]):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"blkstyle, a drawing number {i}")
    config = config_for("tiny-flux", folder, steps=4, batch_size=2)
    config.data.flip, config.data.resolutions = False, [128]  # buckets 128×64 and 64×128
    result = run(config, shared_workspace, tmp_path / "r")
    steps = [e["images"] for e in EventLog(result.run_dir / "events.jsonl").read() if e["kind"] == "loss"]
    assert len(steps) == 4 and all(len(images) == 2 for images in steps), steps
    assert all(sorted(images) in (["img0.png", "img1.png"], ["img2.png", "img3.png"]) for images in steps), steps


def test_the_probe_trains_the_largest_bucket_only(shared_workspace, tmp_path, monkeypatch):
    """The probe's few steps drew what the data order gave, often only the small images: it said a run fits whose
    large steps would not. Its steps now all draw the largest bucket."""
    import blk.train.runner as runner
    from blk.train.probe import probe

    folder = tmp_path / "ds"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name, side in (("a", 64), ("b", 64), ("c", 64), ("big", 128)):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"blkstyle, {name}")
    config = config_for("tiny-flux", folder, steps=3)
    config.data.resolutions = [64, 128]
    result = run(config, shared_workspace, tmp_path / "r", largest_only=True)
    drawn = [e["images"] for e in EventLog(result.run_dir / "events.jsonl").read() if e["kind"] == "loss"]
    assert drawn == [["big.png"]] * 3

    seen = []
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda *a, **k: seen.append(k) or real_run(*a, **k))
    probe(config, shared_workspace)
    assert seen and seen[0].get("largest_only") is True


def test_bad_inputs_are_one_sentence_before_anything_starts(tmp_path, shared_workspace, dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no usable images"):
        run(config_for("tiny-flux", empty), shared_workspace, tmp_path / "r1")
    uncaptioned = tmp_path / "uncaptioned"
    shutil.copytree(dataset, uncaptioned, ignore=shutil.ignore_patterns(".blk"))
    (uncaptioned / "img2.txt").unlink()
    with pytest.raises(UserError, match="1 image.*no caption.*img2.png"):
        run(config_for("tiny-flux", uncaptioned), shared_workspace, tmp_path / "r2")
    with pytest.raises(UserError, match="no saved state"):
        run(config_for("tiny-flux", dataset), shared_workspace, tmp_path / "never-ran", resume=True)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    held_out = config_for("tiny-flux", dataset)
    held_out.data.validation_images = 1  # and no validation loss: one image kept from training for nothing
    with pytest.raises(UserError, match="^1 validation image is held out from training but no validation loss"):
        run(held_out, shared_workspace, tmp_path / "r3")
    assert not (tmp_path / "r3").exists()


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(dataset, shared_workspace, tmp_path):
    config = config_for("tiny-flux", dataset, steps=40)
    config.optimizer.lr = 1e12
    config.checkpoints.every = 1
    result = run(config, shared_workspace, tmp_path / "run")
    assert result.status == "error"
    error = [e for e in EventLog(tmp_path / "run" / "events.jsonl").read() if e["kind"] == "error"][0]
    kept = sorted((tmp_path / "run" / "checkpoints").glob("step-*.safetensors"))
    assert kept and f"The last good checkpoint (step {int(kept[-1].stem[5:])}) is kept" in error["message"]
    assert result.last_checkpoint is None or result.last_checkpoint.exists()


def test_a_nan_before_any_checkpoint_says_so_in_the_terminal_and_the_probe_refuses_it(dataset, shared_workspace,
                                                                                     tmp_path):
    """With no checkpoint saved, "the last good checkpoint is kept … resume" promised one that was not there;
    the command line printed only "error at step 1"; and the probe called a run that diverged after its first
    loss one that fits."""
    from blk.errors import UserError
    from blk.train.probe import probe
    from tests.conftest import run_blk

    config = config_for("tiny-flux", dataset, steps=40)
    config.optimizer.lr = 1e30
    config.checkpoints.every = 1000
    preset = tmp_path / "diverges.yaml"
    preset.write_text(json.dumps(config.model_dump(mode="json")))
    result = run_blk("--workspace", str(shared_workspace.root), "train", str(preset), "--run-dir", str(tmp_path / "r"))
    said = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(said) == 1, result.stderr
    assert re.fullmatch(r"error: Training stopped: (the loss|a gradient) became (nan|inf) at step \d+\. No checkpoint "
                        r"was saved before it; lower the learning rate \(optimizer\.lr\) and start the run again\.",
                        said[0]), said
    assert not list((tmp_path / "r" / "checkpoints").glob("*.safetensors"))
    with pytest.raises(UserError, match=r"^The probe's training stopped: (the loss|a gradient) became (nan|inf) at step"
                                        r" \d+; lower the learning rate \(optimizer\.lr\)\.$"):
        probe(config, shared_workspace)


def test_presets_load_with_the_paper_values():
    from pathlib import Path

    conceptor = load_config(Path("presets/conceptor-flux-dev.yaml"))
    assert (conceptor.adapter.rank, conceptor.adapter.alpha, conceptor.optimizer.name) == (32, 32, "prodigy")
    assert (conceptor.optimizer.d0, conceptor.optimizer.d_coef, conceptor.optimizer.weight_decay) == (1e-5, 2.0, 0.001)
    assert conceptor.optimizer.ema_decay == 0.99
    assert (conceptor.checkpoints.every, conceptor.checkpoints.keep, conceptor.checkpoints.dtype) == (250, 16, "fp16")
    assert (conceptor.optimizer.lr, conceptor.data.resolutions, conceptor.data.caption_dropout) == (1.0, [512, 768, 1024], 0.05)
    assert conceptor.data.flip and conceptor.data.shuffle_tokens and conceptor.data.cache_latents
    assert conceptor.model.int8_base and conceptor.model.gradient_checkpointing
    stencil = load_config(Path("presets/stencil-flux-layerdiffuse.yaml"))
    assert (stencil.adapter.rank, stencil.optimizer.name, stencil.schedule.lr_schedule) == (16, "adamw8bit", "polynomial")
    assert stencil.model.base_loras == ["layerdiffuse"] and stencil.data.alpha_mask
    assert stencil.data.transparency == "layerdiffuse" and stencil.data.augment.variants == 2
    assert [s.start for s in stencil.data.stages] == [0, 2000, 4000] and stencil.schedule.steps == 6000
    assert [[src.folder for src in s.sources] for s in stencil.data.stages] == \
        [["singles"], ["singles", "pairs"], ["singles", "pairs", "triples"]]
    assert stencil.data.stages[1].fractions()[1] == 0.4 and stencil.data.stages[2].fractions()[2] == 0.2
    texture = load_config(Path("presets/texture-flux.yaml"))
    assert (texture.adapter.rank, texture.schedule.gradient_accumulation, texture.schedule.warmup_steps) == (16, 8, 500)
    assert (texture.optimizer.name, texture.schedule.lr_schedule) == ("adamw8bit", "cosine")
    for path in sorted(Path("presets").glob("*.yaml")):
        if not path.name.startswith(("caption-", "upscale-")):
            load_config(path)


def test_cli_train_and_resume(dataset, shared_workspace, tmp_path, capsys):
    from tests.conftest import run_blk

    from blk.train.config import load_config

    preset = tmp_path / "p.yaml"
    config = config_for("tiny-sdxl", dataset, steps=20)
    config.checkpoints.every, config.schedule.warmup_steps = 1, 10
    preset.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    done = run_blk("--workspace", str(shared_workspace.root), "train", str(preset), "--steps", "2",
                   "--run-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert "finished at step 2" in done.stdout
    # --steps on a new run scales the warmup (and stage starts) as the Train tab's Steps does: 10 of 20 → 1 of 2
    assert (load_config(tmp_path / "r" / "config.yaml").schedule.warmup_steps) == 1
    more = run_blk("--workspace", str(shared_workspace.root), "train", "--resume", str(tmp_path / "r"), "--steps", "3")
    assert more.returncode == 0 and "finished at step 3" in more.stdout
    assert (tmp_path / "r" / "checkpoints" / "step-000003.safetensors").exists()
    assert load_config(tmp_path / "r" / "config.yaml").schedule.warmup_steps == 1  # a resume moves nothing
    # a --steps the run has reached is one sentence before any model loads (it loaded one to say "finished")
    from blk.cli import main

    assert main(["--workspace", str(shared_workspace.root), "train", "--resume", str(tmp_path / "r"),
                 "--steps", "3"]) == 2
    assert capsys.readouterr().err.strip() == "error: r is at step 3 already: set --steps above 3 to train it longer."


def test_validation_loss_is_deterministic_and_held_out(dataset, shared_workspace, tmp_path):
    config = config_for("tiny-flux", dataset, steps=6)
    config.data.validation_images, config.data.validation_every = 1, 3
    first = run(config, shared_workspace, tmp_path / "a")
    evals = [e for e in EventLog(tmp_path / "a" / "events.jsonl").read() if e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3, 6] and all(np.isfinite(e["loss"]) for e in evals)
    status = [e for e in EventLog(tmp_path / "a" / "events.jsonl").read() if e["kind"] == "status"][0]
    assert status["images"] == 3  # one of the four held out
    run(config, shared_workspace, tmp_path / "b")
    again = [e for e in EventLog(tmp_path / "b" / "events.jsonl").read() if e["kind"] == "eval"]
    assert [e["loss"] for e in again] == [e["loss"] for e in evals]
    assert first.status == "finished"
    config.data.validation_images = 4
    with pytest.raises(UserError, match="leaves none to train on"):
        run(config, shared_workspace, tmp_path / "c")


def test_probe_estimates_time_and_memory(dataset, shared_workspace, tmp_path):
    from blk.train.probe import probe
    from tests.conftest import run_blk

    config = config_for("tiny-flux", dataset, steps=1000)
    estimate = probe(config, shared_workspace)
    assert estimate.seconds_per_step > 0 and estimate.total_seconds == pytest.approx(
        estimate.seconds_per_step * 1000 + estimate.extra_seconds)
    assert 0 < estimate.extra_seconds  # 250 checkpoints
    config.sampling.every, config.sampling.prompts, config.sampling.steps = 100, ["a", "b", "c"], 8
    config.sampling.size = 128
    sampled = probe(config, shared_workspace)
    assert sampled.extra_seconds > estimate.extra_seconds  # 11 rounds of 3 samples of 8 steps each
    assert "of it samples, validation and checkpoints)" in sampled.sentence(1000)
    assert 0 < estimate.peak_bytes < estimate.device_bytes and estimate.fits
    assert "s/step" in estimate.sentence(1000) and "will not fit" not in estimate.sentence(1000)
    assert not [p for p in shared_workspace.runs.iterdir() if p.name.startswith(".probe-")]  # nothing left behind
    preset = tmp_path / "p.yaml"
    preset.write_text(json.dumps(config.model_dump(mode="json")))
    result = run_blk("--workspace", str(shared_workspace.root), "train", str(preset), "--probe")
    assert result.returncode == 0 and "for 1000 steps" in result.stdout, result.stderr


def test_ema_checkpoints_and_exact_resume(dataset, shared_workspace, tmp_path):
    from safetensors.torch import load_file

    def config():
        c = config_for("tiny-flux", dataset)
        c.optimizer.ema_decay = 0.9
        return c

    whole = run(config(), shared_workspace, tmp_path / "whole")
    run(config(), shared_workspace, tmp_path / "halted", stop_after=4)
    resumed = run(config(), shared_workspace, tmp_path / "halted", resume=True)
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)
    raw = load_file(str(tmp_path / "whole" / "state" / "adapter.safetensors"))
    published = {k.replace("transformer.", "", 1): v for k, v in a.items()}
    assert set(published) == set(raw)
    assert any(not torch.equal(published[k], raw[k]) for k in raw)  # the checkpoint holds the average


def test_latent_cache_can_be_turned_off(dataset, shared_workspace, tmp_path):
    config = config_for("tiny-flux", dataset, steps=4)
    run(config, shared_workspace, tmp_path / "warm")
    config.data.cache_latents = False
    uncached = run(config, shared_workspace, tmp_path / "cold")
    assert uncached.latent_encodes == 4 and uncached.text_encodes == 0  # one encode per step; text still cached
    # the VAE encodes every step, but each image file is decoded and bucketed once (kept in RAM)
    config.data.flip, config.schedule.steps = False, 8
    twice = run(config, shared_workspace, tmp_path / "twice")
    assert (twice.latent_encodes, twice.pixel_decodes) == (8, 4)


def test_lokr_run_saves_a_checkpoint_that_generates_and_resumes(dataset, shared_workspace, tmp_path):
    """`adapter.kind: lokr`: peft's LoKr on the denoiser, saved in diffusers' format (its config in the file's
    metadata), applied by set_loras at a strength; resume is exact as for LoRA."""
    import json as json_module

    from safetensors import safe_open
    from safetensors.torch import load_file

    from blk.generate.text_to_image import TextToImage, generate
    from blk.models.pipelines import PipelineCache, set_loras
    from blk.models.registry import resolve

    def config():
        c = config_for("tiny-flux", dataset, steps=6)
        c.adapter.kind, c.optimizer.lr, c.checkpoints.every = "lokr", 2e-2, 3
        return c

    whole = run(config(), shared_workspace, tmp_path / "whole")
    assert whole.status == "finished" and whole.last_checkpoint.name == "step-000006.safetensors"
    tensors = load_file(str(whole.last_checkpoint))
    assert tensors and all(".lokr_w" in key and key.startswith("transformer.") for key in tensors)
    with safe_open(str(whole.last_checkpoint), "pt") as handle:
        saved = json_module.loads(handle.metadata()["lora_adapter_metadata"])
    assert saved["transformer.peft_type"] == "LOKR" and saved["transformer.r"] == 4

    halted = run(config(), shared_workspace, tmp_path / "halted", stop_after=3)
    assert halted.status == "stopped" and halted.step == 3
    resumed = run(config(), shared_workspace, tmp_path / "halted", resume=True)
    assert resumed.step == 6
    again = load_file(str(resumed.last_checkpoint))
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)

    loaded = PipelineCache().get(resolve("tiny-flux", shared_workspace))
    request = TextToImage("blkstyle, a drawing", seed=1, width=64, height=64, steps=2)
    base = np.asarray(generate(loaded, request)).astype(int)
    set_loras(loaded, [(whole.last_checkpoint, 1.0)])
    trained = np.asarray(generate(loaded, request)).astype(int)
    set_loras(loaded, [(whole.last_checkpoint, 0.0)])
    at_zero = np.asarray(generate(loaded, request)).astype(int)
    assert np.abs(trained - base).mean() > 0.5, np.abs(trained - base).mean()
    assert np.array_equal(at_zero, base)
    set_loras(loaded, [])
    assert np.array_equal(np.asarray(generate(loaded, request)).astype(int), base)


def test_lokr_factor_reaches_peft_and_is_checked():
    from pydantic import ValidationError

    from blk.train.adapters import peft_config

    config = TrainConfig.model_validate({"adapter": {"kind": "lokr", "factor": 8, "init_from": "style.safetensors"}})
    assert peft_config(config.adapter).decompose_factor == 8
    with pytest.raises(ValidationError, match="adapter.factor"):
        TrainConfig.model_validate({"adapter": {"kind": "lokr", "factor": 0}})


def test_step_chooser_shows_a_steps_samples_and_checkpoint(workspace):
    """The Train tab's step chooser: steps with samples or checkpoints, each step's samples, its checkpoint
    file, or a note that it was pruned; a range dragged on the loss plot picks the nearest step."""
    from blk.train.config import save_config
    from ui.context import StudioContext
    from ui.tabs import train

    folder = workspace.runs / "r"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "samples").mkdir()
    config = TrainConfig()
    config.checkpoints.keep = 1
    save_config(config, folder / "config.yaml")
    log = EventLog(folder / "events.jsonl")
    for step in (0, 5, 10):
        paths = [f"samples/step-{step:06d}-{i}.png" for i in range(2)]
        for path in paths:
            Image.new("RGB", (8, 8)).save(folder / path)
        log.write("sample", step, paths=paths, prompts=["a cube", "a cloud"])
        if step:
            (folder / "checkpoints" / f"step-{step:06d}.safetensors").write_bytes(b"x")
            log.write("checkpoint", step, path=f"checkpoints/step-{step:06d}.safetensors")
    (folder / "checkpoints" / "step-000005.safetensors").unlink()  # pruned: only the newest is kept

    context = StudioContext(workspace, demo=True, demo_reason="test")
    update, choices = train.step_choices(context, "r", None)
    assert choices == [("step 0 · samples", 0), ("step 5 · samples · checkpoint pruned", 5),
                       ("step 10 · samples · checkpoint", 10)]
    assert train.step_choices(context, "r", choices)[1] == choices  # unchanged: nothing sent
    samples, text = train.show_step(context, "r", 10)
    assert [label for _, label in samples] == ["step 10: a cube", "step 10: a cloud"]
    assert text == f"Checkpoint of step 10: `{folder / 'checkpoints' / 'step-000010.safetensors'}`"
    samples, text = train.show_step(context, "r", 5)
    assert samples[0][0].endswith("step-000005-0.png") and "was pruned (only the newest 1 are kept" in text
    assert train.show_step(context, "r", 0)[1] == "No checkpoint was saved at step 0."
    assert train.show_step(context, "r", None) == ([], "")
    assert train.step_near(choices, [6.5, 9.0]) == 10 and train.step_near(choices, [0.0, 4.0]) == 0
    assert train.step_near([], [1, 2]) is None


def test_the_ema_warms_up_so_early_checkpoints_are_not_pulled_back_to_the_start():
    """A fixed decay of 0.99 from step 1 kept 0.99^t of the adapter's starting weights in the average: 37 % in a
    100-step run. The decay now warms up as diffusers' EMAModel does, (1 + t) / (10 + t) up to the setting."""
    from blk.train.runner import Ema

    layer = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(layer.weight)  # the starting weights (a LoRA's B starts at zero)
    ema = Ema(layer, 0.99)
    assert [round(ema.decay_at(t), 4) for t in (0, 1, 10, 890, 5000)] == [0.1, 0.1818, 0.55, 0.99, 0.99]
    with torch.no_grad():
        layer.weight.fill_(1.0)  # trained to 1 in its first step, then kept there
    for step in range(100):
        ema.update(step)
    left_of_start = 1 - float(ema.shadow["weight"][0, 0])
    assert left_of_start < 0.01, left_of_start  # was 0.99 ** 100 = 0.37
