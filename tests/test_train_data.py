"""Curriculum stages and the alpha loss mask, through the real runner on the tiny models."""

import numpy as np
import pytest
import torch
from PIL import Image

from blk.errors import UserError
from blk.train.config import TrainConfig, load_config
from blk.train.runner import EventLog, run


def noise_images(folder, names, seed, rgba=False, size=(64, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        array = rng.integers(0, 255, (size[1], size[0], 4 if rgba else 3), dtype=np.uint8)
        if rgba:
            array[:, :, 3] = 255
            array[:, : size[0] // 2, 3] = 0  # the left half is transparent
        Image.fromarray(array).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"blkstyle, {name}")
    return folder


def tiny(dataset, steps, **data) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "data", "model": {"name": "tiny-flux"},
        "data": {"dataset": str(dataset), "resolutions": [64], **data},
        "adapter": {"rank": 4, "alpha": 4}, "optimizer": {"name": "adamw", "lr": 2e-3},
        "schedule": {"steps": steps, "seed": 5}, "checkpoints": {"every": 2, "keep": 8}})


# curriculum stages ----------------------------------------------------------------------------------

def test_stage_mistakes_are_one_sentence():
    def error(stages):
        with pytest.raises(UserError) as caught:
            from blk.yaml_io import first_error
            from pydantic import ValidationError

            try:
                TrainConfig.model_validate({"data": {"stages": stages}})
            except ValidationError as exc:
                raise UserError(first_error(exc)) from None
        message = str(caught.value)
        assert message.count(". ") == 0 and message.endswith("."), message
        return message

    assert "first stage must start at step 0" in error([{"start": 10}])
    assert "in order" in error([{"start": 0}, {"start": 50}, {"start": 50}])
    assert "in order" in error([{"start": 0}, {"start": 60}, {"start": 50}])
    assert "add up to 0.9" in error([{"start": 0, "sources": [{"folder": "a", "fraction": 0.5},
                                                              {"folder": "b", "fraction": 0.4}]}])
    assert "leaving nothing" in error([{"start": 0, "sources": [{"folder": "a", "fraction": 1.0}, {"folder": "b"}]}])
    assert "same folder twice" in error([{"start": 0, "sources": [{"folder": "a"}, {"folder": "a"}]}])
    ok = TrainConfig.model_validate({"data": {"stages": [
        {"start": 0, "sources": [{"folder": "singles"}]},
        {"start": 100, "sources": [{"folder": "singles"}, {"folder": "pairs", "fraction": 0.4}]}]}})
    assert ok.data.stages[1].fractions() == pytest.approx([0.6, 0.4])


def test_sampler_gives_exact_fractions_and_resumes_anywhere():
    from blk.train.data import Curriculum, Item, StagePlan

    def items(prefix, n):
        return [Item(f"{prefix}/{i}.png", f"{prefix}{i}", "c", 64, 64) for i in range(n)]

    singles, pairs, triples = items("singles", 5), items("pairs", 3), items("triples", 2)
    plans = [StagePlan(0, "a", ["singles"], [singles], [1.0]),
             StagePlan(20, "b", ["singles", "pairs"], [singles, pairs], [0.6, 0.4]),
             StagePlan(70, "c", ["singles", "pairs", "triples"], [singles, pairs, triples], [0.4, 0.4, 0.2])]
    whole = Curriculum(plans, seed=1, accumulation=1, batch_size=1)
    drawn = [whole.batch(step, 0)[0].image.split("/")[0] for step in range(120)]
    assert set(drawn[:20]) == {"singles"}
    assert drawn[20:70].count("pairs") == 20 and drawn[20:70].count("singles") == 30
    assert (drawn[70:120].count("singles"), drawn[70:120].count("pairs"), drawn[70:120].count("triples")) == (20, 20, 10)
    first_epoch = [whole.batch(step, 0)[0].image for step in range(5)]
    assert sorted(first_epoch) == sorted(i.image for i in singles)  # each source walks its own epochs
    resumed = Curriculum(plans, seed=1, accumulation=1, batch_size=1)  # a fresh process at step 83
    assert [resumed.batch(step, 0)[0] for step in range(83, 120)] == [whole.batch(step, 0)[0] for step in range(83, 120)]


