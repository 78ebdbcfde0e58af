"""Where captions come from: an OpenAI-compatible server (vLLM) or transformers in-process.

Both take the same OpenAI-format messages (see `prompt.build_messages`) and
return the text with token counts, so a batch does not care which one runs.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from pathlib import Path

from blk.caption.style import Sampling
from blk.errors import UserError


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int


class ServerBackend:
    """A running OpenAI-compatible server, e.g. vLLM on 127.0.0.1. Requests may run concurrently."""

    name = "vllm"

    def __init__(self, base_url: str, model: str | None = None, timeout_s: float = 600.0,
                 max_concurrency: int = 8, ignore_eos: bool = False):
        from openai import OpenAI

        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.client = OpenAI(base_url=self.base_url, api_key="local", timeout=timeout_s, max_retries=0)
        self.max_concurrency = max_concurrency
        self.ignore_eos = ignore_eos  # fixed-length answers (tests and benchmarks)
        self.model = model or self._served_model()

    def _served_model(self) -> str:
        from openai import APIConnectionError, APIError

        try:
            models = self.client.models.list().data
        except APIConnectionError:
            raise UserError(f"No captioning server answers at {self.base_url}; start it or let the studio start one.") from None
        except APIError as exc:
            raise UserError(f"The captioning server at {self.base_url} refused to list its models ({exc}).") from None
        if not models:
            raise UserError(f"The captioning server at {self.base_url} serves no model.")
        return models[0].id

    def caption(self, messages: list[dict], sampling: Sampling) -> Answer:
        from openai import APIConnectionError, APIError, APITimeoutError

        extra = {"ignore_eos": True} if self.ignore_eos else None
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_tokens, seed=sampling.seed, extra_body=extra,
            )
        except APITimeoutError:
            raise UserError("The captioning server took too long to answer.") from None
        except APIConnectionError:
            raise UserError(f"The captioning server at {self.base_url} stopped answering.") from None
        except APIError as exc:
            raise UserError(f"The captioning server refused the request: {_first_line(exc)}") from None
        usage = response.usage
        return Answer(response.choices[0].message.content or "", usage.prompt_tokens if usage else 0,
                      usage.completion_tokens if usage else 0)


class TransformersBackend:
    """The same model run in this process with transformers: slower, no server needed. One request at a time."""

    name = "transformers"
    max_concurrency = 1

    def __init__(self, model_path: str | Path, device: str = "auto", ignore_eos: bool = False):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from blk.models.device import pick_device

        self.device = pick_device(device)
        self.ignore_eos = ignore_eos
        try:
            self.processor = AutoProcessor.from_pretrained(str(model_path), local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(str(model_path), local_files_only=True).to(self.device)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{model_path} is not a vision-language model transformers can load: {_first_line(exc)}") from None
        self.model.eval()
        self._lock = threading.Lock()

    def prompt_inputs(self, messages: list[dict]):
        """Chat template + processor, exactly as generation sees them."""
        conversation, pictures = to_processor_messages(messages)
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return self.processor(text=prompt, images=pictures or None, return_tensors="pt")

    def caption(self, messages: list[dict], sampling: Sampling) -> Answer:
        import torch

        with self._lock:
            inputs = self.prompt_inputs(messages).to(self.device)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            generate = dict(max_new_tokens=sampling.max_tokens, do_sample=sampling.temperature > 0)
            if sampling.temperature > 0:
                generate.update(temperature=sampling.temperature, top_p=sampling.top_p)
            if self.ignore_eos:
                generate.update(min_new_tokens=sampling.max_tokens)
            with torch.inference_mode():
                output = self.model.generate(**inputs, **generate)
            new = output[0, inputs["input_ids"].shape[1]:]
            text = self.processor.decode(new, skip_special_tokens=True)
            return Answer(text, int(inputs["input_ids"].shape[1]), int(new.shape[0]))


def to_processor_messages(messages: list[dict]):
    """OpenAI parts → transformers chat parts; data-URL images decoded to PIL, in order."""
    from PIL import Image

    conversation, pictures = [], []
    for message in messages:
        parts = []
        for part in message["content"]:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith("data:"):
                    raise UserError("Only images embedded in the request can be captioned offline.")
                pictures.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part["text"]})
        conversation.append({"role": message["role"], "content": parts})
    return conversation, pictures


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
