"""The tiny family: random-weight Flux and SDXL built in code, tokenizers included.

They exist so that the demo mode and every test run offline on a CPU through
exactly the code paths of the real models: each is saved once as an ordinary
diffusers folder under `workspace/models/NAME` and loaded with `from_pretrained`.

Sizes follow diffusers' own pipeline tests (see ../shared/STACK.md). Weights
are seeded, so every machine builds the same model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Bump when the architecture or the tokenizers change: old folders are rebuilt.
TINY_VERSION = "1"
VERSION_FILE = "blk-tiny-version.txt"

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def ensure_tiny_model(name: str, models_dir: Path) -> Path:
    """Return the folder of tiny model `name`, building it first if needed (atomic)."""
    builders = {"tiny-flux": build_tiny_flux, "tiny-sdxl": build_tiny_sdxl}
    if name not in builders:
        raise ValueError(f"no tiny model named {name}")
    def build(staging: Path) -> None:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Writing model shards" bars on a command's first use
        builders[name]().save_pretrained(staging, safe_serialization=True)

    return ensure_built(Path(models_dir) / name, TINY_VERSION, build)


def ensure_built(folder: Path, version: str, build) -> Path:
    """Build a model folder once per `version`: into a temporary sibling, then renamed into place.

    A crash mid-build leaves only a `.blk-tmp-*` folder, never a half model.
    """
    stamp = folder / VERSION_FILE
    if stamp.exists() and stamp.read_text().strip() == version:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".blk-tmp-{folder.name}-", dir=folder.parent))
    try:
        build(staging)
        (staging / VERSION_FILE).write_text(version + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# Tokenizers --------------------------------------------------------------------------------------

def byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over single bytes (no merges): every byte is one token."""
    from transformers import CLIPTokenizer

    alphabet = byte_alphabet()
    pieces = alphabet + [c + "</w>" for c in alphabet] + [_BOS, _EOS]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH,
                         bos_token=_BOS, eos_token=_EOS, pad_token=_EOS, unk_token=_EOS)


def tiny_t5_tokenizer():
    """A T5 unigram tokenizer over printable characters, with T5's special ids (pad 0, eos 1, unk 2)."""
    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _clip_text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )


# Models ------------------------------------------------------------------------------------------

def _small_vae(latent_channels: int, **extra):
    """A 4-level VAE (8x down like the real ones), width 8."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, **extra,
    )


def build_tiny_flux():
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 4, 8),
    )
    text_encoder = CLIPTextModel(_clip_text_config(clip_tok))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    vae = _small_vae(16, use_quant_conv=False, use_post_quant_conv=False,
                     shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
        text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer,
    )


def build_tiny_sdxl():
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + 32 pooled
        cross_attention_dim=64, norm_num_groups=1,
    )
    text_encoder = CLIPTextModel(_clip_text_config(tok))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tok, projection_dim=32))
    vae = _small_vae(4, scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
        tokenizer_2=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler,
    )
