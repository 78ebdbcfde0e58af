"""LoRA files in ComfyUI's FLUX naming with peft's factor names, made readable by diffusers.

Several trainers that write "ComfyUI format" name a FLUX LoRA's modules as the original model does, under
`diffusion_model.` (`diffusion_model.double_blocks.0.img_attn.qkv`, `….single_blocks.0.linear1`: fused q/k/v,
fused attention + MLP), with peft's factor names `lora_A` / `lora_B` and an optional `.alpha`; ComfyUI loads
them. diffusers converts these module names only when the factors are kohya's `lora_down` / `lora_up` (the
ComfyUI branch of its kohya converter, which splits the fused layers and folds alpha / rank into the factors);
with `lora_A` / `lora_B` it passes the names through, and no weight finds its layer. Renaming the factors is all
it takes: both spellings mean the same matrices (down = A: rank × in; up = B: out × rank), as ComfyUI reads them."""

from __future__ import annotations

FLUX_MODULES = ("diffusion_model.double_blocks.", "diffusion_model.single_blocks.", "diffusion_model.final_layer.",
                "diffusion_model.img_in.", "diffusion_model.txt_in.", "diffusion_model.time_in.",
                "diffusion_model.vector_in.", "diffusion_model.guidance_in.")
PEFT_TO_KOHYA = ((".lora_A.", ".lora_down."), (".lora_B.", ".lora_up."))


def needs_factor_renaming(keys) -> bool:
    """Whether a file's tensor names are FLUX modules under `diffusion_model.` with peft's factor names."""
    return any(key.startswith(FLUX_MODULES) and (".lora_A." in key or ".lora_B." in key) for key in keys)


def kohya_factor_names(state: dict) -> dict:
    """`state` with `lora_A` / `lora_B` of `diffusion_model.` FLUX modules named `lora_down` / `lora_up`; other
    names (and a file that needs nothing) unchanged."""
    if not needs_factor_renaming(state):
        return state
    renamed = {}
    for key, value in state.items():
        if key.startswith(FLUX_MODULES):
            for peft, kohya in PEFT_TO_KOHYA:
                key = key.replace(peft, kohya)
        renamed[key] = value
    return renamed
