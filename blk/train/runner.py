"""A training run: the recipe, step by step, writing everything into `runs/RUN/`.

    runs/RUN/config.yaml      the exact resolved config
    runs/RUN/events.jsonl     one JSON object per line: t, step, kind (loss, lr, sample, checkpoint, status, error)
    runs/RUN/checkpoints/     step-000250.safetensors … (diffusers LoRA/LoKr format; newest K kept, pinned kept)
    runs/RUN/samples/         step-000250-0.png …
    runs/RUN/state/           what resume needs: adapter, optimizer, scheduler, step

Determinism: the data order is a seeded permutation per epoch, and each step's
noise, timesteps and caption augmentation come from generators seeded by the
step number — so a run resumed from step k continues exactly as if it had
never stopped; only adapter, optimizer, scheduler and the step are saved.

Several GPUs (`schedule.gpus`, one process each under `accelerate launch`; see
`distributed`): a step's micro-batches are numbered globally, 0 … gpus × A − 1
(A: gradient accumulation), and process r trains r·A … r·A + A − 1 with exactly
the batch, noise and caption seeds a single process with accumulation gpus × A
would use for those numbers; the gradients are summed over the processes. So
2 GPUs with A = 1 train the same steps as 1 GPU with A = 2, and a run resumes
on any number of GPUs that divides gpus × A, with the accumulation that keeps
the product (`process.regroup`). Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from blk import atomic
from blk.errors import UserError
from blk.train.adapters import adapter_metadata
from blk.train.cache import PixelMemory, TensorCache, model_key, pixel_budget
from blk.train.config import TrainConfig, save_config
from blk.train.data import Curriculum, Item, StagePlan, augment_caption, epoch_order, load_items
from blk.train.distributed import World
from blk.workspace import Workspace

STATE_FILES = ("adapter.safetensors", "optimizer.pt", "scheduler.pt", "trainer.json")


class EventLog:
    """The contract between trainer and UI: `events.jsonl`, appended durably."""

    def __init__(self, path: Path, quiet: bool = False):
        self.path = path
        self.quiet = quiet  # the data-parallel processes other than rank 0 write nothing

    def write(self, kind: str, step: int, **fields) -> None:
        if self.quiet:
            return
        atomic.append_line(self.path, json.dumps({"t": round(time.time(), 3), "step": step, "kind": kind, **fields}))

    def read(self) -> list[dict]:
        return atomic.read_jsonl(self.path)


@dataclass
class RunResult:
    run_dir: Path
    step: int
    status: str  # finished | stopped | error
    latent_encodes: int
    text_encodes: int
    last_checkpoint: Path | None
    pixel_decodes: int = 0  # image files decoded and bucketed (without the latent cache: once each, within RAM)


def run(config: TrainConfig, workspace: Workspace, run_dir: Path, resume: bool = False,
        stop: threading.Event | None = None, stop_after: int | None = None) -> RunResult:
    """Train. `stop` ends the run gracefully after the current step (checkpoint saved).

    Under `accelerate launch` (several processes) every process calls this with the same arguments."""
    import torch

    from blk.models.device import avoid_cudnn_attention_backward, is_out_of_memory, pick_dtype
    from blk.models.registry import resolve

    stop = stop or threading.Event()
    run_dir = Path(run_dir)
    world = World.from_env()
    if resume:
        _state_folder(run_dir)  # fail before loading anything
    dataset = workspace.dataset_folder(config.data.dataset) if config.data.dataset else None
    if dataset is None:
        raise UserError("Choose a dataset to train on.")
    if world.is_main:
        for sentence in config.unreachable_stages():  # e.g. `--steps` below a preset's stage starts
            print(f"warning: {sentence}.", file=sys.stderr, flush=True)
    model = resolve(config.model.name, workspace)
    items = load_items(dataset, config.data.resolutions, config.data.flip, variants=config.data.augment.variants)
    items, held_out = split_validation(items, config.data.validation_images)
    curriculum = plan_curriculum(config, workspace, dataset, items, world.size)
    items = items * config.data.repeats
    image_count = len({(i.root, i.image, i.flip, i.variant) for plan in curriculum.stages for pool in plan.pools for i in pool}) \
        if curriculum else len(items)
    device = world.start(workspace.settings.device)
    dtype = pick_dtype(device)
    if device.startswith("cuda"):
        avoid_cudnn_attention_backward()

    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        _remove_temporaries(run_dir)  # left by a killed trainer: never a checkpoint, only debris
        (run_dir / "samples").mkdir(exist_ok=True)
        resolved = config.model_copy(deep=True)
        resolved.data.dataset = str(dataset)
        resolved.schedule.gpus = world.size  # the processes that really trained (what a resume starts with)
        save_config(resolved, run_dir / "config.yaml")
    events = EventLog(run_dir / "events.jsonl", quiet=not world.is_main)

    family = _load_family(config, model, dtype, device)
    denoiser = family.denoiser
    _add_adapter(family, config, workspace, model)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params, device)
    scheduler = _lr_scheduler(config, optimizer)
    ema = Ema(denoiser, config.optimizer.ema_decay) if config.optimizer.ema_decay else None
    step = _restore(run_dir, denoiser, optimizer, scheduler, ema) if resume else 0
    world.broadcast_parameters(params)  # replicas start identical (they are already: same seed, same state file)
    world.barrier()  # every process has read state/ before rank 0 may replace it
    events.write("status", step, status="resumed" if step else "started", model=model.name, images=image_count,
                 processes=world.size, accumulation=config.schedule.gradient_accumulation)
    stage = None

    caches = dataset / ".blk" / "cache" / model_key(model.path)
    latent_cache = TensorCache(caches / "latents", enabled=config.data.cache_latents)
    latent_for = LatentSource(family, latent_cache, dataset, model.path, config.data,
                              *_transparent_encoder(config, workspace, model, device))
    text_cache = TensorCache(caches / "text")
    text_for = _text_encoder(family, text_cache)
    every_item = items + held_out + [i for plan in (curriculum.stages if curriculum else []) for pool in plan.pools
                                     for i in pool]
    released = _release_text_encoders(family, config, {i.caption for i in every_item}, text_for, device)
    last_checkpoint = None
    def validate(at_step: int) -> None:
        if world.is_main and held_out and config.data.validation_every:
            loss = validation_loss(family, held_out, latent_for, text_for, device, dtype)
            events.write("eval", at_step, loss=loss)

    if step == 0:
        validate(0)
        if world.is_main and config.sampling.every and config.sampling.prompts:
            _samples(family, config, run_dir, events, 0, text_for)

    accumulation = config.schedule.gradient_accumulation
    micro_per_step = accumulation * world.size  # the step's micro-batches, over all processes
    status = "finished"
    try:
        while step < config.schedule.steps:
            if curriculum and curriculum.stage_index(step) != stage:
                stage = curriculum.stage_index(step)
                plan = curriculum.stages[stage]
                events.write("stage", step, stage=stage + 1, name=plan.name,
                             sources=dict(zip(plan.labels, plan.fractions)), images=sum(len(p) for p in plan.pools))
            denoiser.train()
            total, used, failed = 0.0, [], False
            try:
                for micro in world.micro_batches(accumulation):
                    draw = micro_batch(config, items, curriculum, step, micro, micro_per_step)
                    batch = draw.items
                    used += [item.image for item in batch]
                    generator = torch.Generator().manual_seed(draw.noise_seed)
                    rng = random.Random(draw.caption_seed)
                    entries = [latent_for(item) for item in batch]
                    latents = torch.stack([entry["params"][0] for entry in entries]).to(device, dtype)
                    mask = _stack_masks(entries) if config.data.alpha_mask else None
                    captions = [augment_caption(i.caption, rng, config.data.caption_dropout, config.data.shuffle_tokens,
                                                config.data.keep_tokens) for i in batch]
                    texts = [text_for(c) for c in captions]
                    text = {k: torch.stack([t[k] for t in texts]) for k in texts[0]}
                    loss = family.loss(latents, text, generator, mask) / micro_per_step
                    loss.backward()
                    total += loss.item()
            except Exception as exc:  # noqa: BLE001
                if world.size == 1 or not is_out_of_memory(exc):
                    raise
                failed = True  # this process ran out of memory: tell the others, so that all end here together
                optimizer.zero_grad(set_to_none=True)
            total, failures = world.sum([total, float(failed)])
            if failures:
                raise _OutOfMemoryInAProcess()
            if not math.isfinite(total):
                raise FloatingPointError(f"the loss became {total} at step {step + 1}")
            world.sum_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if ema is not None:
                ema.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            used = world.gather(used)
            memory = {"gpu_memory": torch.cuda.max_memory_allocated(device)} if device.startswith("cuda") else {}
            events.write("loss", step, loss=total, lr=scheduler.get_last_lr()[0], images=used, **memory)
            if world.is_main and (step % config.checkpoints.every == 0 or step == config.schedule.steps):
                last_checkpoint = _checkpoint(family, config, run_dir, events, optimizer, scheduler, step, ema)
            if config.data.validation_every and step % config.data.validation_every == 0:
                validate(step)
            if world.is_main and config.sampling.every and config.sampling.prompts and step % config.sampling.every == 0:
                _samples(family, config, run_dir, events, step, text_for)
            if world.agree(stop.is_set() or (stop_after is not None and step >= stop_after)):  # rank 0 decides
                status = "stopped"
                break
    except FloatingPointError as exc:
        events.write("error", step, message=f"Training stopped: {exc}. The last good checkpoint is kept; "
                                            "lower the learning rate and resume or start again.")
        status = "error"
    except Exception as exc:  # noqa: BLE001  (only out-of-memory is caught here; anything else is a bug to show)
        everywhere = isinstance(exc, _OutOfMemoryInAProcess)
        if not (everywhere or is_out_of_memory(exc)):
            raise
        if world.size > 1 and not everywhere:
            # One process failed on its own (e.g. the smaller of two GPUs, outside the micro-batches) while the
            # others wait in a collective: say so from this process, and end it; the launcher ends the others.
            EventLog(run_dir / "events.jsonl").write("error", step, message=out_of_memory_sentence(config, step),
                                                     process=world.rank)
            raise
        events.write("error", step, message=out_of_memory_sentence(config, step))
        status = "error"
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if world.is_main and status == "stopped" and \
            (last_checkpoint is None or not last_checkpoint.name.endswith(f"{step:06d}.safetensors")):
        last_checkpoint = _checkpoint(family, config, run_dir, events, optimizer, scheduler, step, ema)
    events.write("status", step, status=status, latent_encodes=latent_cache.misses, text_encodes=text_cache.misses,
                 text_encoders_released=released)
    world.barrier()  # the others end when rank 0 has written everything
    world.close()
    return RunResult(run_dir, step, status, latent_cache.misses, text_cache.misses, last_checkpoint,
                     latent_for.pixels.misses)


class _OutOfMemoryInAProcess(Exception):
    """A data-parallel process ran out of memory in this step's micro-batches; every process raises it."""


