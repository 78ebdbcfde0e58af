"""Stencil: transparent assets (RGBA PNG) from a prompt, with LayerDiffuse and the artist's style LoRAs.

Shares the Sketch pipeline (`Sketcher`): the layer LoRA is one more adapter
on the loaded base, so switching between Sketch and Stencil never reloads the
model. The prompt is the descriptor plus the asset's Z-role tag (FG, MG,
BG-overlay), as the paper's Stencil data is captioned.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from blk.errors import UserError
from blk.generate.metadata import save_png
from blk.generate.sizes import round_size
from blk.generate.sketch import MAX_SEED, Cancelled, Lora, Sketcher, _output_name, generation_defaults, \
    lora_label, output_folder
from blk.generate.text_to_image import TextToImage, run_pipeline
from blk.models.device import MemoryOptions, is_out_of_memory
from blk.models.pipelines import lora_sha256, set_loras
from blk.models.registry import resolve
from blk.stencil.layerdiffuse import find_weights, latent_to_rgba, load_decoder, rgba_image

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
        self._decoders: dict[str, object] = {}

    def _decoder(self, path: Path, family: str, device: str, dtype):
        key = f"{path}:{path.stat().st_mtime_ns}:{device}:{dtype}"
        if key not in self._decoders:
            self._decoders.clear()  # one decoder in memory at a time
            self._decoders[key] = load_decoder(path, family).to(device, dtype)
        return self._decoders[key]

    def run(self, request: StencilRequest, progress=None, cancel: threading.Event | None = None,
            on_image=None) -> list[StencilResult]:
        from blk.stencil.transparent_vae import SIZE_MULTIPLE  # torch: loaded when a job runs, not with the UI

        workspace = self.sketcher.workspace
        model = resolve(request.model, workspace)
        weights = find_weights(workspace, model)
        width, height, notice = round_size(request.width, request.height, SIZE_MULTIPLE)
        steps, guidance = generation_defaults(model)
        prompt = full_prompt(request.prompt, request.role)
        first_seed = secrets.randbelow(MAX_SEED) if request.seed is None or request.seed < 0 else int(request.seed)
        results = []
        with self.sketcher.lock:
            loaded = self.sketcher.cache.get(model, device=request.device, memory=request.memory)
            set_loras(loaded, [(weights.lora, 1.0)] + [(lora.path, lora.scale) for lora in request.loras])
            decoder = self._decoder(weights.decoder, model.family, loaded.device, loaded.pipe.vae.dtype)
            folder = Path(request.out_dir) if request.out_dir else output_folder(workspace, "stencil")
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(request.count):
                seed = (first_seed + index) % (MAX_SEED + 1)
                text = TextToImage(prompt=prompt, seed=seed, width=width, height=height,
                                   steps=request.steps or steps,
                                   guidance=guidance if request.guidance is None else request.guidance)

                def on_step(step, total, index=index):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"Cancelled; {index} of {request.count} assets were finished.")
                    if progress is not None:
                        progress(index * (total + 1) + step, request.count * (total + 1))

                try:
                    latents = run_pipeline(loaded, text, on_step, output_type="latent").images
                    image = rgba_image(latent_to_rgba(loaded, latents, width, height, decoder, request.augment))
                except UserError:
                    raise
                except Exception as exc:
                    if is_out_of_memory(exc):
                        raise UserError(f"Out of memory at {width}×{height}: turn off test-time augmentation, turn "
                                        "on CPU offload or int8 weights, or choose a smaller size.") from None
                    raise
                if progress is not None:
                    progress((index + 1) * (text.steps + 1), request.count * (text.steps + 1))
                parameters = {
                    "kind": "stencil", "model": model.name, "family": model.family, "prompt": prompt,
                    "role": request.role, "seed": seed, "steps": text.steps, "guidance": text.guidance,
                    "width": width, "height": height, "augment": request.augment,
                    "layerdiffuse": {"decoder": weights.decoder.name, "lora": weights.lora.name,
                                     "lora_sha256": lora_sha256(weights.lora)},
                    "loras": [{"name": lora_label(lora.path), "sha256": lora_sha256(lora.path),
                               "scale": lora.scale, "path": str(lora.path)} for lora in request.loras],
                }
                result = StencilResult(save_png(_output_name(folder, seed), image, parameters), seed, parameters,
                                       notice)
                results.append(result)
                if on_image is not None:
                    on_image(result)
        return results
