"""The baseline `bench/train.py` times our trainer against: a plain diffusers + peft + accelerate Flux LoRA
loop, written after diffusers' `examples/dreambooth/train_dreambooth_lora_flux.py` with that script's defaults.

What it mirrors, per step as the script does it (no `--train_text_encoder`, no prior preservation,
no validation prompt, checkpoints every 500 steps, i.e. none in a bench run):

- the parts loaded one by one (CLIP and T5 tokenizers and encoders, VAE, FluxTransformer2DModel, the
  FlowMatchEulerDiscreteScheduler), everything frozen and moved to the device in the weight dtype:
  bf16 with `--mixed_precision bf16` on CUDA, fp32 on the CPU (`--mixed_precision no`);
- `transformer.add_adapter(LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules))`,
  the targets as `--lora_layers` gives them (here: ours). With bf16 the script does not upcast the
  LoRA weights (it only does so for fp16), so they train in bf16;
- `torch.optim.AdamW` (betas 0.9/0.999, weight decay 1e-4, eps 1e-8), the "constant" lr scheduler;
  transformer, optimizer, dataloader and scheduler through `Accelerator.prepare`, which runs the
  transformer's forward under bf16 autocast and returns fp32 outputs;
- the dataset preprocessed once (resize, random crop, to tensor, normalize to [-1, 1]), a shuffled
  DataLoader, `collate_fn` stacking pixel values;
- text, `text="every-step"` (the default): each image has its own caption (the script's
  `--dataset_name … --caption_column` path) and every step text-encodes the batch's prompts with CLIP
  (pooled) and T5 (512 tokens), both encoders staying on the device. The script's code does this on its
  `--instance_data_dir … --instance_prompt` path too (one prompt for all images): since diffusers #12264
  (2025-09) the step loop calls `compute_text_embeddings(prompts, …)` there as well, overwriting the
  embeddings it encoded once before training, and its `del text_encoder_one, text_encoder_two` frees
  nothing while the `text_encoders` list still holds them. `text="once"` is what that path's comment
  promises instead: one prompt for every image, encoded once before training, the text encoders freed;
- latents: without `--cache_latents` (the default) `vae.encode(pixels).latent_dist.sample()` in every
  step; with it, one pass over the dataloader before training keeps each batch's latent
  distribution (and the VAE is deleted), and step k of each epoch samples the k-th of them, as the
  script's `latents_cache[step]` does (a reshuffled epoch pairs them with other batches' captions);
- then per step: `(latents - shift_factor) * scaling_factor`, image ids, `randn_like` noise,
  `--weighting_scheme none` (uniform u; `logit_normal` with mean 0, std 1 also offered), timesteps
  picked from the scheduler's 1000 by index and their sigmas looked up, `(1 - σ)·x + σ·noise`,
  packed latents, guidance 3.5 (`--guidance_scale`) when the model has the guidance embedding,
  transformer(timestep=t / 1000), unpack, loss = mean((weighting · (pred − (noise − x)))²),
  `accelerator.backward`, `clip_grad_norm_(transformer.parameters(), 1.0)`, optimizer and scheduler
  step, `zero_grad`, and `loss.detach().item()` for the log.

What differs, none of it inside a timed step or in a peak-memory figure: the models load straight in the
weight dtype (`torch_dtype`) instead of fp32-then-`.to(dtype)` (on a GPU the script's way needs twice
the host RAM for a moment; on a CPU both are fp32);
no tqdm bar, trackers, model card, hub or checkpoint hooks; images come from a folder with a caption
`.txt` beside each image rather than a datasets `imagefolder`; the seed is fixed (the script's
`--seed` defaults to None).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_examples(folder: Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs of a folder: each image with the text of its `.txt` sidecar ('' without one)."""
    pairs = []
    for image in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = image.with_suffix(".txt")
        pairs.append((image, caption.read_text().strip() if caption.exists() else ""))
    return pairs


