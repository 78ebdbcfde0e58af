"""Stencil: transparent assets (RGBA PNG) from a prompt, with LayerDiffuse and the artist's style LoRAs.

Shares the Sketch pipeline (`Sketcher`): the layer LoRA is one more adapter
on the loaded base, so switching between Sketch and Stencil never reloads the
model. The prompt is the descriptor plus the asset's Z-role tag (FG, MG,
BG-overlay), as the paper's Stencil data is captioned.

With a starting image (an RGBA PNG: an earlier asset, an ink-to-alpha scan)
the job is image-to-image with transparency: LayerDiffuse's offset encoder
turns the RGBA into a latent, the img2img view of the same pipeline refines
it at the chosen strength, and the decoder brings the alpha back.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from blk.errors import UserError, require_file
from blk.generate.library import lora_reference
from blk.generate.metadata import save_png
from blk.generate.prompt_length import prompt_length_notice
from blk.generate.sizes import round_size
from blk.generate.sketch import (MAX_SEED, Cancelled, Lora, Sketcher, _output_name, check_numbers, generation_defaults,
                                 lora_label, output_folder)
from blk.generate.text_to_image import TextToImage, encode_texts, img2img_steps, run_pipeline
from blk.models.device import MemoryOptions, free_device_memory, is_out_of_memory
from blk.models.pipelines import lora_sha256, set_loras
from blk.models.registry import resolve
from blk.stencil.layerdiffuse import find_encoder, find_weights, latent_to_rgba, load_decoder, load_encoder, \
    rgba_image, rgba_to_latent
from blk.workspace import check_writable_folder

ROLES = ("FG", "MG", "BG-overlay")


@dataclass
class StencilRequest:
    model: str
    prompt: str = ""
    role: str = ""  # FG, MG or BG-overlay; appended to the prompt
    loras: list[Lora] = field(default_factory=list)  # style LoRAs; the layer LoRA is added by the job
    seed: int | None = None
    width: int = 1024
    height: int = 1024
    steps: int | None = None
    guidance: float | None = None
    augment: bool = True  # LayerDiffuse's 8-way test-time augmentation (8 decoder passes)
    count: int = 1
    memory: MemoryOptions = MemoryOptions()
    device: str = "auto"
    out_dir: Path | None = None
    image: Path | None = None  # start from this RGBA image (image-to-image with transparency)
    strength: float = 0.6  # with `image`: how much is redrawn (0 keeps it, 1 ignores it)


@dataclass
class StencilResult:
    path: Path
    seed: int
    parameters: dict
    notice: str = ""


def full_prompt(prompt: str, role: str) -> str:
    if role and role not in ROLES:
        raise UserError(f"The Z-role is one of {', '.join(ROLES)}; got {role!r}.")
    return ", ".join(part for part in (prompt.strip(), role) if part)


class Stenciler:
    def __init__(self, sketcher: Sketcher):
        self.sketcher = sketcher
        self._modules: dict[str, object] = {}

    def _module(self, load, path: Path, family: str, device: str, dtype):
        """The decoder or encoder, kept loaded (one of each) while its file is unchanged."""
        key = f"{load.__name__}:{path}:{path.stat().st_mtime_ns}:{device}:{dtype}"
        if key not in self._modules:
            for old in [k for k in self._modules if k.startswith(f"{load.__name__}:")]:
                del self._modules[old]
            self._modules[key] = load(path, family).to(device, dtype)
        return self._modules[key]

    def release(self) -> None:
        """Drop the decoder and encoder kept loaded (they follow the shared pipeline onto its device)."""
        self._modules.clear()

    def run(self, request: StencilRequest, progress=None, cancel: threading.Event | None = None,
            on_image=None) -> list[StencilResult]:
        from blk.stencil.transparent_vae import SIZE_MULTIPLE  # torch: loaded when a job runs, not with the UI

        check_numbers(request.steps, request.count, request.guidance, request.seed, request.loras)
        if request.out_dir:
            check_writable_folder(request.out_dir)  # before the model loads, not after the first asset
        workspace = self.sketcher.workspace
        model = resolve(request.model, workspace)
        weights = find_weights(workspace, model)
        start, size = None, (request.width, request.height)
        if request.image is not None:
            if not 0 < request.strength <= 1:
                raise UserError(f"Strength is between 0 and 1 (how much is redrawn); got {request.strength:g}.")
            start, opaque = starting_image(Path(request.image))
            width, height, notice = start_size(*start.size, SIZE_MULTIPLE)  # Width and Height are not used
            notice = " ".join(part for part in (opaque, notice) if part)
        else:
            width, height, notice = round_size(*size, SIZE_MULTIPLE)
        steps, guidance = generation_defaults(model)
        prompt = full_prompt(request.prompt, request.role)
        first_seed = secrets.randbelow(MAX_SEED) if request.seed is None or request.seed < 0 else int(request.seed)
        results = []
        with self.sketcher.lock:
            loaded = self.sketcher.cache.get(model, task="img2img" if start else "text2img", device=request.device,
                                             memory=request.memory)
            set_loras(loaded, [(weights.lora, 1.0)] + [(lora.path, lora.scale) for lora in request.loras])
            notice = " ".join(part for part in (notice, prompt_length_notice(loaded.pipe, model.family, model.name,
                                                                              prompt, "descriptor")) if part)
            vae = loaded.pipe.vae
            decoder = self._module(load_decoder, weights.decoder, model.family, loaded.device, vae.dtype)
            start_latent = None
            if start is not None:
                encoder = self._module(load_encoder, find_encoder(workspace, model), model.family, loaded.device,
                                       vae.dtype)
                start_latent = rgba_to_latent(vae, model.family, encoder, rgba_tensor(start, width, height))
            folder = Path(request.out_dir) if request.out_dir else output_folder(workspace, "stencil")
            folder.mkdir(parents=True, exist_ok=True)
            texts = None  # several assets of one prompt: encoded once (the LoRAs do not change within a request)
            for index in range(request.count):
                seed = (first_seed + index) % (MAX_SEED + 1)
                text = TextToImage(prompt=prompt, seed=seed, width=width, height=height,
                                   steps=request.steps or steps,
                                   guidance=guidance if request.guidance is None else request.guidance)
                runs = text.steps if start is None else img2img_steps(model.family, text.steps, request.strength)

                def on_step(step, total, index=index):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"Cancelled; {index} of {request.count} assets "
                                        f"{'was' if index == 1 else 'were'} finished.")
                    if progress is not None:
                        progress(index * (total + 1) + step, request.count * (total + 1))

                image = None
                try:
                    if texts is None and request.count > 1:
                        texts = encode_texts(loaded, prompt, text.guidance)
                    latents = run_pipeline(loaded, text, on_step, output_type="latent", image=start_latent,
                                           strength=request.strength if start is not None else None,
                                           texts=texts).images
                    image = rgba_image(latent_to_rgba(loaded, latents, width, height, decoder, request.augment))
                except UserError:
                    raise
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                if image is None:  # out of memory: freed after the handler, whose traceback held the tensors
                    latents = None
                    free_device_memory()
                    raise UserError(f"Out of memory at {width}×{height}: turn off test-time augmentation, turn "
                                    "on CPU offload or int8 weights, or choose a smaller size.")
                if progress is not None:
                    progress((index + 1) * (runs + 1), request.count * (runs + 1))
                parameters = {
                    "kind": "stencil", "model": model.name, "family": model.family, "prompt": prompt,
                    "role": request.role, "seed": seed, "steps": text.steps, "guidance": text.guidance,
                    "width": width, "height": height, "augment": request.augment,
                    "layerdiffuse": {"decoder": weights.decoder.name, "lora": weights.lora.name,
                                     "lora_sha256": lora_sha256(weights.lora)},
                    "loras": [{"name": lora_label(lora.path), "sha256": lora_sha256(lora.path),
                               "scale": lora.scale, "path": lora_reference(workspace, lora.path),
                               "bytes": Path(lora.path).stat().st_size}
                              for lora in request.loras],
                }
                if start is not None:
                    parameters |= {"source_image": Path(request.image).name, "strength": request.strength}
                result = StencilResult(save_png(_output_name(folder, seed), image, parameters), seed, parameters,
                                       notice)
                results.append(result)
                if on_image is not None:
                    on_image(result)
        return results


def start_size(width: int, height: int, multiple: int) -> tuple[int, int, str]:
    """The asset's size from a starting image: each side one grid step either way of the image's, the
    aspect ratio kept as closely as the grid allows (on a tie, the nearest size); a notice when it changes.

    80×60 → 64×64 (128×64 is further from 4:3); 200×100 → 256×128 (2:1 kept, where rounding each side
    alone gives 192×128).
    """
    import math

    nearest_w, nearest_h, _ = round_size(width, height, multiple)
    if (nearest_w, nearest_h) == (width, height):
        return width, height, ""

    def sides(length):  # the grid sides either way of `length` (one grid step at least)
        low = length // multiple * multiple
        return {length} if low == length else {low, low + multiple} if low else {multiple}

    def cost(size):  # the aspect's distance first, then the distance from the nearest size
        return (round(abs(math.log(size[0] / size[1]) - math.log(width / height)), 9),
                abs(size[0] - nearest_w) + abs(size[1] - nearest_h))

    w, h = min(((w, h) for w in sides(width) for h in sides(height)), key=cost)
    return w, h, (f"The starting image is {width}×{height}, not on the model's {multiple} px grid; the asset is "
                  f"{w}×{h}, its aspect ratio kept as closely as the grid allows.")


OPAQUE_START = ("The starting image {name} has no transparency, so it was redrawn as one opaque element; for a "
                "scan of ink on paper, run Ink to alpha first.")


def starting_image(path: Path):
    """(the image as RGBA, a notice when it is fully opaque); one sentence when it cannot be read.

    An opaque start is allowed (a flat element is a fair start) but said: an artist who chose a scan
    expecting its paper to vanish would otherwise get the paper redrawn as part of the asset."""
    import numpy as np

    from blk.data.images import open_image

    require_file(path, "The starting image")
    image = open_image(path)
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    opaque = np.asarray(rgba.getchannel("A")).min() == 255
    return rgba, OPAQUE_START.format(name=path.name) if opaque else ""


def rgba_tensor(image, width: int, height: int):
    """PIL RGBA → [1, 4, H, W] float 0..1 at the generation size, resized with premultiplied alpha."""
    import torch

    from blk.stencil.ops import image_to_array, resize

    pixels = resize(image_to_array(image), width, height)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]
