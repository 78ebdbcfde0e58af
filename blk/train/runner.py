"""A training run: the recipe, step by step, writing everything into `runs/RUN/`.

    runs/RUN/config.yaml      the exact resolved config
    runs/RUN/events.jsonl     one JSON object per line: t, step, kind (loss, eval, sample, checkpoint, stage,
                              status, notice, error; launch: a resume begins, before loading)
    runs/RUN/checkpoints/     step-000250.safetensors … (diffusers LoRA/LoKr format; newest K kept, pinned kept)
    runs/RUN/samples/         step-000250-0.png …
    runs/RUN/state/           what resume needs: adapter, optimizer, scheduler, step

Determinism: the data order is a seeded permutation per epoch, and each step's
noise, timesteps and caption augmentation come from generators seeded by the
step number, and the global RNG (adapter dropout) is seeded per micro-batch —
so a run resumed from step k continues exactly as if it had never stopped; only
adapter, optimizer, scheduler, EMA and the step are saved.

Checkpoints are what every loader reads alike: each module's alpha/rank is folded
into the weights (`adapters.published_weights`), and the file's peft config says
alpha = rank. Samples and validation use the weights the checkpoint publishes
(the EMA weights when EMA is on). A checkpoint writes state/ first, then its
file: a kill between them leaves a state whose file a resume writes, so no step
after the newest checkpoint file is ever trained twice.

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

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blk import atomic
from blk.data.scan import cached_file_sha256
from blk.data.trigger import style_trigger
from blk.errors import UserError
from blk.train.adapters import adapter_metadata, check_target_modules, published_weights, text_encoder_modules
from blk.train.cache import UNUSED_DAYS, PixelMemory, TensorCache, model_key, pixel_budget, prune_unused
from blk.train.config import TrainConfig, save_config
from blk.train.data import Curriculum, Item, StagePlan, augment_caption, batch_count, bucket_batches, load_items
from blk.train.distributed import World
from blk.workspace import Workspace

STATE_FILES = ("adapter.safetensors", "optimizer.pt", "scheduler.pt", "trainer.json")
# Made in the run folder by "Sample now" (`process.request_samples`): the trainer draws the sample prompts at
# the end of its current step and removes the file. Samples use their own fixed seeds and the global RNG is
# reseeded every micro-batch, so an extra sample changes nothing the run trains.
SAMPLE_REQUEST = "sample-now.request"


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


@dataclass
class _Reached:
    """How far a run got, for the error event of a failure anywhere in it."""
    step: int = 0


def run(config: TrainConfig, workspace: Workspace, run_dir: Path, resume: bool = False,
        stop: threading.Event | None = None, stop_after: int | None = None, largest_only: bool = False,
        on_folder: Callable[[], None] | None = None) -> RunResult:
    """Train. `stop` ends the run gracefully after the current step (checkpoint saved). `largest_only`: the
    probe's: every step draws the largest bucket size (`_largest_bucket`). `on_folder`: called (by the main
    process) once the run folder exists, its config written: a command-line trainer records itself there.

    Any failure (model loading, text caching, step-0 samples, a bug) is also written as an `error` event of
    one sentence before it propagates, where the run folder exists: the app knows a run only by its events,
    and would otherwise show a run that died with no reason. `resume` of a run killed before its first
    checkpoint starts it again from step 0 in the same folder, and says so (a `notice` event).

    Under `accelerate launch` (several processes) every process calls this with the same arguments."""
    reached = _Reached()
    events = Path(run_dir) / "events.jsonl"
    if resume and events.is_file() and World.from_env().is_main:
        # where this attempt begins, even if it fails before "resumed": the Train tab's elapsed time must
        # not count the pause since a killed attempt (which wrote no end) as that attempt's training
        with contextlib.suppress(OSError):  # a full disk: the run's own writes say so, in one sentence
            EventLog(events).write("launch", 0)
    try:
        return _train(config, workspace, Path(run_dir), resume, stop or threading.Event(), stop_after, reached,
                      largest_only, on_folder)
    except Exception as exc:
        _record_failure(Path(run_dir), config, reached.step, exc)
        raise


def record_refusal(run_dir: Path, exc: UserError) -> None:
    """The `error` event of a resume refused before it trains (its config.yaml no longer reads): the Train tab
    showed the run as "stopped" again, the sentence only in trainer.log."""
    if (run_dir / "events.jsonl").is_file() and World.from_env().is_main:
        step = max((event["step"] for event in EventLog(run_dir / "events.jsonl").read()), default=0)
        with contextlib.suppress(OSError):
            EventLog(run_dir / "events.jsonl").write("error", step, message=str(exc))


def _record_failure(run_dir: Path, config: TrainConfig, step: int, exc: Exception) -> None:
    """The `error` event for a failure that ends the run: out of memory names the setting to change; a
    UserError is its own sentence; anything else is the exception's last line."""
    from blk.models.device import is_out_of_memory

    if not run_dir.is_dir():  # refused before the run had a folder: the caller shows the sentence
        return
    reason = {}
    if isinstance(exc, UserError):
        message = str(exc)
    elif is_out_of_memory(exc) or isinstance(exc, _OutOfMemoryInAProcess):
        message, reason = out_of_memory_sentence(config, step, run_dir), {"reason": "out_of_memory"}
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        message = f"Training failed at step {step + 1}: {type(exc).__name__}: {lines[-1] if lines else 'no message'} " \
                  "(the trainer's log has the traceback)."
    world = World.from_env()
    extra = {"process": world.rank} if world.size > 1 else {}
    try:
        EventLog(run_dir / "events.jsonl").write("error", step, message=message, **reason, **extra)
    except OSError:
        pass  # the folder is not writable (e.g. a full disk): the exception itself still propagates