def test_a_batch_is_whole_and_of_one_size_and_an_epoch_trains_every_item():
    """A batch of 4 drew 4 items and kept those of the first one's size: on a dataset of several sizes most
    batches held one or two items and most of the dataset went untrained each epoch."""
    from blk.train.config import TrainConfig
    from blk.train.data import Curriculum, Item, StagePlan, batch_count
    from blk.train.runner import _batch

    items = [Item(f"{w}x{h}/{i}.png", f"{w}{h}{i}", "c", w, h)
             for w, h, n in ((64, 64, 5), (64, 96, 7), (96, 64, 2)) for i in range(n)]
    config = TrainConfig.model_validate({"schedule": {"batch_size": 4, "seed": 3}})
    assert batch_count(items, 4) == 2 + 2 + 1
    for epoch in range(3):
        batches = [_batch(items, config, epoch * 5 + k, 4) for k in range(5)]
        assert all(len({(i.width, i.height) for i in batch}) == 1 for batch in batches)
        assert sorted(len(batch) for batch in batches) == [1, 2, 3, 4, 4]  # 5 = 4 + 1, 7 = 4 + 3, 2
        assert sorted(i.image for batch in batches for i in batch) == sorted(i.image for i in items)
    epochs = [[[i.image for i in _batch(items, config, e * 5 + k, 4)] for k in range(5)] for e in range(2)]
    assert epochs[0] != epochs[1]  # each epoch its own order
    # a curriculum's source likewise: whole batches of one size, every item of the source once an epoch
    staged = Curriculum([StagePlan(0, "a", ["all"], [items], [1.0])], seed=3, accumulation=1, batch_size=4)
    batches = [staged.batch(step, 0) for step in range(5)]
    assert all(len({(i.width, i.height) for i in batch}) == 1 for batch in batches)
    assert sorted(i.image for batch in batches for i in batch) == sorted(i.image for i in items)


@pytest.fixture(scope="module")
def staged_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    noise_images(root / "ds" / "singles", ["cube", "cloud", "star"], seed=1)
    noise_images(root / "ds" / "pairs", ["two-cubes", "cube-and-cloud"], seed=2)
    noise_images(root / "extras", ["grain"], seed=3)
    return root


def staged_config(root, steps):
    config = tiny(root / "ds", steps, stages=[
        {"start": 0, "name": "singles", "sources": [{"folder": "singles"}]},
        {"start": 2, "name": "+ pairs", "sources": [{"folder": "singles"}, {"folder": "pairs", "fraction": 0.5}]},
        {"start": 4, "name": "+ extras", "sources": [{"folder": "singles", "fraction": 0.25}, {"folder": "pairs"},
                                                      {"folder": str(root / "extras"), "fraction": 0.5}]}])
    return config


def test_runner_follows_the_stages_and_resume_lands_in_the_right_one(staged_dataset, shared_workspace, tmp_path):
    from safetensors.torch import load_file

    whole = run(staged_config(staged_dataset, 6), shared_workspace, tmp_path / "whole")
    events = EventLog(tmp_path / "whole" / "events.jsonl").read()
    stages = [(e["step"], e["stage"], e["name"]) for e in events if e["kind"] == "stage"]
    assert stages == [(0, 1, "singles"), (2, 2, "+ pairs"), (4, 3, "+ extras")]
    used = {e["step"]: e["images"][0].split("/")[0] for e in events if e["kind"] == "loss"}
    assert used[1] == used[2] == "singles"
    assert sorted([used[3], used[4]]) == ["pairs", "singles"]  # half and half
    assert "grain.png" in [used[5], used[6]]  # the extra folder's image, half of stage 3
    assert [e for e in events if e["kind"] == "status"][0]["images"] == 6

    halted = run(staged_config(staged_dataset, 6), shared_workspace, tmp_path / "halted", stop_after=3)
    assert halted.step == 3
    resumed = run(staged_config(staged_dataset, 6), shared_workspace, tmp_path / "halted", resume=True)
    again = EventLog(tmp_path / "halted" / "events.jsonl").read()
    assert [(e["step"], e["stage"]) for e in again if e["kind"] == "stage"] == [(0, 1), (2, 2), (3, 2), (4, 3)]
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same draws after the resume as without it

    missing = staged_config(staged_dataset, 6)
    missing.data.stages[1].sources[1].folder = "triples"
    with pytest.raises(UserError) as refused:  # it said "triples is not a folder (nor a dataset in …)"
        run(missing, shared_workspace, tmp_path / "missing")
    assert str(refused.value) == ("+ pairs draws from triples, which is neither a sub-folder of ds nor a dataset of its "
                                  "own; this curriculum expects ds to hold the folders singles/, triples/ and "
                                  "pairs/, or change the stages' folders.")
    (staged_dataset / "ds" / "empty").mkdir(exist_ok=True)
    missing.data.stages[1].sources[1].folder = "empty"
    with pytest.raises(UserError, match=r"\+ pairs draws from empty, which has no training images"):
        run(missing, shared_workspace, tmp_path / "missing")


