"""Captions drifting from the few-shot examples: the dataset check's view of style consistency.

The examples are the artist's statement of how a caption should read. A caption that has moved
away from them teaches the LoRA something else, and a model's answer drifts in recognisable ways,
each said in plain words so the curator can decide:

- **form**: prose where the examples are tags, or tags where they are prose (`word_stats`' rule), only
  when the caption is clearly the other form: a tag caption with one long part among three short ones sits on
  the rule's edge, and one edited part must not make it "prose";
- **length**: over twice the longest example's words, or under half the shortest's (3 words of slack
  either way; a caption of one or two words is short beside any longer example);
- **opening**: the boilerplate a vision-language model starts with ("This image shows"), which the
  caption style strips and no example starts with;
- **layout**: several lines, or Markdown (`**`, `#`, list marks), where the examples are one plain line.

Only the artist's examples are the reference: nothing is learned from the captions being judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from blk.data.word_stats import TAG_WORDS_MAX, is_tag_style, tag_share, whole_word

LENGTH_SLACK = 3  # words: a 4-word example makes 6-word captions no outliers
# a caption is clearly prose below this share of short parts (tags: from 3 in 4, `is_tag_style`); between the
# two it is on the edge, and its form is not judged
PROSE_BELOW = 0.5
MARKDOWN = re.compile(r"\*\*|^\s*#{1,6}\s|^\s*(?:[-*•]|\d+[.)])\s", re.MULTILINE)  # bold, headings, lists


@dataclass(frozen=True)
class DriftBasis:
    """What the examples say a caption looks like."""
    examples: int
    tags: bool | None  # None: the examples mix tags and prose, so form is not judged
    shortest: int  # words
    longest: int
    one_line: bool
    plain: bool  # no Markdown in any example
    openings: tuple[str, ...]  # boilerplate openings that no example starts with

    def describe(self) -> str:
        form = {True: "tags", False: "prose", None: "tags and prose"}[self.tags]
        words = f"{self.shortest} words" if self.shortest == self.longest else f"{self.shortest}–{self.longest} words"
        return f"{self.examples} example(s): {form}, {words}"


def word_count(text: str) -> int:
    return len(text.split())


def _without_trigger(text: str, trigger: str | None) -> str:
    """The caption after a leading trigger word (prefix mode writes "blkstyle, caption")."""
    stripped = text.strip()
    found = whole_word(trigger).match(stripped) if trigger else None  # "blk" is not the start of "blkstyle"
    return stripped[found.end():].lstrip(" ,:;-") if found else stripped


def drift_basis(examples: list[str], openings: list[str], trigger: str | None = None) -> DriftBasis | None:
    """The reference the examples give, or None without examples (nothing to drift from)."""
    texts = [text for text in examples if text.strip()]
    if not texts:
        return None
    forms = [is_tag_style(text) for text in texts]
    agreed = sum(forms) * 3 >= 2 * len(forms) or (len(forms) - sum(forms)) * 3 >= 2 * len(forms)
    counts = [word_count(text) for text in texts]
    starts = [_without_trigger(text, trigger).lower() for text in texts]
    unused = tuple(o for o in openings if o.strip() and not any(s.startswith(o.lower()) for s in starts))
    return DriftBasis(len(texts), (sum(forms) * 2 > len(forms)) if agreed else None, min(counts), max(counts),
                      all("\n" not in text.strip() for text in texts), not any(MARKDOWN.search(t) for t in texts),
                      unused)


def drift_reasons(caption: str, basis: DriftBasis, trigger: str | None = None) -> list[str]:
    """Each way one caption has moved away from the examples, as a short phrase; empty when it has not."""
    reasons = []
    ambiguous = "," not in caption and word_count(caption) <= TAG_WORDS_MAX  # "cube": a tag, or a short phrase
    if basis.tags is not None and not ambiguous:
        if basis.tags and tag_share(_without_trigger(caption, trigger)) < PROSE_BELOW:  # "trigger, sentence"
            reasons.append("prose where the examples are tags")
        elif not basis.tags and is_tag_style(caption):
            reasons.append("tags where the examples are prose")
    words = word_count(caption)
    if words > 2 * basis.longest + LENGTH_SLACK:
        reasons.append(f"{words} words (the longest example has {basis.longest})")
    elif words < basis.shortest / 2 - LENGTH_SLACK or (words < basis.shortest and words <= 2):
        reasons.append(f"{words} word(s) (the shortest example has {basis.shortest})")
    start = _without_trigger(caption, trigger).lower()
    opening = next((o for o in basis.openings if start.startswith(o.lower())), None)
    if opening:
        reasons.append(f"opens with “{opening}”, which no example does")
    if basis.one_line and "\n" in caption.strip():
        reasons.append("several lines (the examples are one line)")
    if basis.plain and MARKDOWN.search(caption):
        reasons.append("Markdown marks (the examples are plain text)")
    return reasons


def drifting_captions(captions: dict[str, str], examples: dict[str, str], openings: list[str],
                      trigger: str | None = None) -> tuple[DriftBasis | None, list[tuple[str, str]]]:
    """(the examples' basis, [(image, "reason; reason"), …]) for the captions that drift. `examples` maps
    each example's image to its caption; an example's own image is not judged against itself."""
    basis = drift_basis(list(examples.values()), openings, trigger)
    if basis is None:
        return None, []
    found = []
    for image, text in captions.items():
        if image in examples or not text.strip():
            continue
        reasons = drift_reasons(text, basis, trigger)
        if reasons:
            found.append((image, "; ".join(reasons)))
    return basis, found
