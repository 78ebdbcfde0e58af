"""Text to image through a loaded pipeline, the same way for every family.

The seed drives a CPU generator so that one seed gives one image on any
device. Sizes must be multiples of the family's latent grid (16 px for Flux,
8 px for SDXL); callers round before calling.
"""

from __future__ import annotations

from dataclasses import dataclass

from blk.errors import UserError
from blk.models.pipelines import LoadedPipeline

SIZE_MULTIPLE = {"flux": 16, "sdxl": 8}


@dataclass(frozen=True)
class TextToImage:
    prompt: str
    seed: int = 0
    width: int = 1024
    height: int = 1024
    steps: int = 28
    guidance: float = 3.5
    negative_prompt: str = ""  # SDXL only; Flux.1 has no negative prompt


def generate(loaded: LoadedPipeline, request: TextToImage, callback=None):
    """Run one generation and return a PIL image. `callback(step, total)` reports progress."""
    import torch

    family = loaded.model.family
    multiple = SIZE_MULTIPLE[family]
    if request.width % multiple or request.height % multiple:
        raise UserError(f"{family} sizes must be multiples of {multiple} px; got {request.width}×{request.height}.")
    kwargs = dict(
        prompt=request.prompt, width=request.width, height=request.height,
        num_inference_steps=request.steps, guidance_scale=request.guidance,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    )
    if family == "sdxl" and request.negative_prompt:
        kwargs["negative_prompt"] = request.negative_prompt
    if callback is not None:
        def on_step(pipe, step, timestep, tensors):
            callback(step + 1, request.steps)
            return tensors

        kwargs["callback_on_step_end"] = on_step
    return loaded.pipe(**kwargs).images[0]
