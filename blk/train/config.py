"""The training config: one schema for presets (`presets/*.yaml`), the Train tab and `python -m blk train`.

Settings are grouped by what they mean (model, data, adapter, optimizer,
schedule, sampling, checkpoints), as in ai-toolkit's one-YAML-per-job; a run
folder keeps the exact resolved config that produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from blk.yaml_io import load_model, save_model

POLYNOMIAL_END = 1e-7  # diffusers' `get_polynomial_decay_schedule_with_warmup` default lr_end
# The seeds' range, as Sketch's and the command line's (`blk.generate.sketch.MAX_SEED`): a larger one passed the
# schema and crashed the run at its first step, after loading (torch seeds with the seed × 1000003 + …).
MAX_SEED = 2**32 - 1


class Strict(BaseModel):
    """Every section refuses keys it does not know: a misspelt setting must not silently train with a default."""

    model_config = ConfigDict(extra="forbid")


class ModelSection(Strict):
    name: str = "tiny-flux"  # a known model name, a registered one, or a local path
    int8_base: bool = False  # quantize the frozen base to int8 (optimum-quanto)
    gradient_checkpointing: bool = False
    # LoRAs applied under the trainable adapter as frozen, always-active adapters (never fused into the weights,
    # which int8 quantization forbids): a .safetensors path, or "layerdiffuse" for the family's LayerDiffuse LoRA
    # (BLK-Stencil)
    base_loras: list[str] = Field(default_factory=list)


class StageSource(Strict):
    """Where a stage draws from: a sub-folder of the dataset ("" = all of it), or another dataset folder."""
    folder: str = ""
    fraction: float | None = Field(None, gt=0.0, le=1.0)  # share of the stage's samples; None: an equal share of the rest


class Stage(Strict):
    """One curriculum stage: active from step `start` until the next stage starts."""
    start: int = Field(0, ge=0)
    name: str = ""
    sources: list[StageSource] = Field(default_factory=lambda: [StageSource()], min_length=1)

    def fractions(self) -> list[float]:
        given = sum(s.fraction for s in self.sources if s.fraction is not None)
        rest = [s for s in self.sources if s.fraction is None]
        share = (1.0 - given) / len(rest) if rest else 0.0
        return [s.fraction if s.fraction is not None else share for s in self.sources]

    @model_validator(mode="after")
    def _fractions_add_up(self):
        given = sum(s.fraction for s in self.sources if s.fraction is not None)
        unset = sum(1 for s in self.sources if s.fraction is None)
        label = self.name or f"the stage starting at step {self.start}"
        if unset and given >= 1.0 - 1e-6:
            raise PydanticCustomError("config", f"in {label} the given fractions already add up to {given:g}, leaving nothing for "
                             f"the sources without one")
        if not unset and abs(given - 1.0) > 1e-3:
            raise PydanticCustomError("config", f"in {label} the fractions add up to {given:g}; they must add up to 1")
        folders = [s.folder for s in self.sources]
        if len(set(folders)) != len(folders):
            raise PydanticCustomError("config", f"{label} names the same folder twice")
        return self


class AugmentSection(Strict):
    """Alpha-safe augmentation (`blk.train.pixels`): each image also trains as `variants` copies, each with its
    own fixed rotation, scale, shift and grain drawn within these limits (cached like the original)."""
    variants: int = Field(0, ge=0, le=16)  # 0: off
    rotate: float = Field(0.0, ge=0.0, le=45.0)  # degrees, either way
    scale: float = Field(0.0, ge=0.0, lt=0.5)  # fraction, bigger or smaller
    shift: float = Field(0.0, ge=0.0, le=0.25)  # fraction of the side, any direction
    grain: float = Field(0.0, ge=0.0, le=0.2)  # standard deviation of grain on colour (0..1); alpha untouched


class DataSection(Strict):
    dataset: str = ""  # a dataset name under workspace/datasets, or a folder
    # bucket areas (side of the square); 64 px is the least the families' latent grids train at
    resolutions: list[Annotated[int, Field(ge=64, le=4096)]] = Field(default_factory=lambda: [512], min_length=1)
    repeats: int = Field(1, ge=1)
    flip: bool = False  # horizontal flip doubles the data
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0)
    shuffle_tokens: bool = False
    keep_tokens: int = Field(1, ge=0)  # comma-separated tokens kept in place (the trigger) when shuffling
    # 0: a new order every step, so the text encoders stay loaded beside the denoiser; N ≥ 2: N orders of each
    # caption (the first as written), encoded once before training, and the encoders leave (FLUX.1-dev, the
    # Conceptor preset on an H100: 14.6 GB and 1.15 s/step instead of 19.0 GB and 1.73 s). Each order is a text
    # in the dataset's cache (~4 MB for Flux's 512 T5 tokens): 16 orders of 100 captions are ~6.4 GB.
    shuffle_orders: int = Field(0, ge=0, le=16)
    cache_latents: bool = True
    validation_images: int = Field(0, ge=0)  # held out from training, for the validation loss
    validation_every: int = Field(0, ge=0)  # steps; 0: no validation loss
    # Curriculum (the paper's Stencil: singles, then + pairs, then + triples): each stage is active from its
    # start step to the next one's; empty: the whole dataset throughout
    stages: list[Stage] = Field(default_factory=list)
    alpha_mask: bool = False  # RGBA images: weight the loss by alpha on the latent grid (transparent pixels count 0)
    # how RGBA images become latents: flattened over white, or LayerDiffuse's transparent encoding (for a style
    # LoRA trained over the frozen layer LoRA: the latents carry the transparency the decoder reads back)
    transparency: Literal["flatten", "layerdiffuse"] = "flatten"
    augment: AugmentSection = Field(default_factory=AugmentSection)

    @model_validator(mode="after")
    def _stages_in_order(self):
        if self.stages:
            starts = [stage.start for stage in self.stages]
            if starts[0] != 0:
                raise PydanticCustomError("config", f"the first stage must start at step 0, not {starts[0]}")
            for before, after in zip(starts, starts[1:]):
                if after <= before:
                    raise PydanticCustomError("config", f"stages must be in order of their start steps without "
                                              f"overlap (a stage starting at {after} follows one starting at {before})")
            if self.repeats != 1:  # it would do nothing, without a word
                raise PydanticCustomError("config", "data.repeats has no effect with curriculum stages (each stage's "
                                          "fractions set how often its folders are drawn); set it to 1")
        return self

    def validation_problem(self) -> str:
        """Why a new run's validation settings do nothing ("" when they do): held-out images without a validation
        loss were kept from training for nothing; a validation loss without held-out images was never computed.
        Asked of new runs only (`process.check_dataset`, the trainer's start): a run that began so resumes."""
        if self.validation_images and not self.validation_every:
            held = "1 validation image is" if self.validation_images == 1 else \
                f"{self.validation_images} validation images are"
            return (f"{held} held out from training but no validation loss is computed; set data.validation_every "
                    "(or data.validation_images to 0).")
        if self.validation_every and not self.validation_images:
            return ("A validation loss needs held-out images; set data.validation_images (or data.validation_every "
                    "to 0).")
        return ""

    @model_validator(mode="after")
    def _shuffle_orders_shuffle(self):
        if self.shuffle_orders == 1:
            raise PydanticCustomError("config", "shuffle orders per caption must be 0 (a new order every step) or "
                                      "at least 2 (one order is the caption as written: no shuffling)")
        return self


class AdapterSection(Strict):
    kind: Literal["lora", "lokr"] = "lora"
    # a file to start from instead of random weights: for a LoRA, a LoRA file (diffusers/peft, kohya or
    # ai-toolkit names); for a LoKr, a LyCORIS / kohya LoKr file
    init_from: str = ""
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0.0)  # 0 would scale the adapter's update to nothing
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    factor: int = -1  # LoKr only: the Kronecker split (LyCORIS' factor; -1 splits each layer as evenly as it can)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    @model_validator(mode="after")
    def _factor_is_a_split(self):
        if self.factor == 0 or self.factor < -1:
            raise PydanticCustomError("config", "adapter.factor is -1 (automatic) or a positive number")
        return self


