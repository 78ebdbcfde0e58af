"""Parameters embedded in every output PNG, and read back from one.

A result must say how it was made and that it was made by a machine, so the
PNG carries three text chunks:

- `blk:parameters` — the exact parameters as JSON (what "load parameters
  from image" reads back; prompt, seed, model, each LoRA's name, sha256,
  scale and path inside the workspace — never an absolute path, which would
  tell a user name (`library.lora_reference`) —, steps, guidance, size, the
  memory options and device, app version);
- `parameters` — the same in the readable one-paragraph form other tools
  (A1111, Forge, Civitai) show;
- `Disclosure` + an XMP packet with IPTC's digital source type: the
  standard "AI-generated" mark `trainedAlgorithmicMedia`, or, for upscales,
  `algorithmicallyEnhanced` (ESRGAN) / `compositeWithTrainedAlgorithmicMedia`
  (diffusion), so an upscale of the artist's own work is not called generated.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from xml.sax.saxutils import escape

from blk import __version__, atomic
from blk.errors import BadImage

PARAMETERS_KEY = "blk:parameters"
IPTC_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
IPTC_AI = IPTC_TYPES + "trainedAlgorithmicMedia"
XMP_KEY = "XML:com.adobe.xmp"
DISCLOSURE = "AI-generated image, made with BLK Studio on the artist's own machine."
# what a result is, in IPTC's digital source types, and the matching plain sentence
DISCLOSURES = {
    "trainedAlgorithmicMedia": DISCLOSURE,
    "algorithmicallyEnhanced": "AI-enhanced image: the input enlarged by a neural network in BLK Studio "
                               "(no new content was generated).",
    "compositeWithTrainedAlgorithmicMedia": "Image with AI-generated content: an input image refined by a "
                                            "diffusion model in BLK Studio.",
}


def source_type(parameters: dict) -> str:
    """ESRGAN upscales are enhancements; diffusion over an input image (upscale, image-to-image) mixes the
    input with generated content; the rest is generated."""
    if parameters.get("job") == "upscale":
        return "algorithmicallyEnhanced" if parameters.get("path") == "esrgan" else \
            "compositeWithTrainedAlgorithmicMedia"
    if parameters.get("source_image"):
        return "compositeWithTrainedAlgorithmicMedia"
    return "trainedAlgorithmicMedia"


def readable(parameters: dict) -> str:
    """The A1111-style paragraph: prompt, negative prompt, then `Key: value` pairs."""
    lines = [parameters.get("prompt", "")]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    pairs = [("Steps", parameters.get("steps")), ("CFG scale", parameters.get("guidance")),
             ("Seed", parameters.get("seed")), ("Size", f"{parameters.get('width')}x{parameters.get('height')}"),
             ("Model", parameters.get("model"))]
    loras = parameters.get("loras") or []
    if loras:
        pairs.append(("Lora hashes", ", ".join(f"{lora['name']}: {lora['sha256'][:12]}" for lora in loras)))
        scaled = [lora for lora in loras if "scale" in lora]
        if scaled:
            pairs.append(("Lora scales", ", ".join(f"{lora['name']}: {lora['scale']:g}" for lora in scaled)))
    pairs.append(("Version", f"BLK Studio {__version__}"))
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs if value not in (None, "")))
    return "\n".join(lines)


def _xmp(kind: str = "trainedAlgorithmicMedia") -> str:
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
            f'<Iptc4xmpExt:DigitalSourceType>{escape(IPTC_TYPES + kind)}</Iptc4xmpExt:DigitalSourceType>'
            '</rdf:Description></rdf:RDF></x:xmpmeta>')


# zlib level of every PNG the studio writes with its parameters (sketches, grids, stencils, upscales).
# Pillow's default is 6. Measured on this project's 2-core CPU with 1 MP photographs (scikit-image's
# astronaut and coffee, resized), through Pillow: level 6 took 460-480 ms, level 4 200-220 ms, for files
# 0.8-1.4 % larger. ComfyUI also saves at 4. On the GPU the PNG is part of each image's time (Sketch, #5):
# `blk.png_encoder` spreads it over the cores (`bench/png_save.py`, astronaut 1024², level 4, 2 cores: Pillow
# 114 ms, 1.27 MB; ours 62 ms on 2 threads, 90 ms on one, 1.35 MB: Python's zlib, where Pillow has zlib-ng).
PNG_COMPRESS_LEVEL = 4


def _texts(parameters: dict) -> list[tuple[str, str, str]]:
    """(keyword, text, chunk type) of the chunks every output carries: parameters as JSON and readable,
    software, disclosure and its XMP."""
    parameters = {**parameters, "app_version": __version__}
    kind = source_type(parameters)
    return [(PARAMETERS_KEY, json.dumps(parameters, ensure_ascii=False, sort_keys=True), "iTXt"),
            ("parameters", readable(parameters), "iTXt"), ("Software", f"BLK Studio {__version__}", "tEXt"),
            ("Disclosure", DISCLOSURES[kind], "tEXt"), (XMP_KEY, _xmp(kind), "iTXt")]


def parameter_chunks(parameters: dict) -> list[bytes]:
    """The PNG text chunks with the parameters and the AI disclosure, for `blk.png_encoder.encode_png`."""
    from blk.png_encoder import itxt_chunk, text_chunk

    return [itxt_chunk(key, value) if form == "iTXt" else text_chunk(key, value)
            for key, value, form in _texts(parameters)]


def png_bytes(image, parameters: dict) -> bytes:
    """The image as PNG with its parameters and the AI disclosure embedded (zlib `PNG_COMPRESS_LEVEL`), and its
    ICC profile when it has one. 8-bit L, LA, RGB and RGBA (every studio output) are encoded on every core
    (`blk.png_encoder`); any other mode, or an image with a transparent colour (tRNS), by Pillow."""
    import numpy as np

    from blk.png_encoder import COLOUR_TYPES, encode_png, icc_chunk

    if image.mode in COLOUR_TYPES and "transparency" not in image.info:
        icc = image.info.get("icc_profile")
        chunks = ([icc_chunk(icc)] if icc else []) + parameter_chunks(parameters)
        return encode_png(np.asarray(image), image.mode, chunks, level=PNG_COMPRESS_LEVEL)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value, form in _texts(parameters):
        (info.add_itxt if form == "iTXt" else info.add_text)(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def save_png(path: Path, image, parameters: dict) -> Path:
    """Write atomically: a crash never leaves a half PNG under the final name."""
    atomic.write_bytes(path, png_bytes(image, parameters))
    return Path(path)


def read_parameters(path: str | Path) -> dict:
    """The parameters a BLK Studio PNG was made with; one sentence when there are none."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    name = Path(path).name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a huge or odd header is still only read for its text chunks
            with Image.open(path) as image:
                text = dict(getattr(image, "text", {}) or {})
    except FileNotFoundError:
        raise BadImage(f"{name} is not there any more.") from None
    except UnidentifiedImageError:  # a text file, a PDF … named .png
        raise BadImage(f"{name} is not a readable image: its content is not a PNG (nor any image format).") \
            from None
    except Exception as exc:  # noqa: BLE001  (unreadable for any reason: one sentence, without temporary paths)
        reason = (str(exc).splitlines() or ["unknown"])[0].replace(str(path), name)[:120]
        raise BadImage(f"{name} is not a readable image ({reason}).") from None
    if PARAMETERS_KEY not in text:
        raise BadImage(f"{name} carries no BLK Studio parameters.")
    try:
        parameters = json.loads(text[PARAMETERS_KEY])
    except json.JSONDecodeError:
        parameters = None
    loras = parameters.get("loras", []) if isinstance(parameters, dict) else None
    if not isinstance(loras, list) or not all(isinstance(lora, dict) for lora in loras):
        raise BadImage(f"{name} has damaged BLK Studio parameters.")
    return parameters
