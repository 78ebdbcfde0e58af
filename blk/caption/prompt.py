"""Images prepared for a vision-language model, and the few-shot chat messages.

Messages follow the OpenAI chat format, which vLLM's server takes as is and the
transformers backend converts: system; then for each example, user [image,
instruction] → assistant [caption]; then user [target image, instruction].
Example images are prepared once per style and reused byte for byte, so every
request shares the same prefix and the server's prefix cache can serve it.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path

from PIL import Image

from blk.caption.style import CaptionStyle
from blk.data import images

BACKGROUNDS = {"grey": (128, 128, 128), "white": (255, 255, 255), "black": (0, 0, 0)}
CHECKER_CELL = 16


def flatten(image: Image.Image, background: str) -> Image.Image:
    """RGBA onto an opaque background (the model sees no alpha channel)."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    if background == "checkerboard":
        base = checkerboard(image.size)
    else:
        base = Image.new("RGB", image.size, BACKGROUNDS[background])
    base.paste(image, mask=image.getchannel("A"))
    return base


def checkerboard(size: tuple[int, int], cell: int = CHECKER_CELL) -> Image.Image:
    small = Image.new("L", ((size[0] + cell - 1) // cell, (size[1] + cell - 1) // cell))
    small.putdata([204 if (x + y) % 2 else 153 for y in range(small.height) for x in range(small.width)])
    return small.resize((small.width * cell, small.height * cell), Image.Resampling.NEAREST).crop((0, 0, *size)).convert("RGB")


def prepare_image(path: str | Path, size: int, background: str) -> bytes:
    """PNG bytes: upright, 8-bit, flattened, longest edge at most `size`."""
    image = flatten(images.open_image(path), background)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@lru_cache(maxsize=256)
def _cached_example(path: str, mtime_ns: int, size: int, background: str) -> str:
    return data_url(prepare_image(path, size, background))


def example_url(path: Path, size: int, background: str) -> str:
    """Example images are the shared prefix: prepare each once (until its file changes)."""
    return _cached_example(str(path), path.stat().st_mtime_ns, size, background)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def build_messages(style: CaptionStyle, dataset: Path, target_png: bytes) -> list[dict]:
    """The few-shot conversation for one target image."""
    messages = [{"role": "system", "content": [{"type": "text", "text": style.system_prompt}]}]
    for example in style.examples:
        url = example_url(Path(dataset) / example.image, style.image_size, style.background)
        messages.append({"role": "user", "content": [image_part(url), {"type": "text", "text": style.instruction}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": example.caption}]})
    messages.append({"role": "user", "content": [image_part(data_url(target_png)),
                                                 {"type": "text", "text": style.instruction}]})
    return messages


def count_images(messages: list[dict]) -> int:
    return sum(1 for m in messages for part in m["content"] if part.get("type") == "image_url")