@dataclass(frozen=True)
class MicroBatch:
    items: list[Item]
    noise_seed: int  # noise and timesteps
    caption_seed: int  # caption dropout and shuffling


def micro_batch(config: TrainConfig, items: list[Item], curriculum: Curriculum | None, step: int, micro: int,
                micro_per_step: int) -> MicroBatch:
    """Micro-batch number `micro` (0 … micro_per_step − 1, over all processes) of step `step`: a function of
    these numbers only, so one process with accumulation W·A draws what W processes with A draw together."""
    batch = curriculum.batch(step, micro) if curriculum else \
        _batch(items, config, step * micro_per_step + micro, config.schedule.batch_size)
    return MicroBatch(batch, config.schedule.seed * 1_000_003 + step * 97 + micro,
                      config.schedule.seed * 7_919 + step * 13 + micro)


def out_of_memory_sentence(config: TrainConfig, step: int) -> str:
    """What to change when a run runs out of memory, naming only the settings not already at their cheapest."""
    tips = []
    if not config.model.int8_base:
        tips.append("an int8 base (model.int8_base)")
    if not config.model.gradient_checkpointing:
        tips.append("gradient checkpointing")
    if max(config.data.resolutions) > 512:
        tips.append("smaller bucket sizes")
    if config.schedule.batch_size > 1:
        tips.append("batch size 1 (with gradient accumulation)")
    if not tips:
        tips.append("a lower rank")
    return (f"Out of memory at step {step + 1}: try {', '.join(tips[:-1]) + ' and ' + tips[-1] if len(tips) > 1 else tips[0]}; "
            "the last checkpoint is kept and the run can resume.")


