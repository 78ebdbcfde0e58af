"""Progress words for a batch: "asset 2 of 3 · step 5 of 28", not Gradio's bare "15/27".

The engines report one running count over the whole batch (every item has the same number of
steps), which is right for the bar but says nothing to an artist; this turns it back into the
item and its step."""

from __future__ import annotations


def batch_step_text(done: int, total: int, count: int, noun: str, after_steps: str = "") -> str:
    """Words for `done` of `total` when `count` items each take total / count ticks.

    With `after_steps` (e.g. "decoding the transparency") each item's last tick is that stage, not a step:
    it is shown once the item's steps are done."""
    count = max(int(count), 1)
    per = max(total // count, 1)
    extra = 1 if after_steps else 0
    steps = max(per - extra, 1)
    item = min(max(done - 1, 0) // per, count - 1)
    position = done - item * per
    if extra and position >= steps:
        text = after_steps if position == steps else "done"
    else:
        text = f"step {position} of {steps}"
    return text if count == 1 else f"{noun} {item + 1} of {count} · {text}"
