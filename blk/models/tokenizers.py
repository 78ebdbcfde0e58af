"""A model's own tokenizers, loaded from its local folder (for token budgets)."""

from __future__ import annotations

from blk.errors import UserError
from blk.models.registry import ResolvedModel


def load_tokenizers(model: ResolvedModel, subfolders: list[str]) -> dict[str, object]:
    """Map each subfolder (tokenizer, tokenizer_2) to its loaded tokenizer."""
    if model.single_file:
        raise UserError(f"{model.name} is a single-file checkpoint without tokenizers; count tokens with its base model.")
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    loaded = {}
    for sub in subfolders:
        try:
            loaded[sub] = AutoTokenizer.from_pretrained(str(model.path / sub), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"The tokenizer in {model.path / sub} cannot be loaded ({str(exc).splitlines()[0]}).") from None
    return loaded