def _train(config: TrainConfig, workspace: Workspace, run_dir: Path, resume: bool, stop: threading.Event,
           stop_after: int | None, reached: _Reached, largest_only: bool = False,
           on_folder: Callable[[], None] | None = None) -> RunResult:
    import torch

    from blk.models.device import (avoid_cudnn_attention_backward, free_device_memory, is_out_of_memory,
                                   training_dtype)
    from blk.models.registry import resolve

    world = World.from_env()
    restart = resume and _saved_state(run_dir) is None  # killed before its first checkpoint: start again
    if restart and not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder, so there is no saved state to resume from.")
    resume = resume and not restart
    dataset = workspace.dataset_folder(config.data.dataset) if config.data.dataset else None
    if dataset is None:
        raise UserError("Choose a dataset to train on (data.dataset in the config, or --dataset on the command line).")
    if world.is_main:
        for sentence in config.unreachable_stages():  # e.g. `--steps` below a preset's stage starts
            print(f"warning: {sentence}.", file=sys.stderr, flush=True)
    model = resolve(config.model.name, workspace)
    check_starting_files(config, workspace, model, from_file=not resume)  # a resume restores its saved weights
    items = load_items(dataset, config.data.resolutions, config.data.flip, variants=config.data.augment.variants)
    began = read_held_out(run_dir) if resume else None
    fingerprint = dataset_fingerprint(items)
    dataset_changed = began is not None and began.get("fingerprint") != fingerprint
    items, held_out = split_validation(items, config.data.validation_images,  # holding out every image: said first
                                       began["images"] if began else None, as_before_the_file=resume and not began)
    if not resume and (problem := config.data.validation_problem()):  # a run begun so resumes as it began
        raise UserError(problem)
    curriculum = plan_curriculum(config, workspace, dataset, items, world.size)
    items = items * config.data.repeats
    if largest_only:
        items = _largest_bucket(items)
        for plan in curriculum.stages if curriculum else []:
            plan.pools = [_largest_bucket(pool) for pool in plan.pools]
    image_count = len({(i.root, i.image, i.flip, i.variant) for plan in curriculum.stages for pool in plan.pools for i in pool}) \
        if curriculum else len(items)
    device = world.start(workspace.settings.device)
    dtype = training_dtype(device)  # before the run folder: an old GPU is one sentence
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
        if began is None or dataset_changed:  # fresh, begun before the file, or on a changed dataset: from now on
            atomic.write_json(run_dir / HELD_OUT_FILE, {"images": sorted({i.image for i in held_out}),
                                                        "fingerprint": fingerprint})
        if on_folder:
            on_folder()
    events = EventLog(run_dir / "events.jsonl", quiet=not world.is_main)

    family = _load_family(config, model, dtype, device)  # the denoiser waits on the CPU until the texts are cached
    check_target_modules(family.denoiser, config.adapter, model.name)  # before minutes of text encoding
    early = _EarlyNotices(events, reached)  # said once the status that begins this attempt is written
    if world.is_main and (pruned := prune_unused(dataset / ".blk" / "cache"))[0]:
        early(f"Removed {pruned[0]} cache entr{'y' if pruned[0] == 1 else 'ies'} of {dataset.name} "
              f"({pruned[1] / 2**20:.0f} MB) that no run had used for {UNUSED_DAYS} days")
    caches = dataset / ".blk" / "cache" / model_key(model.path, model.base)
    text_cache = TensorCache(caches / "text", on_unwritable=early, memory_if_unwritable=None)
    text_for = TextSource(family, text_cache, int8_text=_quantize_resident_text_encoder(family, config))
    every_item = items + held_out + [i for plan in (curriculum.stages if curriculum else []) for pool in plan.pools
                                     for i in pool]
    trigger = style_trigger(dataset)  # keeps its place when the caption's parts are shuffled
    orders = caption_orders(config, {i.caption for i in every_item}, trigger)
    fixed_orders = orders if config.data.shuffle_orders else {}  # what shuffling picks from (none: free shuffles)
    released = _release_text_encoders(family, config, {text for texts in orders.values() for text in texts},
                                      text_for, device)
    denoiser = family.denoiser.to(device)
    _add_adapter(family, config, workspace, model, from_file=not resume)  # a resume restores the saved weights
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params, device)
    scheduler = _lr_scheduler(config, optimizer)
    ema = Ema(denoiser, config.optimizer.ema_decay) if config.optimizer.ema_decay else None
    step = _restore(run_dir, denoiser, optimizer, scheduler, ema) if resume else 0
    if resume:
        _take_optimizer_settings(config, optimizer, scheduler)
    reached.step = step
    world.broadcast_parameters(params)  # replicas start identical (they are already: same seed, same state file)
    world.barrier()  # every process has read state/ before rank 0 may replace it
    if world.is_main:  # asked of an earlier attempt, which ended first; removed before the status that lets the
        (run_dir / SAMPLE_REQUEST).unlink(missing_ok=True)  # Train tab ask again (a request made since is kept)
    events.write("status", step, status="resumed" if step else "started", model=model.name, images=image_count,
                 processes=world.size, accumulation=config.schedule.gradient_accumulation)
    if restart:  # after the status: the Train tab shows the notices of the attempt that status begins
        _notice(events, 0, f"{run_dir.name} was stopped before its first checkpoint, so there is nothing to resume "
                           "from: it starts again from step 0 in the same folder")
    early.flush()
    if notice := optimizer_notice(config, device):
        _notice(events, step, notice)
    if dataset_changed:
        kept = set(began["images"]) & {i.image for i in held_out}
        held = "its held-out images stay held out" if kept == set(began["images"]) else \
            "its held-out images that are still there stay held out" if kept else \
            "its held-out images are gone, so others are held out from now on"
        _notice(events, step, f"{dataset.name} changed since this run began: {held}, and the images are drawn in "
                              "another order than an uninterrupted run's")
    starting = Path(config.adapter.init_from).expanduser() if config.adapter.init_from else None
    if starting and config.adapter.kind == "lora" and not resume and (left := text_encoder_modules(family, starting)):
        _notice(events, step, f"{starting.name} also adapts {left} text-encoder layer"
                              f"{'s' if left != 1 else ''}; a run trains the denoiser only, so they are left out")
    stage = None

    latent_cache = TensorCache(caches / "latents", enabled=config.data.cache_latents, on_unwritable=early,
                               memory_if_unwritable=pixel_budget())  # a read-only dataset need not encode each step
    latent_for = LatentSource(family, latent_cache, dataset, model.path, config.data,
                              *_transparent_encoder(config, workspace, model, device),
                              on_notice=early)
    last_checkpoint = None
    if resume and step and world.is_main and not checkpoint_path(run_dir, step).exists() and \
            max(checkpoint_steps(run_dir), default=0) < step:
        # killed between this state and its LoRA file (`_checkpoint`): the file it would have written (not when a
        # newer file exists: a run killed under the older order, file first, whose pruning would remove this one)
        last_checkpoint = _publish(family, config, run_dir, events, step, ema)
    elif resume and world.is_main:
        _list_unlisted(config, run_dir, events, step)

    def averaged():
        """Samples and validation see the weights a checkpoint publishes: the EMA weights when EMA is on."""
        return ema.applied() if ema is not None else contextlib.nullcontext()

    def validate(at_step: int) -> None:
        if world.is_main and held_out and config.data.validation_every:
            with averaged():
                loss = validation_loss(family, held_out, latent_for, text_for, device, dtype)
            events.write("eval", at_step, loss=loss)

    def sample(at_step: int, asked: bool = False) -> None:
        """A round of samples; one that runs out of memory is skipped with a notice naming the sample size (it
        ended the run, blaming the training settings, and a resume failed again at the next round)."""
        if not (world.is_main and config.sampling.prompts and (asked or config.sampling.every)):
            return
        try:
            with averaged():
                _samples(family, config, run_dir, events, at_step, text_for, asked)
            return
        except Exception as exc:  # noqa: BLE001  (out of memory only; anything else is raised again)
            if not is_out_of_memory(exc):
                raise
        free_device_memory()  # outside the handler: its traceback no longer holds the sample's tensors
        _notice(events, at_step, f"The samples of step {at_step} ran out of memory and were skipped; training goes "
                                 f"on. A smaller sample size (sampling.size, now {config.sampling.size} px) lets them "
                                 "fit", reason="out_of_memory")

    if step == 0:
        validate(0)
        sample(0)

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
            losses, used, failed = [], [], False
            try:
                for micro in world.micro_batches(accumulation):
                    draw = micro_batch(config, items, curriculum, step, micro, micro_per_step)
                    batch = draw.items
                    used += [item.image for item in batch]
                    generator = torch.Generator().manual_seed(draw.noise_seed)
                    torch.manual_seed(draw.dropout_seed)  # adapter dropout draws from the global RNG
                    rng = random.Random(draw.caption_seed)
                    entries = [latent_for(item) for item in batch]
                    latents = torch.stack([entry["params"][0] for entry in entries]).to(device, dtype)
                    mask = _stack_masks(entries) if config.data.alpha_mask else None
                    captions = [augment_caption(i.caption, rng, config.data.caption_dropout, config.data.shuffle_tokens,
                                                config.data.keep_tokens, fixed_orders.get(i.caption), trigger)
                                for i in batch]
                    # only the caption's fixed texts (as written, its `orders`, dropout's "") go to the disk cache:
                    # a free shuffle is new almost every step
                    texts = [text_for(c, keep=c == "" or c in orders[i.caption]) for c, i in zip(captions, batch)]
                    # on one device: cached texts come from the CPU, a shuffled one fresh from the encoder's
                    text = {k: torch.stack([t[k].to(device) for t in texts]) for k in texts[0]}
                    loss = family.loss(latents, text, generator, mask) / micro_per_step
                    loss.backward()
                    losses.append(loss.detach())  # read once per step: `.item()` waits for the GPU each time
            except Exception as exc:  # noqa: BLE001
                if world.size == 1 or not is_out_of_memory(exc):
                    raise
                failed = True  # this process ran out of memory: tell the others, so that all end here together
                optimizer.zero_grad(set_to_none=True)
            total = float(torch.stack(losses).sum()) if losses else 0.0
            total, failures = world.sum([total, float(failed)])
            if failures:
                raise _OutOfMemoryInAProcess()
            if not math.isfinite(total):
                raise FloatingPointError(f"the loss became {total} at step {step + 1}")
            world.sum_gradients(params)
            norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            if not math.isfinite(norm):  # a finite loss can still have inf gradients: never step on them
                raise FloatingPointError(f"a gradient became {norm} at step {step + 1}")
            optimizer.step()
            if ema is not None:
                ema.update(step)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            reached.step = step
            used = world.gather(used)
            memory = {}
            if device.startswith("cuda"):  # this step's peak (samples and validation count in the next step's)
                memory = {"gpu_memory": torch.cuda.max_memory_allocated(device)}
                torch.cuda.reset_peak_memory_stats(device)
            adapted = {}  # Prodigy adapts its step size d: the rate it really steps at is d·lr (lr itself stays 1.0)
            if "d" in optimizer.param_groups[0]:
                adapted = {"d": float(optimizer.param_groups[0]["d"])}
            lr = scheduler.get_last_lr()[0] * adapted.get("d", 1.0)
            events.write("loss", step, loss=total, lr=lr, images=used, **adapted, **memory)
            if world.is_main and (step % config.checkpoints.every == 0 or step == config.schedule.steps):
                last_checkpoint = _checkpoint(family, config, run_dir, events, optimizer, scheduler, step, ema)
            if config.data.validation_every and step % config.data.validation_every == 0:
                validate(step)
            sampled = bool(config.sampling.every) and step % config.sampling.every == 0
            if sampled:
                sample(step)
            if world.is_main and _take_sample_request(run_dir) and not sampled:
                sample(step, asked=True)
            # rank 0 decides; a stop during the last step is too late to stop anything: the run has finished
            if step < config.schedule.steps and \
                    world.agree(stop.is_set() or (stop_after is not None and step >= stop_after)):
                status = "stopped"
                break
    except FloatingPointError as exc:
        events.write("error", step, message=not_finite_sentence(exc, run_dir), reason="not_finite", cause=str(exc))
        status = "error"
    except Exception as exc:  # noqa: BLE001  (only out-of-memory is caught here; anything else is a bug to show)
        everywhere = isinstance(exc, _OutOfMemoryInAProcess)
        if not (everywhere or is_out_of_memory(exc)):
            raise
        if world.size > 1 and not everywhere:
            # One process failed on its own (e.g. the smaller of two GPUs, outside the micro-batches) while the
            # others wait in a collective: `run` says so from this process, and ends it; the launcher ends the others.
            raise
        events.write("error", step, message=out_of_memory_sentence(config, step, run_dir), reason="out_of_memory")
        status = "error"
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if world.is_main and status == "stopped" and \
            (last_checkpoint is None or not last_checkpoint.name.endswith(f"{step:06d}.safetensors")):
        last_checkpoint = _checkpoint(family, config, run_dir, events, optimizer, scheduler, step, ema)
    text_encodes = text_cache.misses + text_for.uncached
    events.write("status", step, status=status, latent_encodes=latent_cache.misses, text_encodes=text_encodes,
                 text_encoders_released=released)
    world.barrier()  # the others end when rank 0 has written everything
    world.close()
    return RunResult(run_dir, step, status, latent_cache.misses, text_encodes, last_checkpoint,
                     latent_for.pixels.misses)


