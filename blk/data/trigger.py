"""A dataset's trigger word, one answer for the Caption check and the Train tab's sample prompts.

The artist sets it once, in the dataset's caption style (`post.trigger`, written into captions as
"word, caption" or in place of "[trigger]"). Before, Check asked for it again in its own box, and
Train sampled with the preset's "blkstyle" whatever the dataset taught: a run on captions starting
"mira_ink, …" showed samples without the word the LoRA learned, so its samples looked untrained.
"""

from __future__ import annotations

from pathlib import Path


def style_trigger(dataset: str | Path) -> str:
    """The trigger word the dataset's caption style writes, or "" (none set, mode "none", no style, or a
    damaged style file, which the Caption tab reports itself)."""
    from blk.caption.style import dataset_style
    from blk.errors import UserError

    try:
        post = dataset_style(dataset).post
    except UserError:
        return ""
    return post.trigger.strip() if post.trigger_mode != "none" else ""


def leading_word(prompts: list[str]) -> str | None:
    """The single word a preset's prompts all start with before their first comma ("blkstyle, a cube" →
    "blkstyle"): its trigger word, which a dataset's replaces. None when they share none."""
    heads = {prompt.split(",", 1)[0].strip() for prompt in prompts if prompt.strip()}
    if len(heads) != 1:
        return None
    head = heads.pop()
    if not head or any(ch.isspace() for ch in head) or not all("," in p for p in prompts if p.strip()):
        return None
    return head


def with_trigger(prompts: list[str], trigger: str, previous: str) -> list[str]:
    """The prompts with their leading `previous` word (a preset's "blkstyle", or the trigger written for the
    dataset chosen before; it may hold spaces) replaced by `trigger`. Unchanged unless every prompt starts
    with `previous`: prompts the artist wrote themselves are not rewritten."""
    if not trigger or not previous or previous == trigger or not all_start_with(prompts, previous):
        return list(prompts)
    return [trigger + prompt.strip()[len(previous):] if prompt.strip() else prompt for prompt in prompts]


def all_start_with(prompts: list[str], word: str) -> bool:
    """Whether every prompt (there is one at least) starts with `word` before its first comma."""
    written = [prompt for prompt in prompts if prompt.strip()]
    return bool(written) and all(prompt.split(",", 1)[0].strip() == word for prompt in written)