class Ema:
    """Exponential moving average of the trainable (adapter) weights, kept in fp32."""

    def __init__(self, denoiser, decay: float):
        self.decay = decay
        self.params = {name: p for name, p in denoiser.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}

    def update(self) -> None:
        import torch

        with torch.no_grad():
            for name, p in self.params.items():
                self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    def state_dict_like(self, lora: dict) -> dict:
        """The LoRA state dict with the averaged values (peft's keys are the parameter names minus the adapter name)."""
        by_key = {name.replace(".default", ""): value for name, value in self.shadow.items()}
        return {key: by_key[key].to(value.dtype) for key, value in lora.items()}

    def shadow_state(self) -> dict:
        return {name: value.contiguous() for name, value in self.shadow.items()}

    def load_shadow(self, state: dict) -> None:
        for name in self.shadow:
            self.shadow[name].copy_(state[name])


VALIDATION_DRAWS = 4  # fixed noise/timestep draws per held-out image


def split_validation(items: list[Item], count: int) -> tuple[list[Item], list[Item]]:
    """Hold out `count` images (all flips and variants of each) from training, chosen evenly by name;
    they are validated as they are (no flip, no augmentation)."""
    if count <= 0:
        return items, []
    images = sorted({item.image for item in items})
    if count >= len(images):
        raise UserError(f"Holding out {count} image(s) for validation leaves none to train on.")
    stride = len(images) / count
    held = {images[int(i * stride)] for i in range(count)}
    return [i for i in items if i.image not in held], \
        [i for i in items if i.image in held and not i.flip and not i.variant]


