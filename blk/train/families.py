"""One training step per model family, the way diffusers' own training examples compute it.

- Flux: flow matching on packed latents, with shifted timestep sampling and the
  guidance embedding (`examples/dreambooth/train_dreambooth_lora_flux.py`).
- SDXL: noise (or v) prediction with both text encoders and the size/crop time ids.

Images and captions are encoded separately so that the runner can cache them.
Noise and timesteps come from a generator the runner seeds per step, so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations


def weighted_mse(prediction, target, weights=None):
    """Mean squared error; with `weights` (broadcast over channels, e.g. alpha on the latent grid) a weighted mean."""
    error = (prediction.float() - target.float()) ** 2
    if weights is None:
        return error.mean()
    weights = weights.float().to(error.device).expand_as(error)
    return (error * weights).sum() / weights.sum().clamp_min(1e-8)


def token_grid(mask):
    """Flux sees latents in 2×2 patches (tokens): average a latent-grid mask per token, then spread it back."""
    import torch.nn.functional as F

    return F.interpolate(F.avg_pool2d(mask.float(), 2), scale_factor=2, mode="nearest")


class FluxFamily:
    name = "flux"
    guidance = 1.0

    def __init__(self, pipe, timestep_shift: float = 3.0):
        self.pipe = pipe
        self.shift = timestep_shift

    @property
    def denoiser(self):
        return self.pipe.transformer

    def encode_image(self, pixels):
        """VAE posterior parameters (mean, logvar) for pixels in [-1, 1]."""
        return self.pipe.vae.encode(pixels).latent_dist.parameters

    def encode_text(self, caption: str) -> dict:
        prompt_embeds, pooled, _ = self.pipe.encode_prompt(prompt=caption, prompt_2=None, max_sequence_length=512,
                                                           device=self.pipe.text_encoder.device)
        return {"prompt_embeds": prompt_embeds[0], "pooled": pooled[0]}

    def sample_texts(self, prompt: str) -> list[str]:
        """The texts a sample of `prompt` encodes: only the prompt (Flux-dev's guidance is distilled, no negative)."""
        return [prompt]

    def prompt_inputs(self, text: dict) -> dict:
        """The pipeline's inputs for an encoded text (`encode_text`), instead of the prompt. In the
        transformer's dtype: FluxPipeline does not cast given embeddings, and the dataset's text cache may
        have been filled in another (float32 on a CPU, then a bfloat16 run on a GPU)."""
        device, dtype = self.pipe.transformer.device, self.pipe.transformer.dtype
        return {"prompt_embeds": text["prompt_embeds"][None].to(device, dtype),
                "pooled_prompt_embeds": text["pooled"][None].to(device, dtype)}

    def loss(self, latent_params, text: dict, generator, mask=None):
        """Flow-matching loss; `mask` ([B, 1, h, w] on the latent grid) weights it per token."""
        prediction, target = self.prediction_and_target(latent_params, text, generator)
        return weighted_mse(prediction, target, None if mask is None else token_grid(mask))

    def prediction_and_target(self, latent_params, text: dict, generator):
        import torch
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        pipe, vae = self.pipe, self.pipe.vae
        latents = DiagonalGaussianDistribution(latent_params).sample(generator)
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        b, c, h, w = latents.shape
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        u = torch.sigmoid(torch.randn((b,), generator=generator)).to(latents.device)
        sigma = (self.shift * u / (1 + (self.shift - 1) * u)).to(latents.dtype)
        noisy = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise
        packed = pipe._pack_latents(noisy, b, c, h, w)
        image_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
        prompt_embeds = text["prompt_embeds"].to(latents.device, latents.dtype)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance, device=latents.device, dtype=latents.dtype)
        prediction = self.denoiser(
            hidden_states=packed, timestep=sigma, guidance=guidance,
            pooled_projections=text["pooled"].to(latents.device, latents.dtype),
            encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False,
        )[0]
        scale = pipe.vae_scale_factor
        prediction = pipe._unpack_latents(prediction, h * scale, w * scale, scale)
        return prediction, noise - latents


class SDXLFamily:
    name = "sdxl"

    def __init__(self, pipe, prediction: str | None = None):
        """`prediction`: "epsilon" or "v_prediction"; None keeps the model's own (its scheduler config's, which
        a v-prediction fine-tune sets: trained for noise, it would learn the wrong target)."""
        from diffusers import DDPMScheduler

        self.pipe = pipe
        own = pipe.scheduler.config.get("prediction_type") or "epsilon"
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction or own)
        if prediction and prediction != own:  # the model's config is wrong (why one sets it): the samples too
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction)

    @property
    def denoiser(self):
        return self.pipe.unet

    def encode_image(self, pixels):
        return self.pipe.vae.encode(pixels).latent_dist.parameters

    def encode_text(self, caption: str) -> dict:
        prompt_embeds, _, pooled, _ = self.pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False,
                                                              device=self.pipe.text_encoder.device)
        return {"prompt_embeds": prompt_embeds[0], "pooled": pooled[0]}

    def sample_texts(self, prompt: str) -> list[str]:
        """The texts a sample of `prompt` encodes: the prompt, and "" for guidance's negative unless the model
        zeroes an empty negative (`force_zeros_for_empty_prompt`, as SDXL base does); the pipeline encodes the
        negative "" exactly as `encode_text("")` does (same tokenizers, length and layers)."""
        zeroed = getattr(self.pipe.config, "force_zeros_for_empty_prompt", True)
        return [prompt] if zeroed else [prompt, ""]

    def prompt_inputs(self, text: dict, negative: dict | None = None) -> dict:
        """The pipeline's inputs for encoded texts (`encode_text` of `sample_texts`), instead of the prompt:
        samples then need no text encoder (it casts the dtype, as for a prompt it encodes)."""
        device = self.pipe.unet.device
        inputs = {"prompt_embeds": text["prompt_embeds"][None].to(device),
                  "pooled_prompt_embeds": text["pooled"][None].to(device)}
        if negative is not None:
            inputs.update(negative_prompt_embeds=negative["prompt_embeds"][None].to(device),
                          negative_pooled_prompt_embeds=negative["pooled"][None].to(device))
        return inputs

    def loss(self, latent_params, text: dict, generator, mask=None):
        """Noise (or v) prediction loss; `mask` ([B, 1, h, w] on the latent grid) weights it per latent pixel."""
        prediction, target = self.prediction_and_target(latent_params, text, generator)
        return weighted_mse(prediction, target, mask)

    def prediction_and_target(self, latent_params, text: dict, generator):
        import torch
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        latents = DiagonalGaussianDistribution(latent_params).sample(generator) * self.pipe.vae.config.scaling_factor
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (b,), generator=generator).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        height, width = latents.shape[2] * self.pipe.vae_scale_factor, latents.shape[3] * self.pipe.vae_scale_factor
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * b, device=latents.device, dtype=latents.dtype)
        prediction = self.denoiser(
            noisy, timesteps, text["prompt_embeds"].to(latents.device, latents.dtype),
            added_cond_kwargs={"text_embeds": text["pooled"].to(latents.device, latents.dtype), "time_ids": time_ids},
            return_dict=False,
        )[0]
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return prediction, target