def _largest_bucket(items: list[Item]) -> list[Item]:
    """The items of the largest bucket size: a probe of a few steps drew what the data order gave (on a mixed
    dataset, often 512 px squares only) and said a run fits whose 1024 px steps would not."""
    largest = max((item.width * item.height for item in items), default=0)
    return [item for item in items if item.width * item.height == largest]


class _EarlyNotices:
    """`_notice` for what is found before the attempt's status event (the Train tab shows the notices after the
    latest one): held until `flush`, said at once after it."""

    def __init__(self, events: EventLog, reached: _Reached):
        self.events, self.reached, self.held = events, reached, []

    def __call__(self, sentence: str) -> None:
        if self.held is None:
            _notice(self.events, self.reached.step, sentence)
        else:
            self.held.append(sentence)

    def flush(self) -> None:
        for sentence in self.held or []:
            _notice(self.events, self.reached.step, sentence)
        self.held = None


def _notice(events: EventLog, step: int, sentence: str, **fields) -> None:
    """Something the user should know that does not stop the run: one line on stderr and a `notice` event
    (`fields`: e.g. the reason the probe reads)."""
    if events.quiet:
        return
    print(f"notice: {sentence}.", file=sys.stderr, flush=True)
    events.write("notice", step, message=sentence + ".", **fields)


