"""How a run's checkpoint file is written: names that the loaders artists use read, the trained strength in
the tensors themselves (`adapters.published_weights`), and what the file is in its header.

- FLUX LoRA and LoKr, SDXL LoKr: diffusers names (`transformer.<module>.lora_A.weight`, `unet.<module>.lokr_w1`),
  with the peft config in the header (`lora_adapter_metadata`), as diffusers' own trainers write them.
- SDXL LoRA: kohya names (`lora_unet_<module, dots as underscores>.lora_down.weight`, `.lora_up.weight`,
  `.alpha`). ComfyUI maps SDXL attention layers only under these (its table of diffusers names expects
  `…attn1.processor.to_q`), so a diffusers-named SDXL file loaded there without its attention layers; Forge and
  A1111 read kohya names too, and diffusers' `load_lora_weights` converts them back. Each `.alpha` is the rank:
  the strength is already in the tensors, so every loader applies a scale of 1. Except a LoRA that also trains
  `add_embedding` layers: diffusers does not convert `lora_unet_add_embedding_linear_1` back, so such a file keeps
  diffusers names (the studio and diffusers read it; ComfyUI then misses its attention layers).

The header also says the base family, the step, the model trained on and whether the tensors are the EMA of the
adapter's weights (`ABOUT_*` keys), so a file copied out of its run still says what it holds.
"""

from __future__ import annotations

import json

# Read by Forge / A1111 / ComfyUI managers to sort LoRAs by base model (kohya's and Stability's model spec keys).
ARCHITECTURES = {"flux": ("flux-1-dev/lora", "flux1"), "sdxl": ("stable-diffusion-xl-v1-base/lora", "sdxl_base_v1-0")}
ABOUT_STEP, ABOUT_MODEL, ABOUT_EMA = "blk.step", "blk.model", "blk.ema_decay"  # EMA decay "0": the raw weights
NOT_IN_KOHYA_NAMES = ("add_embedding.",)  # SDXL layers whose kohya names diffusers cannot convert back


def lora_file_bytes(family: str, weights: dict, peft_config: dict, kind: str, about: dict[str, str]) -> bytes:
    """The safetensors file of a checkpoint. `weights`: the adapter's tensors with peft's names and the strength
    folded in; `peft_config`: `adapters.adapter_metadata`; `kind`: "lora" or "lokr"; `about`: the blk.* fields."""
    from safetensors.torch import save

    prefix = "transformer" if family == "flux" else "unet"
    architecture, base_version = ARCHITECTURES[family]
    header = {"format": "pt", "modelspec.architecture": architecture, "ss_base_model_version": base_version,
              **{key: str(value) for key, value in about.items()}}
    if family == "sdxl" and kind == "lora" and not any(name.startswith(NOT_IN_KOHYA_NAMES) for name in weights):
        tensors = kohya_names(weights)
    else:
        tensors = {f"{prefix}.{name}": tensor for name, tensor in weights.items()}
        header["lora_adapter_metadata"] = json.dumps({f"{prefix}.{key}": _jsonable(value)
                                                      for key, value in peft_config.items()}, sort_keys=True)
    return save({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata=header)


def kohya_names(weights: dict) -> dict:
    """peft's `<module>.lora_A.weight` / `lora_B` as kohya's `lora_unet_<module>.lora_down.weight` / `lora_up`,
    with each module's `.alpha` set to its rank (scale 1: the strength is in lora_up already)."""
    import torch

    renamed = {}
    for name, tensor in weights.items():
        module, _, part = name.removesuffix(".weight").rpartition(".")
        kohya = "lora_unet_" + module.replace(".", "_")
        renamed[f"{kohya}.{'lora_down' if part == 'lora_A' else 'lora_up'}.weight"] = tensor
        if part == "lora_A":
            renamed[f"{kohya}.alpha"] = torch.tensor(float(tensor.shape[0]), dtype=tensor.dtype)
    return renamed


def _jsonable(value):
    """Sets (peft's target_modules) as sorted lists: JSON has no sets."""
    return sorted(value) if isinstance(value, set) else value
