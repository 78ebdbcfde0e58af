"""Random (non-zero) LoRA files for the tiny models, saved in the diffusers LoRA format."""

from pathlib import Path


def make_random_lora(model_folder: Path, family: str, out_dir: Path, seed: int = 0, rank: int = 4) -> Path:
    import torch
    from diffusers import FluxPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    if family == "flux":
        pipe = FluxPipeline.from_pretrained(model_folder)
        pipe.transformer.add_adapter(config)
        FluxPipeline.save_lora_weights(out_dir, transformer_lora_layers=_strong(get_peft_model_state_dict(pipe.transformer)))
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(model_folder)
        pipe.unet.add_adapter(config)
        StableDiffusionXLPipeline.save_lora_weights(out_dir, unet_lora_layers=_strong(get_peft_model_state_dict(pipe.unet)))
    return Path(out_dir) / "pytorch_lora_weights.safetensors"


def _strong(state_dict, factor=4.0):
    """Scale up B so that the tiny models' 2-step outputs change visibly."""
    return {k: v * factor if "lora_B" in k else v for k, v in state_dict.items()}