class _OutOfMemoryInAProcess(Exception):
    """A data-parallel process ran out of memory in this step's micro-batches; every process raises it."""


@dataclass(frozen=True)
class MicroBatch:
    items: list[Item]
    noise_seed: int  # noise and timesteps
    caption_seed: int  # caption dropout and shuffling
    dropout_seed: int = 0  # the global RNG's seed for this micro-batch (adapter dropout draws from it)


def micro_batch(config: TrainConfig, items: list[Item], curriculum: Curriculum | None, step: int, micro: int,
                micro_per_step: int) -> MicroBatch:
    """Micro-batch number `micro` (0 … micro_per_step − 1, over all processes) of step `step`: a function of
    these numbers only, so one process with accumulation W·A draws what W processes with A draw together."""
    batch = curriculum.batch(step, micro) if curriculum else \
        _batch(items, config, step * micro_per_step + micro, config.schedule.batch_size)
    return MicroBatch(batch, noise_seed(config.schedule.seed, step, micro, micro_per_step),
                      micro_seed("caption", config.schedule.seed, step, micro),
                      dropout_seed(config.schedule.seed, step, micro))


LINEAR_NOISE_SEEDS = 97  # micro-batches a step up to which `noise_seed`'s linear formula repeats no seed


def noise_seed(seed: int, step: int, micro: int, micro_per_step: int) -> int:
    """The seed of a micro-batch's noise and timesteps. `seed·1000003 + step·97 + micro` gave micro-batch 97 + j
    of a step the noise of micro-batch j of the next (8 GPUs × accumulation 16): past 97 micro-batches a step it
    is `micro_seed`'s, distinct for each; up to 97 the linear one still, so that runs resume as they began."""
    if micro_per_step > LINEAR_NOISE_SEEDS:
        return micro_seed("noise", seed, step, micro)
    return seed * 1_000_003 + step * 97 + micro


def micro_seed(kind: str, seed: int, step: int, micro: int) -> int:
    """A seed that is a function of (kind, seed, step, micro-batch) only, distinct for each (`seed·7919 + step·13
    + micro` repeated a caption draw once a step had more than 13 micro-batches, e.g. 8 GPUs × accumulation 2)."""
    import hashlib

    digest = hashlib.sha256(f"blk-{kind}|{seed}|{step}|{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dropout_seed(seed: int, step: int, micro: int) -> int:
    """The global RNG is seeded with it before each micro-batch, so a resumed run draws the dropout masks an
    unbroken one did."""
    return micro_seed("dropout", seed, step, micro)


def out_of_memory_sentence(config: TrainConfig, step: int, run_dir: Path | None = None) -> str:
    """What to change when a run runs out of memory, naming only the settings not already at their cheapest;
    with `run_dir`, whether a checkpoint is there to resume from."""
    kept = "the last checkpoint is kept and the run can resume" if run_dir is None else _what_is_kept(run_dir)
    return f"Out of memory at step {step + 1}: try {memory_tips(config)}; {kept}."


def not_finite_sentence(exc: FloatingPointError, run_dir: Path) -> str:
    """A loss or gradient that is no longer finite: what is kept and what to change."""
    if checkpoint_steps(run_dir):
        return (f"Training stopped: {exc}. {_what_is_kept(run_dir, good=True).capitalize()}; lower the learning "
                "rate (optimizer.lr in the run's config.yaml) and resume, or start again.")
    return (f"Training stopped: {exc}. No checkpoint was saved before it; lower the learning rate (optimizer.lr) "
            "and start the run again.")


def _what_is_kept(run_dir: Path, good: bool = False) -> str:
    """Which checkpoint a failed run leaves to resume from, or that none was saved (a resume then starts over:
    "the last checkpoint is kept" promised one that was not there)."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        return "no checkpoint was saved yet, so resuming it starts again from step 1"
    return f"the last {'good ' if good else ''}checkpoint (step {steps[-1]}) is kept and the run can resume from it"


def memory_tips(config: TrainConfig) -> str:
    """The settings that would lower the memory a run needs, cheapest first ("a lower rank" when all are set)."""
    tips = []
    if free_shuffles(config):  # the text encoders stay beside the denoiser (FLUX.1-dev: 19.0 GB against 14.6)
        tips.append("fixed token-shuffle orders (data.shuffle_orders 8)")
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
    return ", ".join(tips[:-1]) + " and " + tips[-1] if len(tips) > 1 else tips[0]


class Ema:
    """Exponential moving average of the trainable (adapter) weights, kept in fp32.

    Its decay warms up as diffusers' `EMAModel` does, (1 + t) / (10 + t) until that reaches `decay`: a fixed 0.99
    from step 1 kept 0.99^t of the adapter's starting weights in the average (8 % at the preset's first
    checkpoint, step 250; 37 % in a 100-step run), so early files were pulled back towards the untrained LoRA."""

    def __init__(self, denoiser, decay: float):
        self.decay = decay
        self.params = {name: p for name, p in denoiser.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step `step` (0 for the first)."""
        return min(self.decay, (1 + step) / (10 + step))

    def update(self, step: int) -> None:
        import torch

        decay = self.decay_at(step)
        with torch.no_grad():
            for name, p in self.params.items():
                self.shadow[name].mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    def state_dict_like(self, lora: dict) -> dict:
        """The LoRA state dict with the averaged values (peft's keys are the parameter names minus the adapter name)."""
        by_key = {name.replace(".default", ""): value for name, value in self.shadow.items()}
        return {key: by_key[key].to(value.dtype) for key, value in lora.items()}

    def shadow_state(self) -> dict:
        return {name: value.contiguous() for name, value in self.shadow.items()}

    def load_shadow(self, state: dict) -> None:
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

    @contextlib.contextmanager
    def applied(self):
        """The averaged weights in the model for a while (samples, validation), the trained ones back after:
        a step's samples then show what its checkpoint holds, and training continues from its own weights."""
        import torch

        with torch.no_grad():
            trained = {name: p.detach().clone() for name, p in self.params.items()}
            for name, p in self.params.items():
                p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(trained[name])


VALIDATION_DRAWS = 4  # fixed noise/timestep draws per held-out image


