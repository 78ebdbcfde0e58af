"""Say when a prompt is longer than the text encoders read.

diffusers cuts a prompt to each encoder's length (CLIP 77 tokens, T5 512 for
FLUX.1-dev and 256 for schnell) and only logs it; the words past the cut are
simply not drawn. The notice names the encoder and the count so the artist can
shorten the prompt. FLUX's CLIP encoder gives only a pooled summary while T5
reads the words, so for FLUX only T5's cut is said.
"""

from __future__ import annotations

from blk.data.check import encoder_budgets


def prompt_length_notice(pipe, family: str, model_name: str, prompt: str, what: str = "prompt") -> str:
    """One sentence when `prompt` is cut by an encoder that reads its words, else ""."""
    if not (prompt or "").strip():
        return ""
    budgets = encoder_budgets(family, model_name)
    if family == "flux":
        budgets = [b for b in budgets if b.subfolder == "tokenizer_2"]
    cut = []
    for budget in budgets:
        tokenizer = getattr(pipe, budget.subfolder, None)
        if tokenizer is None:
            continue
        count = len(tokenizer(prompt, truncation=False).input_ids)
        if count > budget.limit:
            cut.append((budget, count))
    if not cut:
        return ""
    budget, count = max(cut, key=lambda item: item[1])
    names = " and ".join(b.name for b, _ in cut)
    return (f"The {what} is {count} tokens long for {names}, which read{'s' if len(cut) == 1 else ''} the first "
            f"{budget.limit}: the words after that were not used.")
