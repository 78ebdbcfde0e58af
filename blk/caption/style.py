"""A caption style: how the model is asked, shown with a dataset's own approved examples.

One schema for the preset files (`presets/caption-*.yaml`), the dataset's own
style (`datasets/NAME/.blk/caption-style.yaml`), the UI form and the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from blk.errors import UserError
from blk.yaml_io import load_model, save_model

STYLE_FILE = "caption-style.yaml"

DEFAULT_OPENINGS = [
    "This image shows", "The image shows", "This image depicts", "The image depicts",
    "This is an image of", "In this image,", "The picture shows", "This picture shows",
]


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misplaced key is said, not silently ignored
    image: str  # path relative to the dataset
    caption: str


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misplaced key is said, not silently ignored
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(300, ge=1, le=4096)
    seed: int | None = 0


class PostProcess(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misplaced key is said, not silently ignored
    strip_openings: list[str] = Field(default_factory=lambda: list(DEFAULT_OPENINGS))
    trigger: str = ""  # e.g. "blkstyle"
    trigger_mode: Literal["prefix", "placeholder", "none"] = "prefix"  # placeholder: replace "[trigger]"
    one_line: bool = True


class CaptionStyle(BaseModel):
    # a key it does not know is said: `trigger:` at the top instead of under `post:`, or a training preset given
    # as a style, were accepted without a word and changed nothing
    model_config = ConfigDict(extra="forbid")
    name: str = "default"
    system_prompt: str = (
        "You caption images for training an image model on one artist's work. Describe content, "
        "composition, lighting and mood precisely in plain sentences. Never name the style or the artist."
    )
    instruction: str = "Describe this image."
    examples: list[Example] = Field(default_factory=list)
    image_size: int = Field(512, ge=28, le=4096)  # longest edge sent to the model
    background: Literal["grey", "checkerboard", "white", "black"] = "grey"  # under transparent pixels
    sampling: Sampling = Field(default_factory=Sampling)
    post: PostProcess = Field(default_factory=PostProcess)

    def with_examples(self, examples: list[Example]) -> "CaptionStyle":
        return self.model_copy(update={"examples": list(examples)})


def load_style(path: str | Path) -> CaptionStyle:
    """Read a style file; malformed YAML or fields become one sentence."""
    return load_model(path, CaptionStyle)


def save_style(style: CaptionStyle, path: str | Path) -> None:
    save_model(style, path)


def dataset_style_path(dataset: str | Path) -> Path:
    return Path(dataset) / ".blk" / STYLE_FILE


def dataset_style(dataset: str | Path, fallback: CaptionStyle | None = None) -> CaptionStyle:
    """The dataset's own style if it has one, else `fallback` (or the default style)."""
    path = dataset_style_path(dataset)
    if path.exists():
        return with_current_captions(dataset, load_style(path))
    return fallback or CaptionStyle()


def stored_style(dataset: str | Path) -> CaptionStyle:
    """The dataset's style file as written (examples with their promoted text): what a change to the style
    starts from, so that saving it never writes a caption's later, unapproved text into the file."""
    path = dataset_style_path(dataset)
    return load_style(path) if path.exists() else CaptionStyle()


PERSONS_STATUSES = ("approved", "edited")  # a caption's statuses (blk.data.captions) that a person's words have


def with_current_captions(dataset: str | Path, style: CaptionStyle) -> CaptionStyle:
    """Each example with its image's caption as it reads now while a person wrote it (approved or edited), so
    that a later edit (by hand, or a bulk edit such as a renamed trigger word) reaches what the model is shown.
    A caption that is gone, cannot be read, or is a machine's again (a restored model version) leaves the
    promoted text: only a person's words are shown as examples. (Caption batches skip an example's image.)"""
    from blk.data.captions import CaptionStore

    store = CaptionStore(dataset)
    examples = []
    for example in style.examples:
        try:
            text = store.read(example.image).text if store.status(example.image) in PERSONS_STATUSES else ""
        except UserError:  # an unsafe or unreadable path in a hand-edited style file
            text = ""
        examples.append(example.model_copy(update={"caption": text}) if text.strip() else example)
    return style.with_examples(examples)


def promote_example(dataset: str | Path, image: str) -> CaptionStyle:
    """Make an approved caption one of the dataset style's few-shot examples."""
    from blk.data.captions import CaptionStore

    if not image:
        raise UserError("Choose an image with an approved caption to promote.")
    store = CaptionStore(dataset)
    if store.status(image) != "approved":
        raise UserError(f"Approve the caption of {image} before using it as an example.")
    style = stored_style(dataset)
    examples = [e for e in style.examples if e.image != image] + [Example(image=image, caption=store.read(image).text)]
    style = style.with_examples(examples)
    save_style(style, dataset_style_path(dataset))
    return with_current_captions(dataset, style)


def move_example(dataset: str | Path, index: int, offset: int) -> CaptionStyle:
    """Reorder the examples (offset -1: up, +1: down); out-of-range moves change nothing."""
    style = stored_style(dataset)
    examples = list(style.examples)
    target = index + offset
    if 0 <= index < len(examples) and 0 <= target < len(examples):
        examples[index], examples[target] = examples[target], examples[index]
        style = style.with_examples(examples)
        save_style(style, dataset_style_path(dataset))
    return with_current_captions(dataset, style)


def drop_example(dataset: str | Path, index: int) -> CaptionStyle:
    style = stored_style(dataset)
    if 0 <= index < len(style.examples):
        style = style.with_examples(style.examples[:index] + style.examples[index + 1:])
        save_style(style, dataset_style_path(dataset))
    return with_current_captions(dataset, style)
