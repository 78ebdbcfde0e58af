"""Transparent generation with LayerDiffuse: the base model + its layer LoRA → latent → RGBA.

The pipeline runs as usual up to the final latent (`output_type="latent"`);
the base VAE decodes it to RGB, and the transparent decoder turns (RGB, raw
latent) into colour + alpha, optionally with the method's 8-way test-time
augmentation. Output PNGs are straight (not premultiplied) RGBA.

Weights are the official files, found in `workspace/models/layerdiffuse/`:

| family | decoder | layer LoRA | encoder (image-to-image only) |
| Flux | TransparentVAE.pth (RedAIGC/Flux-version-LayerDiffuse) | layerlora.safetensors (same repo) | in TransparentVAE.pth |
| SDXL | vae_transparent_decoder.safetensors (LayerDiffusion/layerdiffusion-v1) | layer_xl_transparent_attn.safetensors (same repo) | vae_transparent_encoder.safetensors (same repo) |

The way back, RGBA → latent (image-to-image with transparency, and the
latents a style LoRA over the layer LoRA trains on), is `rgba_to_latent`:
the base VAE encodes the premultiplied colour, and the offset encoder moves
that latent by ×300 its output, fed with colour padded into the clear areas.

`.pth` files are read with torch's restricted (weights-only) unpickler. The
tiny test models get random weights of the same architecture at a small
width, built on first use beside the tiny model, and go through this same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from blk.errors import UserError
from blk.models.registry import ResolvedModel
from blk.workspace import Workspace

FILES = {
    "flux": ("TransparentVAE.pth", "layerlora.safetensors"),
    "sdxl": ("vae_transparent_decoder.safetensors", "layer_xl_transparent_attn.safetensors"),
}
ENCODER_FILES = {"flux": "TransparentVAE.pth", "sdxl": "vae_transparent_encoder.safetensors"}
REPOS = {"flux": "RedAIGC/Flux-version-LayerDiffuse", "sdxl": "LayerDiffusion/layerdiffusion-v1"}
LATENT_CHANNELS = {"flux": 16, "sdxl": 4}
TINY_VERSION = "2"  # 2: SDXL gets its encoder file too


@dataclass(frozen=True)
class LayerDiffuseWeights:
    family: str
    decoder: Path
    lora: Path  # loadable by diffusers (a Forge-format file is converted once, see `loadable_lora`)


def weights_folder(workspace: Workspace, model: ResolvedModel) -> Path:
    if model.is_tiny:
        return workspace.models / model.name / "layerdiffuse"
    return workspace.models / "layerdiffuse"


def find_weights(workspace: Workspace, model: ResolvedModel) -> LayerDiffuseWeights:
    """The decoder and layer LoRA for this model's family; one sentence naming what is missing."""
    folder = weights_folder(workspace, model)
    if model.is_tiny:
        ensure_tiny_weights(folder, model)
    decoder_name, lora_name = FILES[model.family]
    missing = [name for name in (decoder_name, lora_name) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"LayerDiffuse for {model.family} needs {' and '.join(missing)} (from "
                        f"huggingface.co/{REPOS[model.family]}) in {folder}; ink-to-alpha and matting work without them.")
    return LayerDiffuseWeights(model.family, folder / decoder_name, loadable_lora(folder / lora_name))


def find_encoder(workspace: Workspace, model: ResolvedModel) -> Path:
    """The offset encoder's file (image-to-image with transparency); one sentence when it is missing."""
    folder = weights_folder(workspace, model)
    if model.is_tiny:
        ensure_tiny_weights(folder, model)
    path = folder / ENCODER_FILES[model.family]
    if not path.is_file():
        raise UserError(f"Starting from a transparent image with {model.family} needs {path.name} (from "
                        f"huggingface.co/{REPOS[model.family]}) in {folder}; generating from a prompt works without it.")
    return path


def loadable_lora(path: Path) -> Path:
    """The layer LoRA as diffusers loads it: SDXL's official file is in Forge's `::lora::` layout, so it is
    converted once (kohya names) into `.converted/` beside it, keyed by the file's content."""
    from blk.models.pipelines import lora_sha256
    from blk.models.registry import safetensors_keys

    if not any("::lora::" in key for key in safetensors_keys(path)):
        return path
    target = path.parent / ".converted" / f"{path.stem}-{lora_sha256(path)[:12]}.safetensors"
    if not target.exists():
        from safetensors.torch import load_file, save

        from blk import atomic

        converted = {k: v.contiguous() for k, v in convert_forge_lora(load_file(str(path))).items()}
        atomic.write_bytes(target, save(converted))
    return target


def read_decoder_state(path: Path, family: str) -> dict:
    """The decoder's tensors by their bare names; Flux's extra `encoder.*` / `sd_vae.*` keys are set aside."""
    return _read_state(path, family, "decoder.")