def split_validation(items: list[Item], count: int, held: list[str] | None = None,
                     as_before_the_file: bool = False) -> tuple[list[Item], list[Item]]:
    """Hold out `count` images (all flips and variants of each) from training, chosen evenly by name but never
    the last image of a folder (a curriculum stage drawing from a small `pairs/` lost all of it); they are
    validated as they are (no flip, no augmentation). `held`: the names a run began with (`HELD_OUT_FILE`),
    kept on resume where they still exist, so an image added since cannot push a held-out one into training.
    `as_before_the_file`: a run begun before that file resumes with the plain even pick it began with."""
    if count <= 0:
        return items, []
    images = sorted({item.image for item in items})
    if count >= len(images):
        raise UserError(f"Holding out {count} image(s) for validation leaves none to train on.")
    if as_before_the_file:
        chosen = {images[int(k * len(images) / count)] for k in range(count)}
    else:
        chosen = set(held or []) & set(images) or _held_out_evenly(images, count)
    return [i for i in items if i.image not in chosen], \
        [i for i in items if i.image in chosen and not i.flip and not i.variant]


def _held_out_evenly(images: list[str], count: int) -> set[str]:
    """`count` names spread evenly over the sorted `images`; from each even position, the next name whose
    folder keeps at least one other image (the plain even pick when no such name is left)."""
    folder_of = {image: image.rpartition("/")[0] for image in images}
    left = {folder: sum(1 for i in images if folder_of[i] == folder) for folder in set(folder_of.values())}
    stride, chosen = len(images) / count, []
    for k in range(count):
        start = int(k * stride)
        ring = images[start:] + images[:start]
        pick = next((i for i in ring if i not in chosen and left[folder_of[i]] > 1), None) \
            or next(i for i in ring if i not in chosen)
        chosen.append(pick)
        left[folder_of[pick]] -= 1
    return set(chosen)


HELD_OUT_FILE = "held_out.json"  # in the run folder: the held-out images and the dataset they were chosen from


def read_held_out(run_dir: Path) -> dict | None:
    try:
        record = json.loads((run_dir / HELD_OUT_FILE).read_text())
    except (OSError, ValueError):
        return None  # a run begun before this file existed: chosen again, as then (`split_validation`)
    return record if isinstance(record, dict) and isinstance(record.get("images"), list) else None


def dataset_fingerprint(items: list[Item]) -> str:
    """Which images (by name and content) a run trains on: a resume on a changed dataset is said."""
    import hashlib

    return hashlib.sha256("\n".join(sorted({f"{i.root}/{i.image}:{i.sha256}" for i in items})).encode()).hexdigest()


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
    """The model, frozen, with its VAE and text encoders on `device` and its denoiser still on the CPU: `_train`
    caches every text first and lets the encoders go, so Flux's T5 (~9.5 GB) and its transformer (~12 GB in int8)
    never share the GPU, and then moves the denoiser. (Free token shuffling makes new texts every step: the encoders
    then stay, beside the denoiser; with an int8 base Flux's T5 goes to int8: `_quantize_resident_text_encoder`.)"""
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.train.families import FluxFamily, SDXLFamily

    pipe = load_pipeline(model, "text2img", device, MemoryOptions(int8=config.model.int8_base), place=False)
    for component in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                      getattr(pipe, "transformer", None), getattr(pipe, "unet", None)):
        if component is not None:
            component.requires_grad_(False)
    for component in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if component is not None:
            component.to(device)
    family = FluxFamily(pipe, config.schedule.timestep_shift) if model.family == "flux" \
        else SDXLFamily(pipe, config.schedule.prediction)
    if config.model.gradient_checkpointing:
        family.denoiser.enable_gradient_checkpointing()
    return family


def _quantize_resident_text_encoder(family, config: TrainConfig) -> bool:
    """With token shuffling the text encoders stay on the device beside the denoiser for the whole run; with an
    int8 base, Flux's T5-XXL (~9.5 GB in bf16, as large as the int8 transformer) goes to int8 too (~4.8 GB),
    as ai-toolkit does by default: FLUX.1-dev at 1024 px then fits 24 GB. Without shuffling every text is
    encoded once at full precision and the encoders leave, so nothing is quantized. True when it quantized."""
    encoder = getattr(family.pipe, "text_encoder_2", None)
    if not (config.model.int8_base and free_shuffles(config) and family.name == "flux" and encoder is not None):
        return False
    from optimum.quanto import freeze, qint8, quantize

    quantize(encoder, weights=qint8)  # on the device already: quick, and the bf16 weights are freed as it goes
    freeze(encoder)
    return True


def _add_adapter(family, config: TrainConfig, workspace: Workspace, model, from_file: bool = True) -> None:
    """Frozen base LoRAs first (e.g. LayerDiffuse's layer LoRA), then the trainable adapter, from
    `adapter.init_from` when set and `from_file` (a resume overwrites those weights with its saved state, so the
    starting file may have been moved since)."""
    import torch

    from blk.train.adapters import TRAINABLE, add_base_loras, freeze_all_but_trainable, init_trainable_from, peft_config

    denoiser = family.denoiser
    base = add_base_loras(family, [base_lora_path(name, workspace, model) for name in config.model.base_loras])
    torch.manual_seed(config.schedule.seed)  # the adapter's initial weights
    with warnings.catch_warnings():  # peft warns that a second adapter joins the base LoRAs: that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        denoiser.add_adapter(peft_config(config.adapter), adapter_name=TRAINABLE)
    if config.adapter.init_from and from_file:
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


def check_starting_files(config: TrainConfig, workspace: Workspace, model, from_file: bool = True) -> None:
    """The LoRA files the run's adapters start from (`model.base_loras`, and `adapter.init_from` when `from_file`),
    read from their headers (their tensors once, for NaN): one sentence for a file that is missing, damaged or
    empty, of the other family, or
    that the trainable adapter cannot start from (a LoKr for a LoRA, another rank). In a second or so and without
    the model, so before a run folder exists (`process.check_dataset`) and in the trainer before its folder and
    caches (the command line): found when the file was loaded, it came after the model and every caption."""
    from blk.train.adapters import starting_file_problem

    files = [("adapter.init_from", Path(config.adapter.init_from).expanduser(), config.adapter)] \
        if config.adapter.init_from and from_file else []
    files += [("model.base_loras", base_lora_path(name, workspace, model), None) for name in config.model.base_loras]
    for field, path, adapter in files:
        if not path.is_file():
            raise UserError(f"There is no LoRA file at {path} ({field}).")
        if problem := starting_file_problem(path, model.family, adapter):
            raise UserError(problem)


def base_lora_path(name: str, workspace: Workspace, model) -> Path:
    if name.strip().lower() == "layerdiffuse":
        from blk.stencil.layerdiffuse import find_weights

        return find_weights(workspace, model).lora
    return Path(name).expanduser()