def validation_loss(family, held_out: list[Item], latent_for, text_for, device, dtype) -> float:
    """Mean loss on held-out images at fixed noise and timesteps: the same draws at every evaluation,
    so the curve shows learning (and over-fitting) without the training loss's timestep noise."""
    import torch

    family.denoiser.eval()
    losses = []
    with torch.no_grad():
        for index, item in enumerate(held_out):
            entry = latent_for(item)
            latents = entry["params"].to(device, dtype)
            mask = entry.get("mask")
            text = {k: v[None] for k, v in text_for(item.caption).items()}
            for draw in range(VALIDATION_DRAWS):
                generator = torch.Generator().manual_seed(1_000_000 + index * VALIDATION_DRAWS + draw)
                losses.append(family.loss(latents, text, generator, mask).item())
    family.denoiser.train()
    return sum(losses) / len(losses)


# the pieces of the recipe ---------------------------------------------------------------------------

def _load_family(config: TrainConfig, model, dtype, device):
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.train.families import FluxFamily, SDXLFamily

    pipe = load_pipeline(model, "text2img", device, MemoryOptions(int8=config.model.int8_base))
    for component in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                      getattr(pipe, "transformer", None), getattr(pipe, "unet", None)):
        if component is not None:
            component.requires_grad_(False)
    family = FluxFamily(pipe, config.schedule.timestep_shift) if model.family == "flux" \
        else SDXLFamily(pipe, config.schedule.prediction)
    if config.model.gradient_checkpointing:
        family.denoiser.enable_gradient_checkpointing()
    return family


def _add_adapter(family, config: TrainConfig, workspace: Workspace, model) -> None:
    """Frozen base LoRAs first (e.g. LayerDiffuse's layer LoRA), then the trainable adapter, optionally from a file."""
    import torch

    from blk.train.adapters import TRAINABLE, add_base_loras, freeze_all_but_trainable, init_trainable_from, peft_config

    denoiser = family.denoiser
    base = add_base_loras(family, [_base_lora_path(name, workspace, model) for name in config.model.base_loras])
    torch.manual_seed(config.schedule.seed)  # the adapter's initial weights
    with warnings.catch_warnings():  # peft warns that a second adapter joins the base LoRAs: that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        denoiser.add_adapter(peft_config(config.adapter), adapter_name=TRAINABLE)
    if config.adapter.init_from:
        init_trainable_from(family, Path(config.adapter.init_from).expanduser())
    denoiser.set_adapters(base + [TRAINABLE])  # all active; only the trainable one learns
    freeze_all_but_trainable(denoiser)
    for parameter in denoiser.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()  # adapters train in fp32 even on a bf16 base


def _transparent_encoder(config: TrainConfig, workspace: Workspace, model, device: str) -> tuple:
    """(encoder, its file's identity for the cache key) with `transparency: layerdiffuse`; else (None, "")."""
    if config.data.transparency != "layerdiffuse":
        return None, ""
    from blk.models.pipelines import lora_sha256
    from blk.stencil.layerdiffuse import find_encoder, load_encoder

    path = find_encoder(workspace, model)
    return load_encoder(path, model.family).to(device), lora_sha256(path)[:16]