def _read_state(path: Path, family: str, flux_prefix: str) -> dict:
    """A weights file's tensors by bare names: Flux's one .pth holds both modules under `encoder.` / `decoder.`."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # restricted unpickler: no code runs
    except Exception:  # noqa: BLE001  (any failure here means: not a weights file we can read)
        # the loaders' own words advised re-running torch.load unsafely, or named a "miniz" internal error
        raise UserError(f"{path.name} is damaged, cut short, or not LayerDiffuse's weights file: download it again "
                        "(README, Real weights).") from None
    if not isinstance(state, dict):
        raise UserError(f"{path.name} does not hold a state dict.")
    if family == "flux":
        state = {k[len(flux_prefix):]: v for k, v in state.items() if k.startswith(flux_prefix)}
    return state


def load_encoder(path: Path, family: str):
    """A TransparentEncoder with the file's weights (full or tiny width, told apart by its first conv)."""
    from blk.stencil.transparent_vae import ENCODER_WIDTHS, TINY_ENCODER_WIDTHS, TransparentEncoder

    return _load_module(path, family, "encoder", "blocks.0.weight", TransparentEncoder, TINY_ENCODER_WIDTHS,
                        ENCODER_WIDTHS)


def pad_rgb(rgba):
    """Colour carried into the clear areas from the nearest visible pixels ([N, 4, H, W] → [N, 3, H, W], 0..1).

    The offset encoder was trained on colour padded this way: a pyramid of
    premultiplied colour and alpha, shrunk by 1/1.2 per level (area average),
    then rebuilt from the top, each level keeping its own colour where it is
    opaque and taking the enlarged coarser fill where it is not. Visible pixels
    keep their colour exactly.
    """
    import torch.nn.functional as F

    alpha = rgba[:, 3:4].float()
    levels = [(rgba[:, :3].float() * alpha, alpha)]
    while min(levels[-1][1].shape[-2:]) > 1:
        colour, weight = levels[-1]
        size = (max(1, int(colour.shape[-2] / 1.2)), max(1, int(colour.shape[-1] / 1.2)))
        levels.append((F.interpolate(colour, size=size, mode="area"), F.interpolate(weight, size=size, mode="area")))
    colour, weight = levels[-1]
    fill = colour.sum(dim=(2, 3), keepdim=True) / weight.sum(dim=(2, 3), keepdim=True).clamp(min=1e-8)
    for colour, weight in reversed(levels):
        fill = F.interpolate(fill, size=colour.shape[-2:], mode="bilinear", align_corners=False) \
            if fill.shape[-2:] != colour.shape[-2:] else fill
        fill = colour + fill * (1.0 - weight)
    return fill.clamp(0, 1)


def rgba_to_latent(vae, family: str, encoder, rgba):
    """Straight RGBA [N, 4, H, W] in 0..1 → the latent the pipeline works in (scaled, and shifted for Flux)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (rgba_to_raw_latent(vae, family, encoder, rgba) - shift) * vae.config.scaling_factor


def rgba_to_raw_latent(vae, family: str, encoder, rgba):
    """Straight RGBA [N, 4, H, W] in 0..1 → the raw VAE latent (before scaling) that carries its transparency.

    As LayerDiffuse encodes: the base VAE sees premultiplied colour
    (`(rgb·2−1)·alpha`, so clear areas are mid grey); its posterior mean is
    moved by std × (encoder output × 300); the encoder sees alpha and the
    padded colour (R,G,B,A for Flux, A,R,G,B for SDXL). No sampling: the same
    image always gives the same latent.
    """
    import torch

    from blk.stencil.transparent_vae import ENCODER_SCALE

    rgba = rgba.float().clamp(0, 1)
    alpha, colour = rgba[:, 3:4], rgba[:, :3]
    padded = pad_rgb(rgba)
    feed = torch.cat([padded, alpha], dim=1) if family == "flux" else torch.cat([alpha, padded], dim=1)
    parameter = next(encoder.parameters())  # the encoder sits on the device the work runs on
    with torch.no_grad():
        # there, not on `vae.device`: under CPU offload that reads "cpu" until the hook moves the VAE, and the
        # hook does not move the input
        posterior = vae.encode(((colour * 2 - 1) * alpha).to(parameter.device, vae.dtype)).latent_dist
        offset = encoder(feed.to(parameter.device, parameter.dtype)).to(posterior.mean) * ENCODER_SCALE
        return posterior.mean + posterior.std * offset


def load_decoder(path: Path, family: str):
    """A TransparentDecoder with the file's weights (full or tiny width, told apart by conv_in)."""
    from blk.stencil.transparent_vae import FULL_WIDTHS, TINY_WIDTHS, TransparentDecoder

    return _load_module(path, family, "decoder", "conv_in.weight", TransparentDecoder, TINY_WIDTHS, FULL_WIDTHS)


def _load_module(path: Path, family: str, kind: str, first_key: str, cls, tiny_widths, full_widths):
    """One of the two modules with a file's weights: its width (full or tiny) read from the first layer,
    every key and shape then checked (strict); one sentence when the file is not that module."""
    state = _read_state(path, family, f"{kind}.")
    first = state.get(first_key)
    if first is None:
        raise UserError(f"{path.name} has no LayerDiffuse {kind} weights (no {kind} {first_key.split('.')[0]}).")
    module = cls(LATENT_CHANNELS[family], tiny_widths if first.shape[0] == tiny_widths[0] else full_widths)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = lines[1].strip()[:160] if len(lines) > 1 else str(exc)[:160]
        raise UserError(f"{path.name} does not match LayerDiffuse's {family} {kind} ({detail}).") from None
    return module.eval().requires_grad_(False)