def test_stage_starts_scale_with_the_step_count():
    from pathlib import Path

    stencil = load_config(Path("presets/stencil-flux-layerdiffuse.yaml"))
    starts = lambda config: [stage.start for stage in config.data.stages]  # noqa: E731
    assert starts(stencil.with_steps(1500)) == [0, 500, 1000] and stencil.with_steps(1500).schedule.steps == 1500
    assert starts(stencil.with_steps(12)) == [0, 4, 8]
    assert starts(stencil.with_steps(12000)) == [0, 4000, 8000]
    assert starts(stencil.with_steps(6000)) == [0, 2000, 4000] and stencil.schedule.steps == 6000  # a copy
    assert [s.name for s in stencil.with_steps(12).data.stages] == ["singles", "+ pairs", "+ triples"]
    assert stencil.with_steps(12).unreachable_stages() == []
    tight = stencil.with_steps(2)  # too few steps for three stages: kept in order, the last never starts
    assert starts(tight) == [0, 1, 2]
    assert tight.unreachable_stages() == ["stage 3 (+ triples) starts at step 2 but the run ends at step 2, "
                                          "so it never starts"]
    plain = TrainConfig()
    assert plain.with_steps(10).schedule.steps == 10 and plain.with_steps(10).data.stages == []
    texture = load_config(Path("presets/texture-flux.yaml"))  # 500 warmup steps of 10000
    assert texture.with_steps(60).schedule.warmup_steps == 3 and texture.with_steps(10).schedule.warmup_steps == 1
    assert texture.with_steps(10000).schedule.warmup_steps == 500 and stencil.with_steps(60).schedule.warmup_steps == 0


def test_a_shorter_run_says_its_warmup_was_scaled(workspace):
    from ui.context import StudioContext
    from ui.tabs import train

    noise_images(workspace.datasets / "tex", ["a"], seed=2)
    context = StudioContext(workspace, demo=True, demo_reason="test")
    form = list(train.form_from_preset(context, "texture-flux"))
    config = train.config_from_form(context, "texture-flux", "tex", *form)
    assert (config.schedule.steps, config.schedule.warmup_steps) == (60, 3)  # demo: not 500 warmup steps of 60
    assert train.stages_note("texture-flux", config) == (" The warmup was scaled with the run: 3 of 60 steps "
                                                         "(the preset's 500 of 10000).")


def test_train_form_scales_the_preset_stages_and_says_so(workspace):
    from ui.context import StudioContext
    from ui.tabs import train

    noise_images(workspace.datasets / "assets" / "singles", ["cube"], seed=1)
    context = StudioContext(workspace, demo=True, demo_reason="test")
    form = list(train.form_from_preset(context, "stencil-flux-layerdiffuse"))
    assert form[6] == train.DEMO_STEPS == 60  # demo mode: a run a CPU finishes, the stages scaled with it
    assert (form[9], form[10]) == (10, 10)  # samples and checkpoints every 250 of 6000 → at least every 10
    config = train.config_from_form(context, "stencil-flux-layerdiffuse", "assets", *form)
    assert [s.start for s in config.data.stages] == [0, 20, 40]
    assert "scaled to 60 steps" in train.stages_note("stencil-flux-layerdiffuse", config)
    form[6] = 6000
    config = train.config_from_form(context, "stencil-flux-layerdiffuse", "assets", *form)
    assert [s.start for s in config.data.stages] == [0, 2000, 4000]
    assert train.stages_note("stencil-flux-layerdiffuse", config) == ""
    form[6] = 300
    config = train.config_from_form(context, "stencil-flux-layerdiffuse", "assets", *form)
    assert config.schedule.steps == 300 and [s.start for s in config.data.stages] == [0, 100, 200]
    note = train.stages_note("stencil-flux-layerdiffuse", config)
    assert "scaled to 300 steps" in note and "0, 100, 200" in note and "0, 2000, 4000 of 6000" in note


def test_cli_steps_scale_the_stages_and_a_stage_past_the_end_is_warned_once(staged_dataset, shared_workspace,
                                                                          tmp_path):
    """`--steps` on a new run scales the curriculum's stage starts as the Train tab's Steps does (0/2/4 of 6 →
    0/1/2 of 3); a config whose stage starts after its last step still trains, with one warning for that stage."""
    import json

    from blk.train.config import load_config
    from tests.conftest import run_blk

    preset = tmp_path / "p.yaml"
    preset.write_text(json.dumps(staged_config(staged_dataset, 6).model_dump(mode="json")))  # stages at 0, 2, 4
    done = run_blk("--workspace", str(shared_workspace.root), "train", str(preset), "--run-dir", str(tmp_path / "r"),
                   "--steps", "3")
    assert done.returncode == 0 and "finished at step 3" in done.stdout, done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert [stage.start for stage in load_config(tmp_path / "r" / "config.yaml").data.stages] == [0, 1, 2]

    short = staged_config(staged_dataset, 6).model_dump(mode="json")
    short["schedule"]["steps"] = 3  # written so: the third stage never starts
    preset.write_text(json.dumps(short))
    done = run_blk("--workspace", str(shared_workspace.root), "train", str(preset), "--run-dir", str(tmp_path / "s"))
    assert done.returncode == 0 and "finished at step 3" in done.stdout, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: stage 3 (+ extras) starts at step 4 but the run ends at step 3, so it never starts."]


