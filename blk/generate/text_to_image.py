"""Text to image through a loaded pipeline, the same way for every family.

The seed drives a CPU generator so that one seed gives one image on any
device. Sizes must be multiples of the family's latent grid (16 px for Flux,
8 px for SDXL); callers round before calling. A compiled denoiser whose
compiler fails runs the same call again uncompiled, with a notice
(`LoadedPipeline.notices`), never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from blk.errors import UserError
from blk.generate.sizes import SIZE_MULTIPLE
from blk.models import speed
from blk.models.pipelines import LoadedPipeline


@dataclass(frozen=True)
class TextToImage:
    prompt: str
    seed: int = 0
    width: int = 1024
    height: int = 1024
    steps: int = 28
    guidance: float = 3.5
    negative_prompt: str = ""  # SDXL only; Flux.1 has no negative prompt


def generate(loaded: LoadedPipeline, request: TextToImage, callback=None, texts: dict | None = None):
    """Run one generation and return a PIL image. `callback(step, total)` reports progress; `texts`: the
    request's prompt already encoded (`encode_texts`)."""
    return run_pipeline(loaded, request, callback, texts=texts).images[0]


def encode_texts(loaded: LoadedPipeline, prompt: str, guidance: float, negative_prompt: str = "") -> dict:
    """The prompt (and SDXL's negative) encoded as the pipeline itself would encode them, as its keyword
    arguments: several images of one prompt, with the LoRAs unchanged, encode it once (T5-XXL once, and under
    CPU offload T5's 9.5 GB sent to the GPU once) and make the same images."""
    import torch

    pipe = loaded.pipe
    with torch.no_grad():
        if loaded.model.family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=512,
                                                   device=pipe._execution_device)
            return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled)
        guided = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None  # as the pipeline decides
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt, device=pipe._execution_device, num_images_per_prompt=1, do_classifier_free_guidance=guided,
            negative_prompt=negative_prompt or None)
    encoded = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    if guided:
        encoded.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
    return encoded


def run_pipeline(loaded: LoadedPipeline, request: TextToImage, callback=None, output_type: str = "pil",
                 image=None, strength: float | None = None, texts: dict | None = None):
    """The pipeline call behind `generate`; `output_type="latent"` returns the latents (Stencil decodes them).

    With `image` (an img2img view of the pipeline: pixels, or latents already in
    the pipeline's space) and `strength`, the run starts from that image;
    diffusers then runs about steps × strength of the steps (`img2img_steps`).
    `texts` (`encode_texts` of this request's prompt) stand in for the prompt.
    """
    import torch

    family = loaded.model.family
    multiple = SIZE_MULTIPLE[family]
    if request.width % multiple or request.height % multiple:
        raise UserError(f"{family} sizes must be multiples of {multiple} px; got {request.width}×{request.height}.")
    kwargs = dict(
        prompt=request.prompt, width=request.width, height=request.height,
        num_inference_steps=request.steps, guidance_scale=request.guidance, output_type=output_type,
    )
    total = request.steps
    if image is not None:
        kwargs |= dict(image=image, strength=strength)
        if family == "sdxl":  # SDXL's img2img takes its size from the image
            del kwargs["width"], kwargs["height"]
        total = img2img_steps(family, request.steps, strength)
    if family == "sdxl" and request.negative_prompt:
        kwargs["negative_prompt"] = request.negative_prompt
    if texts:
        kwargs = {key: value for key, value in kwargs.items() if key not in ("prompt", "negative_prompt")} | texts
    if callback is not None:
        def on_step(pipe, step, timestep, tensors):
            callback(step + 1, total)
            return tensors

        kwargs["callback_on_step_end"] = on_step
    try:
        return loaded(**kwargs, generator=torch.Generator("cpu").manual_seed(request.seed))
    except Exception as exc:
        if not (loaded.memory.compile and speed.is_compile_error(exc)):
            raise
        # the compiler failed (no working compiler, an unsupported op): the same run, uncompiled
        speed.uncompile(loaded.denoiser)
        loaded.notices.append(speed.fallback_notice(exc))
        return loaded(**kwargs, generator=torch.Generator("cpu").manual_seed(request.seed))


def img2img_steps(family: str, steps: int, strength: float) -> int:
    """The denoising steps diffusers runs in img2img, counted as its pipelines count them: SDXL runs
    int(steps × strength); Flux runs steps − int(steps − steps × strength), one more when steps × strength
    is not whole (28 steps at 0.6: 17, not 16). Progress and estimates use this, so they end with the run."""
    if family == "sdxl":
        ran = int(steps * strength)
    else:
        ran = steps - int(max(steps - steps * strength, 0))
    return max(1, min(ran, steps))