def latent_to_rgba(loaded, latents, width: int, height: int, decoder, augment: bool = True):
    """Final pipeline latents → straight RGBA float tensor [1, 4, H, W] in 0..1 (R, G, B, A)."""
    import torch

    pipe, family = loaded.pipe, loaded.model.family
    vae = pipe.vae
    with torch.no_grad():
        if family == "flux":
            unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
            raw = unpacked / vae.config.scaling_factor + vae.config.shift_factor
            pixel = vae.decode(raw.to(vae.dtype)).sample * 0.5 + 0.5  # not clipped (as the reference)
        else:
            raw = latents / vae.config.scaling_factor
            pixel = (_decode_sdxl(vae, raw) * 0.5 + 0.5).clip(0, 1)
        parameter = next(decoder.parameters())
        out = _decode_with(decoder, pixel.to(parameter.device, parameter.dtype), raw.to(parameter.device, parameter.dtype),
                           augment).float()
    if family == "sdxl":  # SDXL's decoder answers A, R, G, B
        out = torch.cat([out[:, 1:], out[:, :1]], dim=1)
    return out


def _decode_with(decoder, pixel, raw, augment):
    from blk.stencil.transparent_vae import decode_augmented

    return decode_augmented(decoder, pixel, raw, augment)


def _decode_sdxl(vae, raw):
    """SDXL's VAE overflows in fp16; decode in fp32 then, as the diffusers pipeline does."""
    import torch

    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        try:  # the VAE is the pipeline's, shared with Sketch: back to fp16 after, or its next image fails
            return vae.to(torch.float32).decode(raw.float()).sample.to(torch.float16)
        finally:
            vae.to(torch.float16)
    return vae.decode(raw.to(vae.dtype)).sample


def rgba_image(rgba):
    """[1, 4, H, W] 0..1 → PIL RGBA (8-bit, straight alpha)."""
    import numpy as np
    from PIL import Image

    array = (rgba[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array, "RGBA")


def convert_forge_lora(state: dict) -> dict:
    """Forge's frozen-patcher LoRA (`<ldm key>::lora::<i>`, slot 0 up, slot 1 down) → kohya names for diffusers.

    `diffusion_model.input_blocks.4.1.…attn1.to_q.weight::lora::0` becomes
    `lora_unet_input_blocks_4_1_…_attn1_to_q.lora_up.weight`; diffusers then maps
    the SGM block names onto its own. There is no alpha: ΔW = up @ down.
    """
    converted = {}
    for key, value in state.items():
        if "::lora::" not in key:
            converted[key] = value
            continue
        name, _, slot = key.partition("::lora::")
        stem = name.removesuffix(".weight").replace(".", "_").replace("diffusion_model", "lora_unet", 1)
        converted[f"{stem}.{'lora_up' if slot == '0' else 'lora_down'}.weight"] = value
    return converted


# Tiny weights for tests and demo mode -----------------------------------------------------------

def ensure_tiny_weights(folder: Path, model: ResolvedModel) -> Path:
    from blk.models.tiny import ensure_built

    return ensure_built(folder, TINY_VERSION, lambda staging: _build_tiny(staging, model))


def _build_tiny(staging: Path, model: ResolvedModel) -> None:
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from blk.stencil.transparent_vae import TINY_ENCODER_WIDTHS, TINY_WIDTHS, TransparentDecoder, TransparentEncoder

    torch.manual_seed(0)
    family = model.family
    decoder = TransparentDecoder(LATENT_CHANNELS[family], TINY_WIDTHS)
    decoder_name, lora_name = FILES[family]
    if family == "flux":  # one .pth with encoder.* + decoder.*, as the official file
        state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
        state |= {f"encoder.{k}": v for k, v in TransparentEncoder(16, TINY_ENCODER_WIDTHS).state_dict().items()}
        torch.save(state, staging / decoder_name)
    else:
        save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(staging / decoder_name))
        encoder = TransparentEncoder(4, TINY_ENCODER_WIDTHS)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(staging / ENCODER_FILES["sdxl"]))
    from blk.models.pipelines import load_pipeline
    from blk.models.device import MemoryOptions

    pipe = load_pipeline(model, "text2img", "cpu", MemoryOptions())
    denoiser = pipe.transformer if family == "flux" else pipe.unet
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = {k: v * 0.1 for k, v in get_peft_model_state_dict(denoiser).items()}  # gentle: the image stays an image
    if family == "flux":
        type(pipe).save_lora_weights(staging, transformer_lora_layers=layers, weight_name=lora_name)
    else:
        type(pipe).save_lora_weights(staging, unet_lora_layers=layers, weight_name=lora_name)