def _base_lora_path(name: str, workspace: Workspace, model) -> Path:
    if name.strip().lower() == "layerdiffuse":
        from blk.stencil.layerdiffuse import find_weights

        return find_weights(workspace, model).lora
    return Path(name).expanduser()


def _optimizer(config: TrainConfig, params, device: str):
    import torch

    opt = config.optimizer
    if opt.name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, decouple=True,
                       use_bias_correction=True, safeguard_warmup=True, d0=opt.d0, d_coef=opt.d_coef)
    if opt.name == "adamw8bit" and device.startswith("cuda"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)


def _lr_scheduler(config: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    name = {"constant": "constant_with_warmup", "cosine": "cosine", "polynomial": "polynomial"}[config.schedule.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=config.schedule.warmup_steps,
                         num_training_steps=config.schedule.steps)


def _batch(items: list[Item], config: TrainConfig, micro_index: int, batch_size: int) -> list[Item]:
    """The items of one micro-batch, from the seeded order of its epoch (all of one bucket size)."""
    per_epoch = max(1, len(items) // batch_size)
    epoch, position = divmod(micro_index, per_epoch)
    order = epoch_order(len(items), config.schedule.seed, epoch)
    first = items[order[position * batch_size]]
    chosen = [items[i] for i in order[position * batch_size:(position + 1) * batch_size]]
    return [item for item in chosen if (item.width, item.height) == (first.width, first.height)]


class LatentSource:
    """Each item's latent entry, made once and cached: {"params": VAE posterior parameters} and, with
    `alpha_mask` for an image with transparency, {"mask": alpha on the latent grid}.

    Pixels come from `blk.train.pixels` (bucket crop, alpha-safe augmented variant, flip). Then either
    they are flattened over white for the base VAE (`transparency: flatten`), or, with `layerdiffuse`,
    LayerDiffuse's encoder turns the RGBA into the latent the layer LoRA works in; that latent is exact
    (no sampling), stored as a posterior with a vanishing variance so the families treat it alike.
    """

    def __init__(self, family, cache: TensorCache, dataset: Path, model_path: Path, data, encoder=None,
                 encoder_id: str = ""):
        self.family, self.cache, self.dataset, self.model_path, self.data = family, cache, dataset, model_path, data
        self.encoder, self.encoder_id = encoder, encoder_id
        # without the latent cache, every step encodes again: the pixels need not be decoded again too
        self.pixels = PixelMemory(0 if cache.enabled else pixel_budget())
        if data.transparency == "layerdiffuse" and encoder is None:
            raise ValueError("transparency: layerdiffuse needs the LayerDiffuse encoder")

    def key(self, item: Item) -> str:
        key = f"{item.sha256}|{item.width}x{item.height}|flip={item.flip}|{model_key(self.model_path)}"
        if self.data.alpha_mask:
            key += "|alpha-mask"
        if item.variant:
            a = self.data.augment
            key += f"|variant={item.variant}:{a.rotate:g},{a.scale:g},{a.shift:g},{a.grain:g}"
        if self.data.transparency == "layerdiffuse":
            key += f"|layerdiffuse={self.encoder_id}"
        return key

    def __call__(self, item: Item) -> dict:
        return self.cache.get_or_make(self.key(item), lambda: self._encode(item))

    def _encode(self, item: Item) -> dict:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from blk.data.images import open_image
        from blk.train.pixels import bucket_pixels, jitter_for, over_background

        def pixels():
            image = open_image((Path(item.root) if item.root else self.dataset) / item.image)
            a = self.data.augment
            return bucket_pixels(image, item.width, item.height, item.flip,
                                 jitter_for(item.sha256, item.variant, a.rotate, a.scale, a.shift, a.grain))

        def planes():
            """Channels first: colour flattened over white in [-1, 1] (what the VAE takes), then alpha.
            Kept in RAM as they are, so a step without the latent cache only copies them to the device."""
            rgba = pixels()
            return np.ascontiguousarray(np.concatenate([(over_background(rgba) * 2.0 - 1.0).transpose(2, 0, 1),
                                                        rgba[None, ..., 3]]), dtype=np.float32)

        vae = self.family.pipe.vae
        with torch.no_grad():
            if self.data.transparency == "layerdiffuse":
                from blk.stencil.layerdiffuse import rgba_to_raw_latent

                rgba = self.pixels.get_or_make(self.key(item), pixels)
                raw = rgba_to_raw_latent(vae, self.family.name, self.encoder,
                                         torch.from_numpy(rgba).permute(2, 0, 1)[None])
                params = torch.cat([raw, torch.full_like(raw, -30.0)], dim=1)  # logvar −30: the latent as it is
                alpha = rgba[..., 3]
            else:
                prepared = self.pixels.get_or_make(self.key(item), planes)
                weight = next(vae.parameters())  # not vae.device / vae.dtype: diffusers walks every parameter
                params = self.family.encode_image(torch.from_numpy(prepared[None, :3]).to(weight.device, weight.dtype))
                alpha = prepared[3]
        entry = {"params": params}
        if self.data.alpha_mask and (alpha < 1.0).any():
            full = torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None, None]
            entry["mask"] = F.avg_pool2d(full, self.family.pipe.vae_scale_factor)  # [1, 1, h, w] on the latent grid
        return entry


def _stack_masks(entries: list[dict]):
    """The batch's loss weights: each image's alpha on the latent grid, or all ones for an opaque image."""
    import torch

    masks = []
    for entry in entries:
        mask = entry.get("mask")
        if mask is None:
            mask = torch.ones(1, 1, *entry["params"].shape[-2:])
        masks.append(mask[0])
    return torch.stack(masks)


def plan_curriculum(config: TrainConfig, workspace: Workspace, dataset: Path, items: list[Item],
                    processes: int = 1) -> Curriculum | None:
    """The config's stages with their items: sub-folders of the dataset, or other dataset folders; None without stages.
    `processes`: data-parallel processes; the curriculum numbers a step's micro-batches over all of them."""
    if not config.data.stages:
        return None
    plans, loaded = [], {}
    for number, stage in enumerate(config.data.stages, start=1):
        label = stage.name or f"stage {number}"
        pools, labels = [], []
        for source in stage.sources:
            folder = source.folder.strip().rstrip("/")
            if not folder:
                pool = list(items)
            elif not Path(folder).expanduser().is_absolute() and (dataset / folder).is_dir():
                pool = [i for i in items if i.image.startswith(folder + "/")]
            else:
                if folder not in loaded:
                    extra = workspace.dataset_folder(folder)
                    loaded[folder] = load_items(extra, config.data.resolutions, config.data.flip, root=str(extra),
                                                variants=config.data.augment.variants)
                pool = loaded[folder]
            if not pool:
                raise UserError(f"{label} draws from {folder or dataset.name}, which has no training images.")
            pools.append(pool)
            labels.append(folder or ".")
        plans.append(StagePlan(stage.start, label, labels, pools, stage.fractions()))
    return Curriculum(plans, config.schedule.seed, config.schedule.gradient_accumulation * processes,
                      config.schedule.batch_size)


def _release_text_encoders(family, config: TrainConfig, captions: set[str], text_for, device: str) -> bool:
    """Flux: cache every text the run can use, then let the text encoders go (T5-XXL alone is ~9.5 GB in bf16).

    Without token shuffling a step's text is one of the captions, or "" when caption dropout
    draws it, and samples use the sample prompts; all are encoded now (or read from the
    dataset's text cache), so nothing needs the encoders afterwards. Token shuffling makes new
    texts every step, so the encoders stay. SDXL keeps its (small) CLIP encoders: its samples
    encode the negative prompt for guidance.
    """
    import gc

    import torch

    if family.name != "flux" or config.data.shuffle_tokens:
        return False
    needed = set(captions) | set(config.sampling.prompts) | ({""} if config.data.caption_dropout else set())
    for caption in sorted(needed):
        text_for(caption)
    family.pipe.text_encoder = None
    family.pipe.text_encoder_2 = None
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return True


def _text_encoder(family, cache: TensorCache):
    import torch

    def text_for(caption: str) -> dict:
        def encode():
            if family.pipe.text_encoder is None:  # released after caching: the cache was emptied under the run
                raise UserError(f"The text cache in {cache.folder} lost entries during the run; resume the run "
                                "to encode its captions again.")
            with torch.no_grad():
                return family.encode_text(caption)

        return cache.get_or_make(f"{family.name}|{caption}", encode)

    return text_for


def _checkpoint(family, config: TrainConfig, run_dir: Path, events: EventLog, optimizer, scheduler, step: int,
                ema=None) -> Path:
    """The LoRA file for this step (the EMA weights when on) and the state to resume from, written atomically."""
    import tempfile

    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    lora = get_peft_model_state_dict(family.denoiser)
    published = ema.state_dict_like(lora) if ema is not None else lora
    checkpoints = run_dir / "checkpoints"
    target = checkpoints / f"step-{step:06d}.safetensors"
    staging = Path(tempfile.mkdtemp(prefix=".blk-tmp-", dir=checkpoints))
    try:
        family.save_lora(staging, published, adapter_metadata(family.denoiser, config.adapter))
        atomic.write_bytes(target, (staging / "pytorch_lora_weights.safetensors").read_bytes())
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    state_tmp = Path(tempfile.mkdtemp(prefix=".blk-tmp-state-", dir=run_dir))
    save_file({k: v.contiguous() for k, v in lora.items()}, str(state_tmp / "adapter.safetensors"))
    torch.save(optimizer.state_dict(), state_tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), state_tmp / "scheduler.pt")
    if ema is not None:
        save_file(ema.shadow_state(), str(state_tmp / "ema.safetensors"))
    (state_tmp / "trainer.json").write_text(json.dumps({"step": step}))
    state, old = run_dir / "state", run_dir / "state.old"
    if state.exists():
        shutil.rmtree(old, ignore_errors=True)
        state.rename(old)
    state_tmp.rename(state)
    shutil.rmtree(old, ignore_errors=True)
    events.write("checkpoint", step, path=str(target.relative_to(run_dir)))
    _prune(checkpoints, config)
    return target


