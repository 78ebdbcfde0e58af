"""Train reliability on the tiny models: a checkpoint means its trained strength to every loader, resume is exact
with dropout, every failure leaves an error event, and what is checkpointed, sampled and cached is what it should be."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from blk.errors import UserError
from blk.train.config import TrainConfig
from blk.train.runner import EventLog, run
from tests.conftest import make_noise_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_noise_dataset(tmp_path_factory.mktemp("reliability") / "ds")


def config_for(model: str, dataset, steps: int = 2, **adapter) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": "reliability", "model": {"name": model},
        "data": {"dataset": str(dataset), "resolutions": [64]},
        "adapter": {"rank": 4, "alpha": 4, **adapter},
        "optimizer": {"name": "adamw", "lr": 2e-2},
        "schedule": {"steps": steps, "seed": 5},
        "checkpoints": {"every": steps, "keep": 8},
    })


def events_of(run_dir, kind: str) -> list[dict]:
    return [e for e in EventLog(run_dir / "events.jsonl").read() if e["kind"] == kind]


def fresh_family(workspace, model_name: str):
    """The trainer's own model loading (`_load_family`), without an adapter."""
    from blk.models.registry import resolve
    from blk.train.runner import _load_family

    config = TrainConfig.model_validate({"model": {"name": model_name}})
    return _load_family(config, resolve(model_name, workspace), torch.float32, "cpu")


def deltas(denoiser, adapter: str) -> dict:
    """Each adapted module's weight update for `adapter`, as peft applies it (its alpha/rank scale included)."""
    with torch.no_grad():
        return {name: module.get_delta_weight(adapter).float() for name, module in denoiser.named_modules()
                if isinstance(getattr(module, "scaling", None), dict) and adapter in module.scaling}


def trained_deltas(workspace, config: TrainConfig, run_dir) -> dict:
    """The updates the run trained: its raw saved state (state/adapter.safetensors) in the trainer's own adapter."""
    from peft.utils import set_peft_model_state_dict

    from blk.train.adapters import peft_config

    family = fresh_family(workspace, config.model.name)
    family.denoiser.add_adapter(peft_config(config.adapter), adapter_name="default")
    set_peft_model_state_dict(family.denoiser, load_file(str(run_dir / "state" / "adapter.safetensors")))
    return deltas(family.denoiser, "default")


def comfy_style_deltas(path, prefix: str, modules=()) -> dict:
    """What ComfyUI and Forge apply from a file (comfy/lora.py `load_lora`): up·down for LoRA, kron(w1, w2) for
    LoKr, times alpha/rank only when the file holds a `.alpha` tensor for the module, else 1. They read no
    safetensors metadata, so the tensors alone must mean the trained update. Kohya names (`lora_unet_<module,
    dots as underscores>`, an SDXL LoRA's) are told apart by `modules`, the denoiser's module names."""
    tensors = load_file(str(path))
    kohya = {"lora_unet_" + name.replace(".", "_"): name for name in modules}
    tensors = {key.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B."): value
               for key, value in tensors.items()}
    stems = {key.rsplit(".", 2 if ".lora_" in key else 1)[0] for key in tensors if not key.endswith(".alpha")}
    found = {}
    for stem in stems:
        def part(name):
            if f"{stem}.{name}" in tensors:
                return tensors[f"{stem}.{name}"].float()
            if f"{stem}.{name}_a" in tensors:
                return tensors[f"{stem}.{name}_a"].float() @ tensors[f"{stem}.{name}_b"].float()
            return None

        if f"{stem}.lora_A.weight" in tensors:
            down, up = tensors[f"{stem}.lora_A.weight"].float(), tensors[f"{stem}.lora_B.weight"].float()
            delta, rank = up @ down, down.shape[0]
        else:
            delta = torch.kron(part("lokr_w1"), part("lokr_w2"))
            decomposed = tensors.get(f"{stem}.lokr_w2_b", tensors.get(f"{stem}.lokr_w1_b"))
            rank = decomposed.shape[0] if decomposed is not None else None
        alpha = tensors.get(f"{stem}.alpha")
        scale = float(alpha) / rank if alpha is not None and rank else 1.0
        found[kohya.get(stem, stem.removeprefix(prefix + "."))] = delta * scale
    return found


