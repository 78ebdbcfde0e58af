"""Upscale presets (`presets/upscale-*.yaml`): one job's settings in one schema, which the Upscale tab loads into
its form and `python -m blk upscale --preset` into its flags. Two carry the paper's recipes (§2.3): Real-ESRGAN
×4 with tile 512, and the diffusion path's texture passes A and B.

A preset holds what does not depend on the image: the path, the models by name, the scale and the passes. Input,
output, format, DPI and print copy are chosen per job."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from blk.errors import UserError
from blk.generate.sketch import MAX_SEED, MAX_STEPS, STRENGTH_RANGE

PRESETS = Path(__file__).resolve().parents[2] / "presets"
PREFIX = "upscale-"
# each pass's denoise, as the form's sliders take it (A, B, C); the paper's passes lie within 0.13–0.37
DENOISE_RANGES = ((0.05, 0.6), (0.05, 0.6), (0.05, 0.4))


class UpscalePreset(BaseModel):
    """The Upscale form's settings. `upscaler` is a file of workspace/models/upscalers: the Real-ESRGAN path's
    model, and the diffusion path's first enlargement (None: Lanczos). Fields of the other path are ignored."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    path: Literal["esrgan", "diffusion"] = "esrgan"
    upscaler: str | None = None
    # None: the path's own default (esrgan ×4, tile from free memory, overlap 32; diffusion ×2, 1024, 96)
    scale: float | None = Field(None, gt=0, le=64)
    tile: int | None = Field(None, ge=16)  # esrgan: input px; diffusion: px of the enlarged image
    overlap: int | None = Field(None, ge=0)
    # the diffusion path
    model: str | None = None  # the base model's name (workspace/models, or a known model)
    texture_lora: str | None = None  # a file of workspace/loras
    lora_strength: float = Field(1.0, ge=STRENGTH_RANGE[0], le=STRENGTH_RANGE[1])
    denoise: list[float] = Field(default_factory=lambda: [0.30, 0.20], min_length=2, max_length=3)  # A, B[, C]
    final_pass: bool = True
    prompt: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)  # None: the model's default
    step_scale: float = Field(4.0, ge=1.5, le=4.0)

    @model_validator(mode="after")
    def _passes_in_range(self):
        for letter, value, (low, high) in zip("ABC", self.denoise, DENOISE_RANGES):
            if not low <= value <= high:
                raise ValueError(f"denoise of pass {letter} must be from {low} to {high}; it is {value}")
        if self.path == "diffusion" and not self.model:
            raise ValueError("model must name the base model of the diffusion path")
        return self


def preset_names() -> list[str]:
    """The presets shipped in presets/, by name (`upscale-esrgan`, …)."""
    return sorted(p.stem for p in PRESETS.glob(f"{PREFIX}*.yaml"))


def load_preset(name_or_path: str | Path) -> UpscalePreset:
    """A shipped preset by name, or a YAML file; one sentence when it cannot be used."""
    from blk.yaml_io import load_model

    given = Path(name_or_path)
    path = given if given.suffix in (".yaml", ".yml") or given.exists() else PRESETS / f"{given.name}.yaml"
    if not path.is_file():
        names = ", ".join(preset_names())
        raise UserError(f"No upscale preset {str(name_or_path)!r}: give a YAML file or one of {names}.")
    from blk.train.config import TrainConfig

    return load_model(path, UpscalePreset, elsewhere={
        TrainConfig: f"a training preset: run it with `python -m blk train {path}`, or load it in the Train tab."})


def find_texture_lora(workspace, given: str | Path, from_here: bool = True) -> Path:
    """The texture LoRA a preset names: a path as given, else a LoRA the studio lists under that label or file
    name (`RUN/step-000250.safetensors`, `texture.safetensors`); as given when none is (the job then says the
    file is missing). `from_here` False (the app): a relative path is never read from the working folder."""
    from blk.generate.library import available_loras

    path = Path(given).expanduser()
    if path.exists() and (from_here or path.is_absolute()):
        return path
    for label, found in available_loras(workspace):
        if str(given) in (label, found.name):
            return found
    return path