def train(model_path: str | Path, dataset: str | Path, *, size: int, steps: int, batch_size: int = 1,
          rank: int = 16, alpha: int = 16, target_modules=("to_q", "to_k", "to_v", "to_out.0"),
          learning_rate: float = 1e-4, text: str = "every-step", instance_prompt: str = "blkstyle",
          cache_latents: bool = False, weighting_scheme: str = "none", guidance_scale: float = 3.5,
          max_sequence_length: int = 512, seed: int = 0, mixed_precision: str | None = None) -> dict:
    """Train `steps` optimizer steps; returns {"step_ends": perf_counter at the end of each step, "losses",
    "vae_encodes", "text_encodes", "device", "dtype", "peak_gpu_bytes" (CUDA only, else None)}.
    `mixed_precision`: accelerate's setting; by default "bf16" on CUDA (as the bench runs the script), else "no"."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from PIL import Image
    from PIL.ImageOps import exif_transpose
    from peft import LoraConfig
    from torchvision import transforms
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    if text not in ("every-step", "once"):
        raise ValueError(f"text is every-step or once, not {text!r}")
    model_path = str(model_path)
    cuda = torch.cuda.is_available()
    if cuda:  # as our trainer (blk.models.device.avoid_cudnn_attention_backward): cuDNN attention's
        torch.backends.cuda.enable_cudnn_sdp(False)  # backward failed on an H200 with torch 2.11, here too
    accelerator = Accelerator(mixed_precision=mixed_precision or ("bf16" if cuda else "no"))
    device = accelerator.device
    set_seed(seed)
    weight_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32

    # the parts, one by one, frozen, in the weight dtype on the device
    tokenizer_clip = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer")
    tokenizer_t5 = T5TokenizerFast.from_pretrained(model_path, subfolder="tokenizer_2")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_path, subfolder="scheduler")
    text_clip = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder", torch_dtype=weight_dtype)
    text_t5 = T5EncoderModel.from_pretrained(model_path, subfolder="text_encoder_2", torch_dtype=weight_dtype)
    vae = AutoencoderKL.from_pretrained(model_path, subfolder="vae", torch_dtype=weight_dtype)
    transformer = FluxTransformer2DModel.from_pretrained(model_path, subfolder="transformer", torch_dtype=weight_dtype)
    for part in (transformer, vae, text_clip, text_t5):
        part.requires_grad_(False)
        part.to(device, dtype=weight_dtype)

    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights="gaussian",
                                       target_modules=list(target_modules)))
    lora_parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": lora_parameters, "lr": learning_rate}], betas=(0.9, 0.999),
                                  weight_decay=1e-4, eps=1e-8)

    # the dataset: every image preprocessed once, as the script's DreamBoothDataset does
    examples = load_examples(Path(dataset))
    resize = transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR)
    crop = transforms.RandomCrop(size)
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    pixel_values = []
    for path, _ in examples:
        image = exif_transpose(Image.open(path))
        image = resize(image.convert("RGB") if image.mode != "RGB" else image)
        top, left, height, width = crop.get_params(image, (size, size))
        pixel_values.append(to_tensor(image.crop((left, top, left + width, top + height))))
    rows = [{"pixels": pixel_values[i],
             "prompt": (examples[i][1] or instance_prompt) if text == "every-step" else instance_prompt}
            for i in range(len(examples))]

    def collate(batch):
        pixels = torch.stack([row["pixels"] for row in batch]).to(memory_format=torch.contiguous_format).float()
        return {"pixel_values": pixels, "prompts": [row["prompt"] for row in batch]}

    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=collate, num_workers=0)

    counts = {"vae": 0, "text": 0}

    def encode_text(batch_prompts):
        """CLIP's pooled output and T5's hidden states (padded to max_sequence_length), and zero text ids."""
        batch_prompts = [batch_prompts] if isinstance(batch_prompts, str) else batch_prompts
        counts["text"] += len(batch_prompts)
        with torch.no_grad():
            ids = tokenizer_clip(batch_prompts, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            pooled = text_clip(ids.to(device), output_hidden_states=False).pooler_output.to(text_clip.dtype)
            ids = tokenizer_t5(batch_prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                               return_tensors="pt").input_ids
            hidden = text_t5(ids.to(device))[0].to(text_t5.dtype)
            text_ids = torch.zeros(hidden.shape[1], 3).to(device=device, dtype=text_clip.dtype)
        return hidden, pooled, text_ids

    if text == "once":  # one prompt for all: encoded once, then the text encoders go
        fixed_text = encode_text(instance_prompt)
        del text_clip, text_t5, tokenizer_clip, tokenizer_t5
        _free_memory()

    shift_factor, scaling_factor = vae.config.shift_factor, vae.config.scaling_factor
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents_cache = []
    if cache_latents:  # one pass over the data before training; the VAE is not needed afterwards
        for batch in loader:
            with torch.no_grad():
                pixels = batch["pixel_values"].to(device, non_blocking=True, dtype=weight_dtype)
                latents_cache.append(vae.encode(pixels).latent_dist)
                counts["vae"] += pixels.shape[0]
        del vae
        _free_memory()

    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=500 * accelerator.num_processes,
                                 num_training_steps=steps * accelerator.num_processes)
    transformer, optimizer, loader, lr_scheduler = accelerator.prepare(transformer, optimizer, loader, lr_scheduler)

    def sigmas_for(timesteps, n_dim, dtype):
        """Each timestep's sigma, found by its index in the scheduler's table (one lookup and sync per image)."""
        table = scheduler.sigmas.to(device=device, dtype=dtype)
        schedule = scheduler.timesteps.to(device)
        indices = [(schedule == t).nonzero().item() for t in timesteps.to(device)]
        return table[indices].flatten().reshape(-1, *([1] * (n_dim - 1)))

    step_ends, losses, step = [], [], 0
    epochs = math.ceil(steps / math.ceil(len(loader)))
    for _ in range(epochs):
        transformer.train()
        for index, batch in enumerate(loader):
            with accelerator.accumulate([transformer]):
                if text == "every-step":
                    prompt_embeds, pooled_embeds, text_ids = encode_text(batch["prompts"])
                else:
                    prompt_embeds, pooled_embeds, text_ids = fixed_text
                if cache_latents:
                    model_input = latents_cache[index].sample()
                else:
                    model_input = vae.encode(batch["pixel_values"].to(dtype=vae.dtype)).latent_dist.sample()
                    counts["vae"] += model_input.shape[0]
                model_input = ((model_input - shift_factor) * scaling_factor).to(dtype=weight_dtype)
                b, c, h, w = model_input.shape
                image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, weight_dtype)
                noise = torch.randn_like(model_input)
                u = compute_density_for_timestep_sampling(weighting_scheme=weighting_scheme, batch_size=b,
                                                          logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
                indices = (u * scheduler.config.num_train_timesteps).long()
                timesteps = scheduler.timesteps[indices].to(device=device)
                sigmas = sigmas_for(timesteps, model_input.ndim, model_input.dtype)
                noisy = (1.0 - sigmas) * model_input + sigmas * noise
                packed = FluxPipeline._pack_latents(noisy, batch_size=b, num_channels_latents=c, height=h, width=w)
                guidance = None
                if accelerator.unwrap_model(transformer).config.guidance_embeds:
                    guidance = torch.tensor([guidance_scale], device=device).expand(b)
                prediction = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                                         pooled_projections=pooled_embeds, encoder_hidden_states=prompt_embeds,
                                         txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
                prediction = FluxPipeline._unpack_latents(prediction, height=h * vae_scale_factor,
                                                          width=w * vae_scale_factor, vae_scale_factor=vae_scale_factor)
                weighting = compute_loss_weighting_for_sd3(weighting_scheme=weighting_scheme, sigmas=sigmas)
                target = noise - model_input
                loss = torch.mean((weighting.float() * (prediction.float() - target.float()) ** 2).reshape(b, -1), 1)
                loss = loss.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(transformer.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
            losses.append(loss.detach().item())  # the script logs this every step (a device sync)
            step_ends.append(time.perf_counter())
            if step >= steps:
                break
        if step >= steps:
            break
    return {"step_ends": step_ends, "losses": losses, "vae_encodes": counts["vae"], "text_encodes": counts["text"],
            "device": str(device), "dtype": str(weight_dtype).removeprefix("torch."),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the plain diffusers Flux LoRA loop alone (bench/train.py runs both)")
    parser.add_argument("model_path")
    parser.add_argument("dataset")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--text", choices=("every-step", "once"), default="every-step")
    parser.add_argument("--cache-latents", action="store_true")
    args = parser.parse_args()
    result = train(args.model_path, args.dataset, size=args.size, steps=args.steps, text=args.text,
                   cache_latents=args.cache_latents)
    ends = result["step_ends"]
    print(f"{len(ends)} steps, {(ends[-1] - ends[0]) / max(len(ends) - 1, 1):.3f} s/step, losses "
          f"{result['losses'][0]:.4f} … {result['losses'][-1]:.4f}")