def assert_same_updates(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys() and expected
    for name, delta in expected.items():
        assert delta.abs().max() > 0, name  # trained: something to lose
        torch.testing.assert_close(found[name], delta, rtol=1e-5, atol=1e-7, msg=name)


@pytest.fixture(scope="module", params=["tiny-flux", "tiny-sdxl"])
def rank4_alpha2(request, dataset, shared_workspace, tmp_path_factory):
    """A rank 4 / alpha 2 LoRA trained 2 steps: its run folder, config and the updates it trained."""
    config = config_for(request.param, dataset, rank=4, alpha=2)
    run_dir = tmp_path_factory.mktemp("alpha") / "run"
    result = run(config, shared_workspace, run_dir)
    assert result.status == "finished"
    return config, run_dir, result.last_checkpoint, trained_deltas(shared_workspace, config, run_dir)


def test_lora_alpha_reaches_diffusers_and_comfyui_style_loaders(rank4_alpha2, shared_workspace):
    """Alpha 2 at rank 4 scales the update by 0.5: a loader that assumed alpha = rank applied it at 1.0."""
    config, _, checkpoint, expected = rank4_alpha2
    family = fresh_family(shared_workspace, config.model.name)
    family.pipe.load_lora_weights(str(checkpoint), adapter_name="file")
    assert_same_updates(deltas(family.denoiser, "file"), expected)

    prefix = "transformer" if family.name == "flux" else "unet"
    assert_same_updates(comfy_style_deltas(checkpoint, prefix, expected), expected)
    with safe_open(str(checkpoint), "pt") as handle:
        header, keys = handle.metadata(), list(handle.keys())
    if family.name == "flux":  # the peft config as diffusers' trainers store it; alpha = rank: the scale is in B
        stored = json.loads(header["lora_adapter_metadata"])
        assert (stored[f"{prefix}.peft_type"], stored[f"{prefix}.r"], stored[f"{prefix}.lora_alpha"]) == ("LORA", 4, 4)
    else:  # kohya names, each module's alpha = its rank, as ComfyUI and Forge read them
        alphas = [load_file(str(checkpoint))[key] for key in keys if key.endswith(".alpha")]
        assert alphas and all(key.startswith("lora_unet_") for key in keys) and {float(a) for a in alphas} == {4.0}


def test_lora_init_from_keeps_the_strength_of_ours_and_of_diffusers_files(rank4_alpha2, shared_workspace, tmp_path):
    """`init_from` starts from exactly the file's update: one of ours (scale folded in), and one saved the way
    diffusers' trainers save (raw weights, alpha 2 only in the metadata)."""
    from blk.models.registry import resolve
    from blk.train.adapters import peft_config
    from blk.train.runner import _add_adapter

    config, run_dir, checkpoint, expected = rank4_alpha2
    family = fresh_family(shared_workspace, config.model.name)
    raw = {k: v for k, v in load_file(str(run_dir / "state" / "adapter.safetensors")).items()}
    layers = {"transformer_lora_layers" if family.name == "flux" else "unet_lora_layers": raw}
    metadata_key = "transformer_lora_adapter_metadata" if family.name == "flux" else "unet_lora_adapter_metadata"
    family.pipe.save_lora_weights(str(tmp_path), safe_serialization=True, **layers,
                                  **{metadata_key: peft_config(config.adapter).to_dict()})
    for source in (checkpoint, tmp_path / "pytorch_lora_weights.safetensors"):
        start = config.model_copy(deep=True)
        start.adapter.init_from, start.adapter.alpha = str(source), 8.0  # another alpha: B is rescaled to match
        family = fresh_family(shared_workspace, config.model.name)
        _add_adapter(family, start, shared_workspace, resolve(config.model.name, shared_workspace))
        assert_same_updates(deltas(family.denoiser, "default"), expected)


def test_lokr_alpha_reaches_diffusers_and_comfyui_style_loaders(dataset, shared_workspace, tmp_path):
    config = config_for("tiny-flux", dataset, kind="lokr", rank=4, alpha=2)
    result = run(config, shared_workspace, tmp_path / "run")
    expected = trained_deltas(shared_workspace, config, tmp_path / "run")
    family = fresh_family(shared_workspace, "tiny-flux")
    family.denoiser.load_lora_adapter(str(result.last_checkpoint), prefix="transformer", adapter_name="file")
    assert_same_updates(deltas(family.denoiser, "file"), expected)
    assert_same_updates(comfy_style_deltas(result.last_checkpoint, "transformer"), expected)


def test_resume_with_adapter_dropout_is_bit_identical(dataset, shared_workspace, tmp_path):
    """Dropout draws from torch's global RNG; it is seeded per (seed, step, micro-batch), so resuming at step 2
    draws the masks the unbroken run drew: the same weights bit for bit on the CPU."""
    def config():
        c = config_for("tiny-flux", dataset, steps=4, dropout=0.3)
        c.checkpoints.every = 2
        return c

    whole = run(config(), shared_workspace, tmp_path / "whole")
    halted = run(config(), shared_workspace, tmp_path / "halted", stop_after=2)
    assert halted.status == "stopped" and halted.step == 2
    resumed = run(config(), shared_workspace, tmp_path / "halted", resume=True)
    assert resumed.step == 4
    kinds = [(e["kind"], e.get("status")) for e in EventLog(tmp_path / "halted" / "events.jsonl").read()
             if e["kind"] in ("launch", "status")]  # the resume's launch comes before its loading, so before "resumed"
    assert kinds == [("status", "started"), ("status", "stopped"), ("launch", None), ("status", "resumed"),
                     ("status", "finished")]
    for name in ("checkpoints/step-000004.safetensors", "state/adapter.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "halted" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # dropout is really on: the same run without it trains other weights
    plain = run(config_for("tiny-flux", dataset, steps=4), shared_workspace, tmp_path / "plain")
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(plain.last_checkpoint))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_kill_between_a_checkpoints_state_and_its_file_trains_nothing_twice(dataset, shared_workspace, tmp_path):
    """A checkpoint saves the state to resume from, then the LoRA file. A kill between the two (here: the file of
    the newest checkpoint removed, as the kill left it) resumes from that state, without training its steps again,
    and writes the missing file, the same weights as the run that never died; the EMA weights too."""
    def config():
        c = config_for("tiny-flux", dataset, steps=6)
        c.checkpoints.every, c.optimizer.ema_decay = 2, 0.9
        return c

    whole = run(config(), shared_workspace, tmp_path / "whole")
    run(config(), shared_workspace, tmp_path / "halted", stop_after=4)
    newest = tmp_path / "halted" / "checkpoints" / "step-000004.safetensors"
    written = load_file(str(newest)), safe_open(str(newest), "pt").metadata()
    newest.unlink()
    resumed = run(config(), shared_workspace, tmp_path / "halted", resume=True)
    assert resumed.step == 6
    # the same tensors and metadata (compared as such: safetensors may order the metadata's keys anew)
    again = load_file(str(newest))
    assert again.keys() == written[0].keys() and all(torch.equal(again[k], written[0][k]) for k in again)
    assert safe_open(str(newest), "pt").metadata() == written[1]
    events = EventLog(tmp_path / "halted" / "events.jsonl").read()
    after = events[max(i for i, e in enumerate(events) if e.get("status") == "resumed"):]
    assert [e["step"] for e in after if e["kind"] == "loss"] == [5, 6]  # from the state's step 4, not 2
    assert [e["step"] for e in after if e["kind"] == "checkpoint"] == [4, 6]
    a, b = load_file(str(whole.last_checkpoint)), load_file(str(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_kill_between_a_checkpoint_file_and_its_event_lists_it_on_resume(dataset, shared_workspace, tmp_path):
    """The file is written, then its event, then older files pruned. A kill after the file left one the Train tab
    did not list (its list comes from the events): the resume lists it, at its step, before training on."""
    from blk.train.monitor import view_run

    def config():
        c = config_for("tiny-flux", dataset, steps=6)
        c.checkpoints.every, c.checkpoints.keep = 2, 2
        return c

    folder = tmp_path / "halted"
    run(config(), shared_workspace, folder, stop_after=4)
    log = folder / "events.jsonl"
    # as the kill left it: step 4's file written, its event not
    kept = [line for line in log.read_text().splitlines()
            if not (json.loads(line)["kind"] == "checkpoint" and json.loads(line)["step"] == 4)]
    log.write_text("\n".join(kept) + "\n")
    assert [s for s, _ in view_run(folder, 6).checkpoints] == [2]

    run(config(), shared_workspace, folder, resume=True, stop_after=5)
    events = EventLog(log).read()
    after = events[max(i for i, e in enumerate(events) if e.get("status") == "resumed"):]
    assert [e["step"] for e in after if e["kind"] in ("checkpoint", "loss")][:2] == [4, 5]  # listed before training
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-000004.safetensors",
                                                                          "step-000005.safetensors"]
    assert [s for s, _ in view_run(folder, 6).checkpoints] == [4, 5]

    # and the pruning the kill skipped: with keep 1, the older file goes as the unlisted one is listed
    from blk.train.runner import _list_unlisted

    pruned = tmp_path / "pruned"
    (pruned / "checkpoints").mkdir(parents=True)
    for step in (2, 4):
        (pruned / "checkpoints" / f"step-{step:06d}.safetensors").write_bytes(b"lora")
    events = EventLog(pruned / "events.jsonl")
    events.write("checkpoint", 2, path="checkpoints/step-000002.safetensors")
    keep_one = config()
    keep_one.checkpoints.keep = 1
    _list_unlisted(keep_one, pruned, events, 4)
    assert [p.name for p in (pruned / "checkpoints").iterdir()] == ["step-000004.safetensors"]
    assert [e["step"] for e in events.read() if e["kind"] == "checkpoint"] == [2, 4]


def test_a_failure_outside_the_steps_is_an_error_event(dataset, shared_workspace, tmp_path):
    """A model folder whose weights are damaged fails while loading, before any step: the run folder (made by the
    app before the trainer starts) says why in one sentence, once (the CLI leaves it to the trainer)."""
    import shutil

    from blk.models.registry import resolve

    broken = tmp_path / "broken-flux"
    shutil.copytree(resolve("tiny-flux", shared_workspace).path, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(UserError) as raised:
        run(config_for(str(broken), dataset), shared_workspace, run_dir)
    errors = events_of(run_dir, "error")
    assert [e["message"] for e in errors] == [str(raised.value)] and "\n" not in errors[0]["message"]
    assert "broken-flux" in errors[0]["message"]


def test_an_unexpected_exception_is_an_error_event_with_its_last_line(tmp_path, shared_workspace):
    """A damaged text-cache entry (valid safetensors, wrong tensors) makes the first step fail with a KeyError,
    not a sentence of ours: the event carries the exception's last line."""
    from safetensors.torch import save

    from blk.models.registry import resolve
    from blk.train.cache import TensorCache, model_key

    dataset = make_noise_dataset(tmp_path / "ds")
    text = TensorCache(dataset / ".blk" / "cache" / model_key(resolve("tiny-flux", shared_workspace).path) / "text")
    for i in range(4):
        path = text._path(f"flux|blkstyle, a drawing number {i}, ink")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(save({"junk": torch.zeros(2)}))
    with pytest.raises(KeyError):
        run(config_for("tiny-flux", dataset), shared_workspace, tmp_path / "run")
    (error,) = events_of(tmp_path / "run", "error")
    assert error["message"].startswith("Training failed at step 1: KeyError: 'prompt_embeds'")


def raise_out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_probe_that_runs_out_of_memory_says_it_will_not_fit(dataset, shared_workspace, monkeypatch):
    from blk.train.probe import probe

    monkeypatch.setattr(torch.Tensor, "backward", raise_out_of_memory)
    estimate = probe(config_for("tiny-flux", dataset, steps=1000), shared_workspace, steps=2)
    assert not estimate.fits
    sentence = estimate.sentence(1000)
    assert sentence.startswith("This will not fit: the probe ran out of memory on cpu at step 1; try an int8 base")
    assert "gradient checkpointing" in sentence
    assert not [p for p in shared_workspace.runs.iterdir() if p.name.startswith(".probe-")]


def test_adamw_8bit_on_a_cpu_says_it_uses_plain_adamw(dataset, shared_workspace, tmp_path, capsys):
    config = config_for("tiny-flux", dataset, steps=1)
    config.optimizer.name = "adamw8bit"
    assert run(config, shared_workspace, tmp_path / "run").status == "finished"
    (notice,) = events_of(tmp_path / "run", "notice")
    assert notice["message"] == "AdamW 8-bit needs a CUDA GPU, so this run on cpu uses plain AdamW (same settings, " \
                                "more memory)."
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert lines == ["notice: " + notice["message"]]
    state = torch.load(tmp_path / "run" / "state" / "optimizer.pt", weights_only=True)["state"]
    assert all("exp_avg" in s for s in state.values())  # torch's AdamW state (bitsandbytes' holds state1/qmap1)


def test_with_ema_samples_and_validation_use_the_checkpointed_weights(dataset, shared_workspace, tmp_path):
    """A step's sample is what its checkpoint generates, and its validation loss is the checkpoint's."""
    from PIL import Image

    from blk.models.registry import resolve
    from blk.train.cache import TensorCache, model_key
    from blk.train.data import load_items
    from blk.train.runner import LatentSource, TextSource, split_validation, validation_loss

    config = config_for("tiny-flux", dataset, steps=4)
    config.optimizer.ema_decay = 0.9
    config.data.validation_images, config.data.validation_every = 1, 4
    config.sampling.every, config.sampling.prompts, config.sampling.steps, config.sampling.size = 4, ["a cloud"], 2, 64
    result = run(config, shared_workspace, tmp_path / "run")

    family = fresh_family(shared_workspace, "tiny-flux")
    family.pipe.load_lora_weights(str(result.last_checkpoint))
    image = family.pipe(prompt="a cloud", width=64, height=64, num_inference_steps=2, guidance_scale=config.sampling.guidance,
                        generator=torch.Generator("cpu").manual_seed(config.sampling.seed)).images[0]
    sample = np.asarray(Image.open(tmp_path / "run" / "samples" / "step-000004-0.png")).astype(int)
    assert np.abs(sample - np.asarray(image).astype(int)).max() <= 1

    model = resolve("tiny-flux", shared_workspace)
    caches = dataset / ".blk" / "cache" / model_key(model.path)
    held_out = split_validation(load_items(dataset, [64], False), 1)[1]
    latents = LatentSource(family, TensorCache(caches / "latents"), dataset, model.path, config.data)
    expected = validation_loss(family, held_out, latents, TextSource(family, TensorCache(caches / "text")), "cpu",
                               torch.float32)
    (evaluation,) = [e for e in events_of(tmp_path / "run", "eval") if e["step"] == 4]
    assert evaluation["loss"] == pytest.approx(expected, rel=1e-6)


def test_an_inf_gradient_stops_before_the_update_and_keeps_finite_checkpoints(dataset, shared_workspace, tmp_path,
                                                                              monkeypatch):
    """The loss of step 3 is finite but its gradient is not (an infinite upstream gradient, as an fp16 overflow
    gives): the run stops before stepping on it, and no checkpoint holds NaN."""
    backward, calls = torch.Tensor.backward, []

    def overflowing_backward(self, gradient=None, *args, **kwargs):
        calls.append(self)
        if len(calls) == 3:
            gradient = torch.full_like(self, math.inf)
        return backward(self, gradient, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", overflowing_backward)
    config = config_for("tiny-flux", dataset, steps=5)
    config.checkpoints.every = 1
    result = run(config, shared_workspace, tmp_path / "run")
    assert (result.status, result.step) == ("error", 2)
    (error,) = events_of(tmp_path / "run", "error")
    assert error["message"].startswith("Training stopped: a gradient became ") and "at step 3" in error["message"]
    kept = sorted((tmp_path / "run" / "checkpoints").glob("step-*.safetensors"))
    assert [p.name for p in kept] == ["step-000001.safetensors", "step-000002.safetensors"]
    for path in kept + [tmp_path / "run" / "state" / "adapter.safetensors"]:
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values()), path.name


def test_shuffled_captions_are_not_written_to_the_text_cache(shared_workspace, tmp_path):
    from blk.models.registry import resolve
    from blk.train.cache import TensorCache, model_key

    dataset = make_noise_dataset(tmp_path / "ds")
    captions = [f"blkstyle, drawing {i}, ink, paper, line, wash, grey" for i in range(4)]
    for i, caption in enumerate(captions):
        (dataset / f"img{i}.txt").write_text(caption)
    config = config_for("tiny-flux", dataset, steps=4)
    config.data.shuffle_tokens, config.data.keep_tokens = True, 1
    result = run(config, shared_workspace, tmp_path / "run")
    assert result.text_encodes == 4  # one shuffled caption encoded per step
    text = TensorCache(dataset / ".blk" / "cache" / model_key(resolve("tiny-flux", shared_workspace).path) / "text")
    allowed = {text._path(f"flux|{caption}") for caption in captions + [""]}
    written = set(text.folder.rglob("*.safetensors")) if text.folder.exists() else set()
    assert written <= allowed


def test_fixed_shuffle_orders_are_encoded_once_and_the_text_encoders_leave(shared_workspace, tmp_path):
    """`shuffle_orders` N: each caption's N orders are encoded before the first step and cached, the text encoders
    leave (as without shuffling: on a GPU the memory and the per-step encode go), and the steps use those orders."""
    from blk.models.registry import resolve
    from blk.train.cache import TensorCache, model_key
    from blk.train.data import shuffled_orders

    dataset = make_noise_dataset(tmp_path / "ds")
    captions = [f"blkstyle, drawing {i}, ink, paper, line, wash" for i in range(4)]
    for i, caption in enumerate(captions):
        (dataset / f"img{i}.txt").write_text(caption)
    config = config_for("tiny-flux", dataset, steps=6)
    config.data.shuffle_tokens, config.data.keep_tokens, config.data.shuffle_orders = True, 1, 3
    result = run(config, shared_workspace, tmp_path / "run")
    assert result.text_encodes == 4 * 3  # every order of every caption, once, before the steps
    (status,) = [e for e in events_of(tmp_path / "run", "status") if e["status"] == "finished"]
    assert status["text_encoders_released"] is True
    text = TensorCache(dataset / ".blk" / "cache" / model_key(resolve("tiny-flux", shared_workspace).path) / "text")
    orders = [order for c in captions for order in shuffled_orders(c, 3, 1)]
    assert set(text.folder.rglob("*.safetensors")) == {text._path(f"flux|{order}") for order in orders}
    again = run(config, shared_workspace, tmp_path / "again")
    assert again.text_encodes == 0  # a second run finds them all in the cache


def test_resume_before_the_first_checkpoint_starts_again_in_the_same_folder(dataset, shared_workspace, tmp_path,
                                                                           monkeypatch):
    config = config_for("tiny-flux", dataset, steps=2)
    with monkeypatch.context() as patched:  # the first attempt runs out of memory in step 1: nothing is saved
        patched.setattr(torch.Tensor, "backward", raise_out_of_memory)
        failed = run(config, shared_workspace, tmp_path / "run")
    assert failed.status == "error" and not (tmp_path / "run" / "state").exists()
    resumed = run(config, shared_workspace, tmp_path / "run", resume=True)
    assert (resumed.status, resumed.step) == ("finished", 2)
    assert (tmp_path / "run" / "checkpoints" / "step-000002.safetensors").exists()
    (notice,) = events_of(tmp_path / "run", "notice")
    assert notice["step"] == 0 and "starts again from step 0 in the same folder" in notice["message"]
    statuses = [e["status"] for e in events_of(tmp_path / "run", "status")]
    assert statuses == ["started", "error", "started", "finished"]
    from blk.train.monitor import view_run

    view = view_run(tmp_path / "run", 2)  # what the Train tab shows: the new attempt, its notice, no error
    assert view.notices == [notice["message"]] and view.message == "finished at step 2"
    assert view.steps == [1, 2]


def test_checkpoints_saved_in_fp16_load_at_their_strength_and_resume_state_stays_fp32(dataset, shared_workspace,
                                                                                      tmp_path):
    """The paper saves fp16 LoRAs (half the size); the state a run resumes from keeps full precision."""
    config = config_for("tiny-flux", dataset, rank=4, alpha=2)
    config = config.model_copy(update={"checkpoints": config.checkpoints.model_copy(update={"dtype": "fp16"})})
    run_dir = tmp_path / "run"
    result = run(config, shared_workspace, run_dir)
    assert result.status == "finished"
    saved = load_file(str(result.last_checkpoint))
    assert saved and {t.dtype for t in saved.values()} == {torch.float16}
    assert {t.dtype for t in load_file(str(run_dir / "state" / "adapter.safetensors")).values()} == {torch.float32}
    family = fresh_family(shared_workspace, config.model.name)
    family.pipe.load_lora_weights(str(result.last_checkpoint), adapter_name="file")
    found, expected = deltas(family.denoiser, "file"), trained_deltas(shared_workspace, config, run_dir)
    assert found.keys() == expected.keys()
    for name in expected:  # equal within fp16 rounding of the factors
        torch.testing.assert_close(found[name], expected[name], rtol=2e-2, atol=1e-4)


def test_sample_now_draws_the_prompts_at_the_next_step_and_changes_nothing_trained(dataset, shared_workspace,
                                                                                     tmp_path):
    """"Sample now" (a request file in the run folder) gives one set of samples at the end of the step in progress,
    marked as asked for, and uses the request up; the weights trained are bit-identical to a run without it. A
    request left from an earlier attempt is dropped when a run starts."""
    import threading
    import time

    from blk.train.runner import SAMPLE_REQUEST

    def config():
        c = config_for("tiny-flux", dataset, steps=200)
        c.sampling.prompts, c.sampling.steps, c.sampling.size = ["a cloud", "a rock"], 2, 64  # every: 0
        return c

    run_dir, stop = tmp_path / "asked", threading.Event()

    def press_sample_now_once_training_then_stop_when_served():
        log, pressed = run_dir / "events.jsonl", False
        while not stop.is_set():
            events = EventLog(log).read() if log.exists() else []
            if not pressed and any(e["kind"] == "loss" for e in events):
                (run_dir / SAMPLE_REQUEST).write_text("now")
                pressed = True
            if any(e["kind"] == "sample" for e in events):
                stop.set()
            time.sleep(0.01)

    watcher = threading.Thread(target=press_sample_now_once_training_then_stop_when_served)
    watcher.start()
    asked = run(config(), shared_workspace, run_dir, stop=stop)
    stop.set()
    watcher.join()
    assert asked.status == "stopped"
    samples = events_of(run_dir, "sample")
    assert len(samples) == 1 and samples[0]["asked"] is True and 1 <= samples[0]["step"] <= asked.step
    step = samples[0]["step"]
    assert [p.name for p in sorted((run_dir / "samples").iterdir())] == [f"step-{step:06d}-{i}.png" for i in (0, 1)]
    assert not (run_dir / SAMPLE_REQUEST).exists()

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / SAMPLE_REQUEST).write_text("left by an earlier attempt")
    plain = run(config(), shared_workspace, tmp_path / "plain", stop_after=asked.step)
    assert not events_of(tmp_path / "plain", "sample") and not (tmp_path / "plain" / SAMPLE_REQUEST).exists()
    a, b = load_file(str(asked.last_checkpoint)), load_file(str(plain.last_checkpoint))
    assert plain.last_checkpoint.name == asked.last_checkpoint.name
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prodigy_logs_the_rate_it_steps_at(dataset, shared_workspace, tmp_path):
    """Prodigy keeps lr at 1.0 and adapts d (from d0): each loss event carries d and lr = d·lr, so the plot moves."""
    config = config_for("tiny-flux", dataset, steps=3)
    config.optimizer.name, config.optimizer.lr = "prodigy", 1.0
    run(config, shared_workspace, tmp_path / "run")
    losses = events_of(tmp_path / "run", "loss")
    assert [e["step"] for e in losses] == [1, 2, 3]
    assert all(e["lr"] == pytest.approx(e["d"]) for e in losses)
    assert losses[0]["d"] >= config.optimizer.d0 and losses[-1]["d"] != 1.0


def test_the_state_is_on_disk_before_it_is_swapped_in(dataset, shared_workspace, tmp_path, monkeypatch):
    """A kill cannot tear the state (it is renamed in whole), but a power cut could: files the kernel had not yet
    written would be empty after the rename. Every state file and the folder are fsynced before the swap."""
    import os

    synced, order = set(), []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def rename(source, target, *args, **kwargs):
        if os.path.basename(target) == "state":
            order.append({name: os.path.join(source, name) in synced for name in os.listdir(source)}
                         | {".": os.fspath(source) in synced})
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    config = config_for("tiny-flux", dataset, steps=4)
    config.checkpoints.every = 2
    run(config, shared_workspace, tmp_path / "run")
    assert len(order) == 2  # steps 2 and 4
    for before_swap in order:
        assert {"adapter.safetensors", "optimizer.pt", "scheduler.pt", "trainer.json", "."} <= before_swap.keys()
        assert all(before_swap.values()), before_swap
    assert str(tmp_path / "run") in synced  # the renames themselves
