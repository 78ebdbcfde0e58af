"""Which model family a LoRA file was made for, read from its weight names alone.

A FLUX LoRA on an SDXL base (or the reverse) fits none of its weights; the
pipeline says so at Generate, after the model has loaded. Reading the names in
the safetensors header takes milliseconds, so the studio can say it when the
LoRA is added instead. The names differ by family in every format we load:
diffusers (`transformer.…` vs `unet.down_blocks…`), kohya (`lora_unet_double_blocks_…` vs
`lora_unet_down_blocks_…`, `lora_unet_input_blocks_…`, `lora_te2_…`) and ai-toolkit
(`diffusion_model.double_blocks…`).
"""

from __future__ import annotations

from pathlib import Path

# Name parts found only in one family's LoRAs. Both families may carry CLIP-L text-encoder weights
# (`lora_te1_`, `text_encoder.`), so those say nothing; SDXL's second encoder (`lora_te2_`) is its own.
FLUX_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks", "context_embedder", "x_embedder")
FLUX_PREFIXES = ("transformer.",)
SDXL_MARKERS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block",
                "lora_te2_", "text_encoder_2.")
MAX_HEADER = 100 * 2**20  # safetensors' own limit for a header


def lora_family(path: str | Path) -> str | None:
    """"flux", "sdxl", or None when the file cannot be read or its names say neither (or both)."""
    keys = _weight_names(Path(path))
    if keys is None:
        return None
    flux = any(key.startswith(FLUX_PREFIXES) or any(marker in key for marker in FLUX_MARKERS) for key in keys)
    sdxl = any(marker in key for key in keys for marker in SDXL_MARKERS)
    if flux == sdxl:
        return None
    return "flux" if flux else "sdxl"


def _weight_names(path: Path) -> list[str] | None:
    """The tensor names in a safetensors header (8 bytes of length, then JSON), without loading a tensor or
    torch; None when the file is not one (a damaged file: the load says why, in its own words)."""
    import json
    import struct

    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= length <= MAX_HEADER:
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return None
    return [name for name in header if name != "__metadata__"] if isinstance(header, dict) else None


def family_mismatch(path: str | Path, model_family: str | None) -> str:
    """One sentence when the LoRA was made for another family than the base model's, else ""."""
    made_for = lora_family(path)
    if not model_family or not made_for or made_for == model_family:
        return ""
    names = {"flux": "FLUX", "sdxl": "SDXL"}
    return (f"{Path(path).name} is a {names[made_for]} LoRA and the base model is {names.get(model_family, model_family)}: "
            f"it will not load there (choose a {names[made_for]} base model, or remove it).")