# alpha mask -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rgba_dataset(tmp_path_factory):
    return noise_images(tmp_path_factory.mktemp("rgba") / "ds", ["a", "b"], seed=4, rgba=True)


def test_sdxl_trains_for_the_models_own_target_unless_told(shared_workspace):
    """A v-prediction SDXL fine-tune (its scheduler says so) trained for noise by default: the wrong target. The
    schedule's `prediction` now defaults to the model's own; set, it wins."""
    from diffusers import EulerDiscreteScheduler

    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.config import ScheduleSection
    from blk.train.families import SDXLFamily

    pipe = load_pipeline(resolve("tiny-sdxl", shared_workspace), "text2img", "cpu", MemoryOptions())
    assert ScheduleSection().prediction is None
    assert SDXLFamily(pipe).noise_scheduler.config.prediction_type == "epsilon"  # the tiny model's own
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    assert SDXLFamily(pipe).noise_scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # the model's own: left as it is
    # set because the model's config says it wrong: the samples are drawn for that target too
    assert SDXLFamily(pipe, "epsilon").noise_scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.prediction_type == "epsilon" and isinstance(pipe.scheduler, EulerDiscreteScheduler)


def test_repeats_with_curriculum_stages_is_one_sentence():
    """Stages draw by their fractions, so repeats did nothing there, without a word."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="data.repeats has no effect with curriculum stages"):
        TrainConfig.model_validate({"data": {"repeats": 3, "stages": [{"start": 0}]}})
    assert TrainConfig.model_validate({"data": {"repeats": 3}}).data.repeats == 3


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sdxl"])
def test_masked_loss_counts_only_opaque_latents(model, shared_workspace):
    """Value test of the weighting on real predictions: the masked loss is the plain mean over the opaque half."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.families import FluxFamily, SDXLFamily, token_grid

    resolved = resolve(model, shared_workspace)
    pipe = load_pipeline(resolved, "text2img", "cpu", MemoryOptions())
    family = FluxFamily(pipe) if resolved.family == "flux" else SDXLFamily(pipe)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        params = family.encode_image(pixels)
        text = {k: v[None] for k, v in family.encode_text("blkstyle, a cube").items()}
        mask = torch.ones(1, 1, 8, 8)
        mask[..., :4] = 0
        prediction, target = family.prediction_and_target(params, text, torch.Generator().manual_seed(7))
        expected = ((prediction - target) ** 2)[..., 4:].mean()
        masked = family.loss(params, text, torch.Generator().manual_seed(7), mask)
        plain = family.loss(params, text, torch.Generator().manual_seed(7))
        ones = family.loss(params, text, torch.Generator().manual_seed(7), torch.ones(1, 1, 8, 8))
    assert masked.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-5)
    assert abs(masked.item() - plain.item()) > 1e-4
    one_column = torch.ones(1, 1, 8, 8)
    one_column[..., 0] = 0  # Flux weighs whole 2×2 tokens: half the first token column is transparent
    assert token_grid(one_column)[0, 0, 0].tolist() == [0.5, 0.5, 1, 1, 1, 1, 1, 1]


def test_alpha_mask_is_cached_on_the_latent_grid_and_changes_the_loss(rgba_dataset, shared_workspace, tmp_path):
    from blk.models.registry import resolve
    from blk.train.cache import TensorCache, model_key
    from blk.train.data import load_items

    plain = run(tiny(rgba_dataset, 2, flip=True), shared_workspace, tmp_path / "plain")
    masked = run(tiny(rgba_dataset, 2, flip=True, alpha_mask=True), shared_workspace, tmp_path / "masked")
    assert plain.latent_encodes > 0 and masked.latent_encodes > 0  # the mask is part of the cache key
    again = run(tiny(rgba_dataset, 2, flip=True, alpha_mask=True), shared_workspace, tmp_path / "again")
    assert again.latent_encodes == 0

    def losses(name):
        return [e["loss"] for e in EventLog(tmp_path / name / "events.jsonl").read() if e["kind"] == "loss"]

    assert losses("masked") != losses("plain")  # same seeds, draws and images: only the weighting differs
    assert losses("masked") == losses("again")

    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.train.families import FluxFamily
    from blk.train.config import DataSection
    from blk.train.runner import LatentSource

    model = resolve("tiny-flux", shared_workspace)
    family = FluxFamily(load_pipeline(model, "text2img", "cpu", MemoryOptions()))
    cache = TensorCache(rgba_dataset / ".blk" / "cache" / model_key(model.path) / "latents")
    latent_for = LatentSource(family, cache, rgba_dataset, model.path, DataSection(alpha_mask=True))
    for item in load_items(rgba_dataset, [64], True):
        entry = latent_for(item)
        mask = entry["mask"][0, 0]
        assert tuple(mask.shape) == (8, 8) == tuple(entry["params"].shape[-2:])
        opaque = mask[:, 4:] if not item.flip else mask[:, :4]
        clear = mask[:, :4] if not item.flip else mask[:, 4:]
        assert torch.all(opaque == 1) and torch.all(clear == 0)