def _optimizer(config: TrainConfig, params, device: str):
    import torch

    opt = config.optimizer
    if opt.name == "prodigy":
        from prodigyopt import Prodigy

        # it prints "Using decoupled weight decay" to stdout: in every trainer log, and the probe's answer when
        # it failed (the Train tab read that line as the reason)
        with contextlib.redirect_stdout(io.StringIO()):
            return Prodigy(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, decouple=True,
                           use_bias_correction=True, safeguard_warmup=True, d0=opt.d0, d_coef=opt.d_coef)
    if opt.name == "adamw8bit" and device.startswith("cuda"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)  # adamw8bit off CUDA too


def optimizer_notice(config: TrainConfig, device: str) -> str:
    """The sentence for an optimizer setting this device cannot honour ("" when none): AdamW 8-bit needs CUDA,
    so elsewhere the run uses plain AdamW (same update, 32-bit state) and says so rather than silently."""
    if config.optimizer.name == "adamw8bit" and not device.startswith("cuda"):
        return f"AdamW 8-bit needs a CUDA GPU, so this run on {device} uses plain AdamW (same settings, more memory)"
    return ""


def _lr_scheduler(config: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    name = {"constant": "constant_with_warmup", "cosine": "cosine", "polynomial": "polynomial"}[config.schedule.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=config.schedule.warmup_steps,
                         num_training_steps=config.schedule.steps)


def _take_optimizer_settings(config: TrainConfig, optimizer, scheduler) -> None:
    """After a resume, the config's learning rate (on its schedule, of the length now configured), betas and
    weight decay rather than the saved ones: an artist who lowers the learning rate after a NaN loss (as its
    message says) resumes with the lower one. Settings that did not change are left exactly as restored, so such
    a resume stays bit-identical."""
    opt = config.optimizer
    if any(base != opt.lr for base in scheduler.base_lrs):
        scheduler.base_lrs = [opt.lr for _ in scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["initial_lr"] = opt.lr
    # The next step's rate from the schedule as configured now: restored, it was the old schedule's, so a resume to
    # another length ("Resume to step", --steps) trained its first step at the old rate (a finished cosine run's 0:
    # a step that changed nothing). Computed as the scheduler computes it, so an unchanged resume sets nothing.
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    if rates != [group["lr"] for group in optimizer.param_groups]:
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates
    for group in optimizer.param_groups:
        if group.get("weight_decay") != opt.weight_decay:
            group["weight_decay"] = opt.weight_decay
        if "betas" in group and tuple(group["betas"][:2]) != tuple(opt.betas):
            group["betas"] = (*opt.betas, *group["betas"][2:])


def _batch(items: list[Item], config: TrainConfig, micro_index: int, batch_size: int) -> list[Item]:
    """The items of one micro-batch: the `micro_index`-th of the run, all of one bucket size (`bucket_batches`)."""
    epoch, position = divmod(micro_index, batch_count(items, batch_size))
    return [items[i] for i in bucket_batches(items, batch_size, config.schedule.seed, epoch)[position]]


class _ChangedSinceScan(Exception):
    """An image's file no longer has the content the run's scan hashed (edited during the run)."""

    def __init__(self, sha256: str):
        super().__init__(sha256)
        self.sha256 = sha256


class LatentSource:
    """Each item's latent entry, made once and cached: {"params": VAE posterior parameters} and, with
    `alpha_mask` for an image with transparency, {"mask": alpha on the latent grid}.

    Pixels come from `blk.train.pixels` (bucket crop, alpha-safe augmented variant, flip). Then either
    they are flattened over white for the base VAE (`transparency: flatten`), or, with `layerdiffuse`,
    LayerDiffuse's encoder turns the RGBA into the latent the layer LoRA works in; that latent is exact
    (no sampling), stored as a posterior with a vanishing variance so the families treat it alike.
    """

    def __init__(self, family, cache: TensorCache, dataset: Path, model_path: Path, data, encoder=None,
                 encoder_id: str = "", on_notice=None):
        self.family, self.cache, self.dataset, self.model_path, self.data = family, cache, dataset, model_path, data
        self.encoder, self.encoder_id, self.on_notice = encoder, encoder_id, on_notice
        self.changed: set[str] = set()  # images edited since the scan, said once each
        self.model_id = model_key(model_path)  # once: it reads the encoders' file times
        # without the latent cache, every step encodes again: the pixels need not be decoded again too
        self.pixels = PixelMemory(0 if cache.enabled else pixel_budget())
        if data.transparency == "layerdiffuse" and encoder is None:
            raise ValueError("transparency: layerdiffuse needs the LayerDiffuse encoder")

    def key(self, item: Item) -> str:
        key = f"{item.sha256}|{item.width}x{item.height}|flip={item.flip}|{self.model_id}"
        if self.data.alpha_mask:
            key += "|alpha-mask"
        if item.variant:
            a = self.data.augment
            # "|once": zoomed in one resample from the source; entries of the softer earlier pixels are not read
            key += f"|variant={item.variant}:{a.rotate:g},{a.scale:g},{a.shift:g},{a.grain:g}|once"
        if self.data.transparency == "layerdiffuse":
            key += f"|layerdiffuse={self.encoder_id}"
        return key

    def __call__(self, item: Item) -> dict:
        try:
            return self.cache.get_or_make(self.key(item), lambda: self._encode(item))
        except _ChangedSinceScan as changed:
            # encoded and cached under its new content's hash: under the old one, the old version's entry would
            # be this version's pixels, and a later run of the old version would train on them
            if item.image not in self.changed:
                self.changed.add(item.image)
                if self.on_notice is not None:
                    self.on_notice(f"{item.image} changed since the run began; from now on the run trains its new "
                                   f"version, cut to the old one's {item.width}×{item.height} bucket (stop and "
                                   "resume the run to bucket it anew)")
            return self(dataclasses.replace(item, sha256=changed.sha256))

    def _encode(self, item: Item) -> dict:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from blk.data.images import open_image
        from blk.train.pixels import bucket_pixels, jitter_for, over_background

        def pixels():
            path = (Path(item.root) if item.root else self.dataset) / item.image
            content = cached_file_sha256(path)  # the scan's hash, or an edit's (hashed once per file version)
            if content != item.sha256:
                raise _ChangedSinceScan(content)
            image = open_image(path)
            if image.width < item.width or image.height < item.height:  # edited smaller since: never upscale
                raise UserError(f"{item.image} changed since the run began and is now {image.width}×{image.height} "
                                f"px, smaller than its {item.width}×{item.height} bucket; resume the run to train on "
                                "it as it is now.")
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
            inside = _inside_dataset(folder, dataset, workspace)
            if inside == "":
                pool = list(items)
            elif inside is not None:  # from the items already split: held-out images stay out
                pool = [i for i in items if i.image.startswith(inside + "/")]
            else:
                if folder not in loaded:
                    try:
                        extra = workspace.dataset_folder(folder)
                    except UserError:  # "singles is not a folder": which stage, and where it was looked for
                        expected = _stage_folders(config)
                        holds = f"this curriculum expects {dataset.name} to hold the folders {_listed(expected)}" \
                            if len(expected) > 1 else f"put a {folder}/ folder in {dataset.name}"
                        raise UserError(
                            f"{label} draws from {folder}, which is neither a sub-folder of {dataset.name} nor a "
                            f"dataset of its own; {holds}, or change the stages' folders.") from None
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


def _stage_folders(config: TrainConfig) -> list[str]:
    """The folders inside the dataset that a config's stages draw from ("singles/", "parts/pairs/"; other
    datasets, given by absolute path, are not the dataset's)."""
    folders = (source.folder.strip().rstrip("/") for stage in config.data.stages for source in stage.sources)
    return list(dict.fromkeys(f"{name}/" for name in folders
                              if name not in ("", ".") and not Path(name).expanduser().is_absolute()))


def _listed(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _inside_dataset(folder: str, dataset: Path, workspace: Workspace) -> str | None:
    """A stage's source folder as a path inside the run's dataset ("" for the dataset itself, "singles" for
    "./singles", "/abs/…/mychar/singles" or "mychar" when that is the dataset), or None for another dataset.
    Loaded again as another dataset, the run's own images came back with its held-out ones among them."""
    if not folder or folder == ".":
        return ""
    path = Path(folder).expanduser()
    if not path.is_absolute() and (dataset / path).is_dir():  # by name, as the scan lists it (links not followed)
        relative = os.path.normpath(folder)
        return None if relative.startswith("..") else "" if relative == "." else Path(relative).as_posix()
    if not path.is_absolute():
        try:
            path = workspace.dataset_folder(folder)
        except UserError:
            return None  # said by the loader, as before
    try:
        relative = path.resolve().relative_to(dataset.resolve())
    except (OSError, ValueError):
        return None
    return "" if str(relative) == "." else relative.as_posix()


def free_shuffles(config: TrainConfig) -> bool:
    """Whether token shuffling draws a new order every step (so the text encoders must stay loaded)."""
    return config.data.shuffle_tokens and not config.data.shuffle_orders


def caption_orders(config: TrainConfig, captions: set[str], pinned: str = "") -> dict[str, list[str]]:
    """Each caption's fixed texts: its `shuffle_orders` orders when set (`data.shuffled_orders`), else itself."""
    from blk.train.data import shuffled_orders

    if not (config.data.shuffle_tokens and config.data.shuffle_orders):
        return {caption: [caption] for caption in captions}
    return {caption: shuffled_orders(caption, config.data.shuffle_orders, config.data.keep_tokens, pinned)
            for caption in captions}


def _release_text_encoders(family, config: TrainConfig, captions: set[str], text_for, device: str) -> bool:
    """Cache every text the run can use, then let the text encoders go: Flux's T5-XXL alone is ~9.5 GB in bf16,
    SDXL's two CLIP encoders ~1.6 GB in fp16, memory the denoiser's activations can use instead.

    Without token shuffling a step's text is one of the captions, or "" when caption dropout
    draws it, and samples use the sample prompts (and SDXL's negative "" where the model does
    not zero it: `sample_texts`); all are encoded now (or read from the dataset's text cache),
    so nothing needs the encoders afterwards; with `shuffle_orders`, `captions` holds every order
    of every caption. Free token shuffling makes new texts every step, so the encoders stay.
    """
    import gc

    import torch

    if free_shuffles(config):
        return False
    needed = set(captions) | {text for prompt in config.sampling.prompts for text in family.sample_texts(prompt)} | \
        ({""} if config.data.caption_dropout else set())
    for caption in sorted(needed):
        text_for(caption)
    family.pipe.text_encoder = None
    family.pipe.text_encoder_2 = None
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return True


class TextSource:
    """Each caption's text embeddings. A caption as written (and caption dropout's "") is cached on disk, so a
    second run does not encode it again; a shuffled caption (`keep=False`) is encoded and not cached: it is new
    almost every step and would fill the dataset's cache with entries nothing reads again."""

    def __init__(self, family, cache: TensorCache, int8_text: bool = False):
        self.family, self.cache = family, cache
        # an int8 text encoder's embeddings differ a little from full precision's: cached under keys of their own
        self.key_prefix = f"{family.name}|int8-text|" if int8_text else f"{family.name}|"
        self.uncached = 0  # encodes that bypassed the cache

    def __call__(self, caption: str, keep: bool = True) -> dict:
        if not keep:
            self.uncached += 1
            return self._encode(caption)
        return self.cache.get_or_make(self.key_prefix + caption, lambda: self._encode(caption))

    def _encode(self, caption: str) -> dict:
        import torch

        if self.family.pipe.text_encoder is None:  # released after caching: the cache was emptied under the run
            raise UserError(f"The text cache in {self.cache.folder} lost entries during the run; resume the run "
                            "to encode its captions again.")
        with torch.no_grad():
            return self.family.encode_text(caption)


SAVE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _checkpoint(family, config: TrainConfig, run_dir: Path, events: EventLog, optimizer, scheduler, step: int,
                ema=None) -> Path:
    """The state to resume from, then the LoRA file for this step (the EMA weights when on), each written atomically.

    In that order: a kill between the two leaves a state whose LoRA file is missing, which the resume then writes
    (`_publish`), so no step since the newest checkpoint file is ever trained again. (The other order let a kill
    leave a checkpoint file newer than the state, and the resume redid the steps up to it.)"""
    _save_state(run_dir, family.denoiser, optimizer, scheduler, ema, step)
    return _publish(family, config, run_dir, events, step, ema)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}.safetensors"


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the run's checkpoint files."""
    names = (path.stem.removeprefix("step-") for path in (run_dir / "checkpoints").glob("step-*.safetensors"))
    return sorted(int(name) for name in names if name.isdigit())


def _save_state(run_dir: Path, denoiser, optimizer, scheduler, ema, step: int) -> None:
    """state/: the raw adapter, optimizer, scheduler, EMA and step, swapped in whole (state.old covers the swap)."""
    import tempfile

    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    lora = get_peft_model_state_dict(denoiser)
    state_tmp = Path(tempfile.mkdtemp(prefix=".blk-tmp-state-", dir=run_dir))
    save_file({k: v.contiguous() for k, v in lora.items()}, str(state_tmp / "adapter.safetensors"))
    torch.save(optimizer.state_dict(), state_tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), state_tmp / "scheduler.pt")
    if ema is not None:
        save_file(ema.shadow_state(), str(state_tmp / "ema.safetensors"))
    (state_tmp / "trainer.json").write_text(json.dumps({"step": step}))
    atomic.sync_folder(state_tmp)  # on disk before the swap: a power cut (not only a kill) then leaves a whole state
    state, old = run_dir / "state", run_dir / "state.old"
    if state.exists():
        shutil.rmtree(old, ignore_errors=True)
        state.rename(old)
    state_tmp.rename(state)
    atomic.sync_folder(run_dir, files=False)  # the renames themselves
    shutil.rmtree(old, ignore_errors=True)


def _publish(family, config: TrainConfig, run_dir: Path, events: EventLog, step: int, ema=None) -> Path:
    """The LoRA file of `step` from the adapter's current weights (their EMA when on), then the checkpoint event and
    the pruning of older files."""
    import torch
    from peft.utils import get_peft_model_state_dict

    from blk.train.lora_file import ABOUT_EMA, ABOUT_MODEL, ABOUT_STEP, lora_file_bytes

    lora = get_peft_model_state_dict(family.denoiser)
    published = published_weights(family.denoiser, ema.state_dict_like(lora) if ema is not None else lora)
    save_dtype = getattr(torch, SAVE_DTYPES[config.checkpoints.dtype])
    published = {name: tensor.to(save_dtype) for name, tensor in published.items()}
    target = checkpoint_path(run_dir, step)
    about = {ABOUT_STEP: step, ABOUT_MODEL: config.model.name, ABOUT_EMA: config.optimizer.ema_decay if ema else 0}
    atomic.write_bytes(target, lora_file_bytes(family.name, published, adapter_metadata(family.denoiser, config.adapter),
                                               config.adapter.kind, about))
    events.write("checkpoint", step, path=str(target.relative_to(run_dir)))
    _prune(target.parent, config)
    return target


def _list_unlisted(config: TrainConfig, run_dir: Path, events: EventLog, step: int) -> None:
    """A kill between a checkpoint's file and its event left a file the Train tab does not list and no pruning
    done: on resume, its event (at its own step, none after the state's) and the pruning it would have had."""
    listed = {event["step"] for event in events.read() if event["kind"] == "checkpoint"}
    unlisted = [s for s in checkpoint_steps(run_dir) if s not in listed and s <= step]
    for unlisted_step in unlisted:
        events.write("checkpoint", unlisted_step,
                     path=str(checkpoint_path(run_dir, unlisted_step).relative_to(run_dir)))
    if unlisted:
        _prune(run_dir / "checkpoints", config)


def _prune(checkpoints: Path, config: TrainConfig) -> None:
    """Keep the newest `keep` checkpoints, plus those pinned in the config or from the Review tab."""
    from blk.train.pins import pinned_steps

    def pinned() -> set[str]:
        steps = set(config.checkpoints.pinned) | pinned_steps(checkpoints.parent)
        return {f"step-{s:06d}.safetensors" for s in steps}

    files = sorted(checkpoints.glob("step-*.safetensors"))
    unpinned = [f for f in files if f.name not in pinned()]
    for old in unpinned[:-config.checkpoints.keep]:
        if old.name not in pinned():  # read again at each file: a pin made from Review meanwhile keeps it
            old.unlink(missing_ok=True)


def _remove_temporaries(run_dir: Path) -> None:
    for leftover in list(run_dir.glob(atomic.TEMP_PREFIX + "*")) + list((run_dir / "checkpoints").glob(atomic.TEMP_PREFIX + "*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _saved_state(run_dir: Path) -> Path | None:
    """state/, or state.old if a crash hit the swap between them; None before the first checkpoint."""
    for folder in (run_dir / "state", run_dir / "state.old"):
        if all((folder / name).exists() for name in STATE_FILES):
            return folder
    return None


def _state_folder(run_dir: Path) -> Path:
    folder = _saved_state(run_dir)
    if folder is None:
        raise UserError(f"{run_dir.name} has no saved state to resume from (no checkpoint was written yet).")
    return folder


def saved_step(run_dir: Path) -> int:
    """The step a resume starts from: its saved state's (0 without one: the run starts again). The events may
    go further, since a kill loses the steps after the last checkpoint."""
    folder = _saved_state(run_dir)
    if folder is None:
        return 0
    try:
        return int(json.loads((folder / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # unreadable: the resume itself says so


def _restore(run_dir: Path, denoiser, optimizer, scheduler, ema=None) -> int:
    """Load the saved state (state/, or state.old if a crash hit the swap); return its step."""
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = _state_folder(run_dir)
    set_peft_model_state_dict(denoiser, load_file(str(folder / "adapter.safetensors")))
    # read onto the CPU: load_state_dict moves each state to its parameter's device; as saved, a GPU run's
    # state would need that very GPU (none on another machine; cuda:0 for every process of a multi-GPU run)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True))
    if ema is not None:
        if not (folder / "ema.safetensors").exists():
            raise UserError(f"{run_dir.name} was saved without EMA; resume it with ema_decay 0.")
        ema.load_shadow(load_file(str(folder / "ema.safetensors")))
    return int(json.loads((folder / "trainer.json").read_text())["step"])


def _take_sample_request(run_dir: Path) -> bool:
    """Whether "Sample now" was pressed since the last step (the request is used up)."""
    try:
        (run_dir / SAMPLE_REQUEST).unlink()
    except FileNotFoundError:
        return False
    return True


def _samples(family, config: TrainConfig, run_dir: Path, events: EventLog, step: int, text_for,
             asked: bool = False) -> None:
    """The sample prompts at fixed seeds, from their cached embeddings (the text encoders may be gone).
    `asked`: drawn for "Sample now" rather than the schedule (said in the event)."""
    import torch

    denoiser = family.denoiser
    denoiser.eval()
    size = config.sampling.size // 64 * 64
    paths = []
    with torch.no_grad(), _training_after(denoiser):
        for index, prompt in enumerate(config.sampling.prompts):
            prompt_inputs = family.prompt_inputs(*[text_for(text) for text in family.sample_texts(prompt)])
            image = family.pipe(**prompt_inputs, width=size, height=size, num_inference_steps=config.sampling.steps,
                                guidance_scale=config.sampling.guidance,
                                generator=torch.Generator("cpu").manual_seed(config.sampling.seed + index)).images[0]
            path = run_dir / "samples" / f"step-{step:06d}-{index}.png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic.write_bytes(path, buffer.getvalue())
            paths.append(str(path.relative_to(run_dir)))
    events.write("sample", step, paths=paths, prompts=config.sampling.prompts, **({"asked": True} if asked else {}))


@contextlib.contextmanager
def _training_after(denoiser):
    """The denoiser back in training mode however sampling ends (dropout was left off after a failed sample)."""
    try:
        yield
    finally:
        denoiser.train()
