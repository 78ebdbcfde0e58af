"""Turn a model's answer into a caption: trim, drop boilerplate openings, one line, trigger word."""

from __future__ import annotations

import re

from blk.caption.style import PostProcess

PLACEHOLDER = "[trigger]"


def clean_caption(text: str, post: PostProcess) -> str:
    caption = text.strip().strip('"').strip()
    if post.one_line:
        caption = re.sub(r"\s+", " ", caption)
    for opening in sorted(post.strip_openings, key=len, reverse=True):
        if opening and caption.lower().startswith(opening.lower()):
            caption = caption[len(opening):].lstrip(" ,:;-")
            if caption[:1].islower() and not caption.startswith(PLACEHOLDER):
                caption = caption[0].upper() + caption[1:]
            break
    return apply_trigger(caption, post)


def apply_trigger(caption: str, post: PostProcess) -> str:
    trigger = post.trigger.strip()
    if post.trigger_mode == "placeholder":
        return caption.replace(PLACEHOLDER, trigger) if trigger else caption.replace(PLACEHOLDER, "").strip()
    if post.trigger_mode == "prefix" and trigger and not caption.lower().startswith(trigger.lower()):
        return f"{trigger}, {caption}" if caption else trigger
    return caption