def _prune(checkpoints: Path, config: TrainConfig) -> None:
    """Keep the newest `keep` checkpoints, plus those pinned in the config or from the Review tab."""
    from blk.train.pins import pinned_steps

    files = sorted(checkpoints.glob("step-*.safetensors"))
    steps = set(config.checkpoints.pinned) | pinned_steps(checkpoints.parent)
    pinned = {f"step-{s:06d}.safetensors" for s in steps}
    unpinned = [f for f in files if f.name not in pinned]
    for old in unpinned[:-config.checkpoints.keep]:
        old.unlink(missing_ok=True)


def _remove_temporaries(run_dir: Path) -> None:
    for leftover in list(run_dir.glob(atomic.TEMP_PREFIX + "*")) + list((run_dir / "checkpoints").glob(atomic.TEMP_PREFIX + "*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _state_folder(run_dir: Path) -> Path:
    """state/, or state.old if a crash hit the swap between them."""
    for folder in (run_dir / "state", run_dir / "state.old"):
        if all((folder / name).exists() for name in STATE_FILES):
            return folder
    raise UserError(f"{run_dir.name} has no saved state to resume from (no checkpoint was written yet).")


def _restore(run_dir: Path, denoiser, optimizer, scheduler, ema=None) -> int:
    """Load the saved state (state/, or state.old if a crash hit the swap); return its step."""
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = _state_folder(run_dir)
    set_peft_model_state_dict(denoiser, load_file(str(folder / "adapter.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if ema is not None:
        if not (folder / "ema.safetensors").exists():
            raise UserError(f"{run_dir.name} was saved without EMA; resume it with ema_decay 0.")
        ema.load_shadow(load_file(str(folder / "ema.safetensors")))
    return int(json.loads((folder / "trainer.json").read_text())["step"])


def _samples(family, config: TrainConfig, run_dir: Path, events: EventLog, step: int, text_for) -> None:
    """The sample prompts at fixed seeds; Flux gets its cached prompt embeddings (its text encoders may be gone)."""
    import torch

    denoiser = family.denoiser
    denoiser.eval()
    size = config.sampling.size // 64 * 64
    paths = []
    with torch.no_grad():
        for index, prompt in enumerate(config.sampling.prompts):
            prompt_inputs = family.prompt_inputs(text_for(prompt)) if family.name == "flux" else {"prompt": prompt}
            image = family.pipe(**prompt_inputs, width=size, height=size, num_inference_steps=config.sampling.steps,
                                guidance_scale=config.sampling.guidance,
                                generator=torch.Generator("cpu").manual_seed(config.sampling.seed + index)).images[0]
            path = run_dir / "samples" / f"step-{step:06d}-{index}.png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic.write_bytes(path, buffer.getvalue())
            paths.append(str(path.relative_to(run_dir)))
    events.write("sample", step, paths=paths, prompts=config.sampling.prompts)
    denoiser.train()