# the Stencil preset: curriculum + alpha mask + the frozen LayerDiffuse layer LoRA -----------------------

def test_stencil_preset_trains_on_top_of_the_frozen_layer_lora(tmp_path, shared_workspace):
    from pathlib import Path

    from safetensors.torch import load_file

    from blk.models.registry import resolve
    from blk.stencil.layerdiffuse import find_weights

    dataset = tmp_path / "assets"
    noise_images(dataset / "singles", ["cube", "cloud"], seed=6, rgba=True)
    noise_images(dataset / "pairs", ["two-cubes"], seed=7, rgba=True)
    noise_images(dataset / "triples", ["three-cubes"], seed=8, rgba=True)

    def config(base_loras):
        c = load_config(Path("presets/stencil-flux-layerdiffuse.yaml"))
        c.model.name, c.model.int8_base, c.model.base_loras = "tiny-flux", False, base_loras
        c.data.dataset, c.data.resolutions = str(dataset), [64]
        for stage, start in zip(c.data.stages, (0, 2, 3)):
            stage.start = start
        c.schedule.steps, c.sampling.every, c.checkpoints.every = 4, 0, 4
        return c

    layered = run(config(["layerdiffuse"]), shared_workspace, tmp_path / "layered")
    plain = run(config([]), shared_workspace, tmp_path / "plain")
    events = EventLog(tmp_path / "layered" / "events.jsonl").read()
    assert [e["name"] for e in events if e["kind"] == "stage"] == ["singles", "+ pairs", "+ triples"]
    a, b = load_file(str(layered.last_checkpoint)), load_file(str(plain.last_checkpoint))
    assert a.keys() == b.keys() and all("base_" not in k for k in a)  # only the style LoRA is saved
    loss = {name: [e["loss"] for e in EventLog(tmp_path / name / "events.jsonl").read() if e["kind"] == "loss"]
            for name in ("layered", "plain")}
    assert loss["layered"][0] != loss["plain"][0]  # the layer LoRA is active under the trainable adapter
    trained = {name: torch.load(tmp_path / name / "state" / "optimizer.pt", weights_only=True)["param_groups"][0]["params"]
               for name in ("layered", "plain")}
    assert len(trained["layered"]) == len(trained["plain"]) > 0  # the layer LoRA stays frozen

    layer = load_file(str(find_weights(shared_workspace, resolve("tiny-flux", shared_workspace)).lora))
    assert layer  # untouched on disk; and the same file given by path works the same way
    run(config([str(find_weights(shared_workspace, resolve("tiny-flux", shared_workspace)).lora)]),
        shared_workspace, tmp_path / "by-path")
    assert [e["loss"] for e in EventLog(tmp_path / "by-path" / "events.jsonl").read() if e["kind"] == "loss"] == \
        loss["layered"]
    bad = config([str(tmp_path / "nowhere.safetensors")])
    with pytest.raises(UserError, match=r"There is no LoRA file at .*nowhere\.safetensors \(model\.base_loras\)"):
        run(bad, shared_workspace, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made


# a LoRA from elsewhere as the starting point ------------------------------------------------------------

def kohya_file(shared_workspace, path, rank=4, alpha=2.0):
    """A kohya-format SDXL LoRA (lora_unet_…, .lora_down/.lora_up/.alpha) built from a peft state dict of the tiny UNet."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve

    pipe = load_pipeline(resolve("tiny-sdxl", shared_workspace), "text2img", "cpu", MemoryOptions())
    torch.manual_seed(11)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    peft_state = get_peft_model_state_dict(pipe.unet)
    kohya = {}
    for key, value in peft_state.items():
        module, part = key.rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value.contiguous()
        kohya[f"{stem}.alpha"] = torch.tensor(alpha)
    save_file(kohya, str(path))
    return peft_state


def test_training_starts_from_a_kohya_lora(tmp_path, shared_workspace):
    from safetensors.torch import load_file

    dataset = noise_images(tmp_path / "ds", ["a", "b"], seed=9)
    expected = kohya_file(shared_workspace, tmp_path / "kohya.safetensors", rank=4, alpha=2.0)
    config = tiny(dataset, 1)
    config.model.name, config.optimizer.lr = "tiny-sdxl", 1e-12  # one step that moves nothing measurable
    config.adapter.init_from = str(tmp_path / "kohya.safetensors")
    run(config, shared_workspace, tmp_path / "run")
    started = load_file(str(tmp_path / "run" / "state" / "adapter.safetensors"))
    assert started.keys() == expected.keys()
    for key, value in expected.items():
        want = value if ".lora_A." in key else value * (2.0 / 4) / (4 / 4)  # kohya's alpha/rank folded into B
        assert torch.allclose(started[key], want, atol=1e-6), key

    # a run started from the file resumes after the file has moved: the saved state holds the weights
    config.schedule.steps, config.checkpoints.every = 4, 2
    whole = run(config, shared_workspace, tmp_path / "whole")
    assert run(config, shared_workspace, tmp_path / "halted", stop_after=2).step == 2
    (tmp_path / "kohya.safetensors").rename(tmp_path / "moved.safetensors")
    resumed = run(config, shared_workspace, tmp_path / "halted", resume=True)
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert resumed.step == 4 and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "moved.safetensors").rename(tmp_path / "kohya.safetensors")

    config.adapter.rank = 8
    with pytest.raises(UserError, match="has rank 4 but this adapter has rank 8; set the rank to 4"):
        run(config, shared_workspace, tmp_path / "rank")
    config.adapter.rank, config.model.name = 4, "tiny-flux"
    with pytest.raises(UserError, match="kohya.safetensors"):
        run(config, shared_workspace, tmp_path / "family")


def test_training_starts_from_a_diffusers_lora(trained_run, tmp_path, shared_workspace):
    """Our own checkpoints (and ai-toolkit's, which use the same diffusers names) continue where they ended."""
    from safetensors.torch import load_file

    checkpoint = trained_run / "checkpoints" / "step-000012.safetensors"
    dataset = noise_images(tmp_path / "ds", ["a", "b"], seed=9)
    config = tiny(dataset, 1)
    config.optimizer.lr, config.adapter.init_from = 1e-12, str(checkpoint)
    run(config, shared_workspace, tmp_path / "run")
    started = load_file(str(tmp_path / "run" / "state" / "adapter.safetensors"))
    published = {k.removeprefix("transformer."): v for k, v in load_file(str(checkpoint)).items()}
    assert started.keys() == published.keys()
    assert all(torch.allclose(started[k], published[k], atol=1e-6) for k in published)


def test_out_of_memory_names_what_to_try():
    from blk.train.runner import out_of_memory_sentence

    heavy = TrainConfig.model_validate({"data": {"resolutions": [512, 1024]}, "schedule": {"batch_size": 2}})
    sentence = out_of_memory_sentence(heavy, 41)
    assert sentence.startswith("Out of memory at step 42: try an int8 base")
    assert all(tip in sentence for tip in ("gradient checkpointing", "smaller bucket sizes", "batch size 1"))
    lean = TrainConfig.model_validate({"model": {"int8_base": True, "gradient_checkpointing": True},
                                       "data": {"resolutions": [512]}})
    assert "try a lower rank;" in out_of_memory_sentence(lean, 0)
    # free token shuffling keeps the text encoders beside the denoiser: fixed orders let them leave
    shuffled = TrainConfig.model_validate({"model": {"int8_base": True, "gradient_checkpointing": True},
                                           "data": {"resolutions": [512], "shuffle_tokens": True}})
    assert "try fixed token-shuffle orders (data.shuffle_orders 8);" in out_of_memory_sentence(shuffled, 0)
    shuffled.data.shuffle_orders = 8
    assert "try a lower rank;" in out_of_memory_sentence(shuffled, 0)


def test_out_of_memory_says_which_checkpoint_is_kept_or_that_none_is(tmp_path):
    """"the last checkpoint is kept and the run can resume" was said with no checkpoint there."""
    from blk.train.runner import out_of_memory_sentence

    config = TrainConfig()
    (tmp_path / "checkpoints").mkdir()
    assert out_of_memory_sentence(config, 4, tmp_path).endswith(
        "; no checkpoint was saved yet, so resuming it starts again from step 1.")
    for step in (250, 500):
        (tmp_path / "checkpoints" / f"step-{step:06d}.safetensors").write_bytes(b"")
    assert out_of_memory_sentence(config, 510, tmp_path).startswith("Out of memory at step 511: try ")
    assert out_of_memory_sentence(config, 510, tmp_path).endswith(
        "; the last checkpoint (step 500) is kept and the run can resume from it.")


def test_monitor_shows_stage_and_gpu_memory(tmp_path):
    from blk.train.monitor import view_run

    log = EventLog(tmp_path / "events.jsonl")
    log.write("stage", 0, stage=1, name="singles", sources={"singles": 1.0})
    log.write("loss", 1, loss=0.5, lr=1e-4, gpu_memory=3 * 2**30)
    log.write("stage", 1, stage=2, name="+ pairs", sources={"singles": 0.6, "pairs": 0.4})
    log.write("loss", 2, loss=0.4, lr=1e-4, gpu_memory=5 * 2**30)
    view = view_run(tmp_path, 10)
    assert view.stage == "stage 2 (+ pairs)" and view.gpu_memory == 5 * 2**30


# caption augmentation and buckets -------------------------------------------------------------------------

def test_token_shuffling_keeps_the_first_tokens_in_place():
    import random

    from blk.train.data import augment_caption

    caption = "blkstyle, ink drawing, a cat, a hat, a bat, a mat, a rat"
    parts = caption.split(", ")
    seen = set()
    for seed in range(40):
        shuffled = augment_caption(caption, random.Random(seed), 0.0, True, 2).split(", ")
        assert shuffled[:2] == ["blkstyle", "ink drawing"] and sorted(shuffled) == sorted(parts)
        seen.add(tuple(shuffled[2:]))
    assert len(seen) > 20  # the rest really is shuffled
    firsts = {augment_caption(caption, random.Random(seed), 0.0, True, 0).split(", ")[0] for seed in range(40)}
    assert len(firsts) > 1  # keep 0: nothing is pinned
    assert augment_caption(caption, random.Random(1), 0.0, False, 2) == caption  # off: untouched
    assert augment_caption("a, , b", random.Random(1), 0.0, True, 1) == "a, b"  # empty parts go


def test_shuffle_orders_are_fixed_per_caption_and_keep_the_trigger():
    import random

    from blk.train.data import augment_caption, shuffled_orders

    caption = "blkstyle, ink drawing, a cat, a hat, a bat, a mat"
    orders = shuffled_orders(caption, 8, 1)
    assert len(orders) == len(set(orders)) == 8 and orders[0] == caption  # the caption as written comes first
    assert all(o.split(", ")[0] == "blkstyle" and sorted(o.split(", ")) == sorted(caption.split(", ")) for o in orders)
    assert shuffled_orders(caption, 8, 1) == orders  # every run, resume and seed: the same orders (one cache)
    few = shuffled_orders("blkstyle, a cat, a hat", 8, 1)  # two parts after the trigger: two orders
    assert few == ["blkstyle, a cat, a hat", "blkstyle, a hat, a cat"]
    picked = {augment_caption(caption, random.Random(seed), 0.0, True, 1, orders) for seed in range(60)}
    assert picked == set(orders)  # shuffling picks among them, nothing else
    assert augment_caption(caption, random.Random(1), 0.0, False, 1, orders) == caption  # shuffling off
    # the caption as written counts once, however it is spaced: two orders of "a" and "b", not that one twice
    assert shuffled_orders("trig,a ,b", 3, 1) == ["trig,a ,b", "trig, b, a"]
    with pytest.raises(ValueError, match="0 .a new order every step. or at least 2"):
        TrainConfig.model_validate({"data": {"shuffle_tokens": True, "shuffle_orders": 1}})


def test_each_micro_batch_of_a_step_draws_its_own_captions():
    """Caption seeds were seed·7919 + step·13 + micro: micro-batch 13 of a step drew what micro-batch 0 of the
    next did (8 GPUs × accumulation 2 has 16)."""
    from blk.train.runner import micro_seed

    seeds = {micro_seed("caption", 5, step, micro) for step in range(50) for micro in range(32)}
    assert len(seeds) == 50 * 32
    assert micro_seed("caption", 5, 3, 1) != micro_seed("dropout", 5, 3, 1)


def test_caption_dropout_empties_captions_at_its_rate_reproducibly():
    import random

    from blk.train.data import augment_caption

    def dropped(seed, rate, shuffle=False, n=2000):
        rng = random.Random(seed)
        return [augment_caption("blkstyle, a cat, a hat", rng, rate, shuffle, 1) == "" for _ in range(n)]

    first = dropped(7, 0.25)
    assert first == dropped(7, 0.25)  # the same seed drops the same captions
    assert first != dropped(8, 0.25)
    assert 0.22 < sum(first) / len(first) < 0.28
    assert 0.07 < sum(dropped(3, 0.1, shuffle=True)) / 2000 < 0.13  # with shuffling too
    assert not any(dropped(7, 0.0)) and all(dropped(7, 1.0))


def test_buckets_never_upscale():
    import random

    from blk.train.data import MULTIPLE, bucket_size

    sizes = [512, 768, 1024]
    assert bucket_size(1024, 1024, sizes) == (1024, 1024)
    assert bucket_size(2048, 1536, sizes) == (1152, 832)  # the largest area, at its aspect ratio
    assert bucket_size(800, 600, sizes) == (576, 384)  # 768² at 4:3 would be 832 wide: too wide for it
    assert bucket_size(300, 200, sizes) == (256, 192)  # smaller than every bucket: its own size, rounded down
    assert bucket_size(64, 64, sizes) == (64, 64)
    rng = random.Random(0)
    for _ in range(500):
        width, height = rng.randint(64, 2500), rng.randint(64, 2500)
        w, h = bucket_size(width, height, sizes)
        assert MULTIPLE <= w <= width and MULTIPLE <= h <= height and w % MULTIPLE == h % MULTIPLE == 0, (width, height)
    with pytest.raises(ValueError):
        bucket_size(40, 300, sizes)  # fits no bucket without upscaling: `load_items` leaves such images out


def test_multi_resolution_trains_each_image_at_every_area_it_fills(tmp_path):
    """512/768/1024 (the paper's Conceptor, ai-toolkit's meaning): a large image is trained at all three areas, a
    600 px one only at 512², never enlarged; flips multiply each bucket."""
    from blk.train.data import bucket_sizes, load_items

    sizes = [512, 768, 1024]
    assert bucket_sizes(2048, 1536, sizes) == [(1152, 832), (832, 640), (576, 384)]
    assert bucket_sizes(600, 600, sizes) == [(512, 512)]
    assert bucket_sizes(300, 200, sizes) == [(256, 192)]
    assert bucket_sizes(1024, 1024, [1024, 1024]) == [(1024, 1024)]  # an area listed twice is one bucket
    dataset = noise_images(tmp_path / "multi", ["big"], seed=5, size=(800, 800))
    noise_images(dataset, ["small"], seed=6, size=(600, 600))
    items = load_items(dataset, sizes, True)
    by_image = {name: sorted({(i.width, i.height) for i in items if i.image == name}) for name in ("big.png", "small.png")}
    assert by_image == {"big.png": [(512, 512), (768, 768)], "small.png": [(512, 512)]}
    assert len(items) == 2 * 3 and sum(i.flip for i in items) == 3


def test_images_too_small_for_a_bucket_are_left_out_with_a_sentence_each(tmp_path, capsys):
    from blk.train.data import load_items

    dataset = noise_images(tmp_path / "inks", ["a", "b"], seed=1)
    noise_images(dataset, ["thin"], seed=2, size=(40, 100))
    noise_images(dataset, ["speck"], seed=3, size=(30, 30))
    (dataset / "speck.txt").unlink()  # left out for its size: no caption needed
    (dataset / "broken.png").write_bytes((dataset / "a.png").read_bytes()[:60])  # unreadable: said too
    items = load_items(dataset, [512], False)
    assert sorted(i.image for i in items) == ["a.png", "b.png"] and {(i.width, i.height) for i in items} == {(64, 64)}
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("warning: inks/broken.png is left out of training: broken.png ")
    assert lines[1:] == ["warning: inks/speck.png is 30×30 px, smaller than the 64 px a training bucket needs on each "
                     "side, so training leaves it out.",
                     "warning: inks/thin.png is 40×100 px, smaller than the 64 px a training bucket needs on each "
                     "side, so training leaves it out."]

    for name in ("a", "b"):
        (dataset / f"{name}.png").unlink()
    with pytest.raises(UserError) as refused:
        load_items(dataset, [512], False)
    assert str(refused.value) == "inks has no image of at least 64×64 px to train on (2 are smaller)."


def test_the_runner_refuses_a_dataset_of_only_tiny_images(tmp_path, shared_workspace):
    dataset = noise_images(tmp_path / "specks", ["a", "b"], seed=4, size=(48, 48))
    with pytest.raises(UserError, match=r"^specks has no image of at least 64×64 px to train on \(2 are smaller\)\.$"):
        run(tiny(dataset, 1), shared_workspace, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything started


def test_flux_samples_take_cached_texts_of_another_dtype(shared_workspace):
    """Training samples draw from the dataset's text cache, which may have been filled in float32 (a CPU run)
    before a bfloat16 run (a GPU): FluxPipeline does not cast given embeddings, and raised "mat1 and mat2 must
    have the same dtype" at the step-0 sample."""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.families import FluxFamily

    model = resolve("tiny-flux", shared_workspace)
    cached = FluxFamily(load_pipeline(model, "text2img", "cpu", MemoryOptions()))
    with torch.no_grad():
        text = cached.encode_text("blkstyle, a cube")  # float32, as a CPU run caches it
    family = FluxFamily(load_pipeline(model, "text2img", "cpu", MemoryOptions()).to(torch.bfloat16))
    inputs = family.prompt_inputs(text)
    assert {value.dtype for value in inputs.values()} == {torch.bfloat16}
    image = family.pipe(**inputs, width=64, height=64, num_inference_steps=1, output_type="np",
                        generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