class OptimizerSection(Strict):
    name: Literal["prodigy", "adamw", "adamw8bit"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    # Prodigy (the paper's values): decoupled decay, bias correction, safeguard warmup, d0, d_coef
    d0: float = Field(1e-5, gt=0.0)  # 0: Prodigy's step size never moves from it
    d_coef: float = Field(2.0, gt=0.0)
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # 0: off; checkpoints then hold the averaged adapter


class ScheduleSection(Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    # data-parallel trainer processes, one per GPU (`accelerate launch`); a step then trains gpus × gradient_accumulation
    # micro-batches, exactly those of one GPU with gpus × gradient_accumulation (effective batch: × batch_size);
    # a resume may change both, keeping their product (`process.regroup`)
    gpus: int = Field(1, ge=1)
    lr_schedule: Literal["constant", "cosine", "polynomial"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    timestep_shift: float = Field(3.0, gt=0.0)  # Flux: shifted sigmoid sampling of timesteps (0: clean latents)
    # SDXL's target; None: the model's own (its scheduler's prediction_type), right for a v-prediction fine-tune
    prediction: Literal["epsilon", "v_prediction"] | None = None


class SamplingSection(Strict):
    every: int = Field(0, ge=0)  # 0: no samples during training
    prompts: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int = Field(20, ge=1)
    guidance: float = Field(3.5, ge=0.0)
    size: int = Field(512, ge=64, le=4096)  # drawn at a multiple of 64 at or below it


class CheckpointSection(Strict):
    every: int = Field(250, ge=1)
    keep: int = Field(16, ge=1)
    pinned: list[int] = Field(default_factory=list)  # steps never pruned
    # the published LoRA files (the paper saves fp16: half the size, loads anywhere); resume state stays fp32
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"


class TrainConfig(Strict):
    name: str = "run"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    checkpoints: CheckpointSection = Field(default_factory=CheckpointSection)

    @model_validator(mode="after")
    def _polynomial_decays_below_the_rate(self):
        if self.schedule.lr_schedule == "polynomial" and self.optimizer.lr <= POLYNOMIAL_END:
            raise PydanticCustomError("config", f"the polynomial schedule decays the learning rate to "
                                      f"{POLYNOMIAL_END:g}, so optimizer.lr must be above it")
        return self

    def with_steps(self, steps: int) -> TrainConfig:
        """This config for a run of `steps` steps, with curriculum stage starts and the warmup scaled in
        proportion (stages at 0/2000/4000 of 6000 become 0/500/1000 of 1500; a 500-step warmup of 10000
        becomes 3 of 60, where kept whole it would be the entire run), stages kept in order; validated."""
        data = self.model_dump()
        old = self.schedule.steps
        data["schedule"]["steps"] = steps
        if steps != old and self.schedule.warmup_steps:
            data["schedule"]["warmup_steps"] = max(1, round(self.schedule.warmup_steps * steps / old))
        if data["data"]["stages"] and steps != old:
            previous = -1
            for stage in data["data"]["stages"]:
                stage["start"] = max(round(stage["start"] * steps / old), previous + 1)
                previous = stage["start"]
        return TrainConfig.model_validate(data)

    def unreachable_stages(self) -> list[str]:
        """One sentence for each curriculum stage that starts at or after the last step: it would never run."""
        return [f"stage {number} ({stage.name or 'unnamed'}) starts at step {stage.start} but the run ends at step "
                f"{self.schedule.steps}, so it never starts"
                for number, stage in enumerate(self.data.stages, start=1) if stage.start >= self.schedule.steps]


def load_config(path: str | Path) -> TrainConfig:
    from blk.upscale.preset import PRESETS, UpscalePreset

    shipped = Path(path).resolve().parent == PRESETS  # named by its name; any other file by its path
    return load_model(path, TrainConfig, elsewhere={UpscalePreset: "an upscale preset: use it with `python -m blk "
                                                    f"upscale IMAGE --preset {Path(path).stem if shipped else path}` "
                                                    "or the Upscale tab's Preset menu."})


def save_config(config: TrainConfig, path: str | Path) -> None:
    save_model(config, path)
