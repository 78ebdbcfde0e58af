"""How a dataset's captions use words: the most frequent terms, the rare ones, trigger-word coverage.

The rules, kept simple so that an artist can predict them:

- A caption is read **as tags** when it has two or more comma-separated parts and at least
  three in four of those parts are three words or fewer (`red hair, smiling, outdoors`).
  Otherwise it is read **as prose**. Each caption is judged on its own, so a dataset may mix both.
- In a tag caption, each whole tag is a term: lower-cased, inner spaces collapsed, end
  punctuation (`.;:!?`) dropped. Words inside a tag are not counted separately.
- In a prose caption, each word is a term (letters and digits; `artist's` and `black-and-white`
  stay one word), lower-cased, except a small built-in list of common English words
  (`STOP_WORDS`: a, the, of, with…). Two-word **phrases** are also terms: two words that stand
  next to each other in the text, with no punctuation between them, neither of them a common word
  (`red umbrella` in "holds a red umbrella.").
- A caption counts **once per term**, however often it repeats it: a term's count is the number
  of captions that contain it, and its share is that count over the captions that have text.
- **Rare** terms are the words and tags found in exactly one caption (often a typo or a one-off
  description). Phrases are listed among the frequent terms only when at least two captions
  share them, and never as rare (nearly every sentence has a phrase of its own).
- An image whose sidecar caption is missing or holds only whitespace is not counted; it is
  listed as missing.
- The trigger word (the dataset style's, `post.trigger`) is covered by a caption that contains it
  as a whole word, in any case — the rule of `dataset check`.

`caption_terms` gives the terms of one caption by these rules, and `has_term` asks whether a caption
has one; the grid's word filter (`GridQuery.term`) uses it, so a filtered grid shows exactly the
captions a count counts. A curly apostrophe reads as a straight one (`artist’s` = `artist's`).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

STOP_WORDS = frozenset("""
a an the and or but nor so yet if then than as of at by for from in into onto on off to with without
within over under about above below between through during before after against among around across
along upon via is are was were be been being am has have had having do does did done can could will
would shall should may might must it its it's this that these those there here which who whom whose
what where when while how why i me my we us our you your he him his she her they them their itself
themselves not no very too also just only such each some any all both other another more most much
many few one's own same s t
""".split())

TAG_WORDS_MAX = 3  # a comma-separated part of at most this many words reads as a tag
# a word (letters and digits, inner ' or -), or a break: any other mark (— – … & * _ and a lone - too), so
# "a cat — curled dog" has no phrase "cat curled"
_TOKEN = re.compile(r"([^\W_]+(?:['-][^\W_]+)*)|[^\w\s]+|_+")
_TAG_END = " \t.;:!?"

TAG, WORD, PHRASE = "tag", "word", "phrase"


@dataclass(frozen=True)
class TermCount:
    term: str
    kind: str  # tag | word | phrase; "tag, word" when captions use it both ways
    captions: int  # captions containing it (each once)
    share: float  # captions / captioned
    image: str = ""  # for a rare term: the image whose caption holds it


@dataclass
class WordStats:
    captioned: int = 0  # captions with text
    tag_style: int = 0  # of those, read as tags
    missing: list[str] = field(default_factory=list)  # images without a caption
    distinct: int = 0  # different terms (phrases shared by fewer than two captions left out)
    top: list[TermCount] = field(default_factory=list)  # most frequent first, then alphabetical
    rare: list[TermCount] = field(default_factory=list)  # in exactly one caption, alphabetical
    trigger: str | None = None
    trigger_missing: list[str] = field(default_factory=list)  # captioned images without the trigger

    @property
    def prose(self) -> int:
        return self.captioned - self.tag_style

    @property
    def trigger_covered(self) -> int:
        return self.captioned - len(self.trigger_missing)


def normalize_term(term: str | None) -> str:
    """A typed or clicked term as the counts spell it: lower case, single spaces, no end punctuation."""
    return " ".join((term or "").lower().replace("’", "'").split()).strip(_TAG_END + "'")


def is_tag_style(text: str) -> bool:
    """Two or more comma-separated parts, at least 3 in 4 of them three words or fewer."""
    return _read(text)[0]


def tag_share(text: str) -> float:
    """The share of comma-separated parts of three words or fewer (0 for a single part): `is_tag_style`'s
    measure, for rules that must not flip on one edited part."""
    parts = _parts(text.lower())
    return sum(len(part.split()) <= TAG_WORDS_MAX for part in parts) / len(parts) if len(parts) >= 2 else 0.0


def caption_terms(text: str) -> dict[str, str]:
    """The terms of one caption (each once) and their kind, by the rules in the module's docstring."""
    tags, terms = _read(text)
    return {term: TAG if tags else PHRASE if " " in term else WORD for term in terms}


def has_term(text: str, term: str) -> bool:
    """Whether a caption contains a term (typed or clicked), as the counts see it."""
    term = normalize_term(term)
    return bool(term) and term in _read(text)[1]


def whole_word(word: str) -> re.Pattern:
    """`word` as a whole word, in any case: the trigger-coverage rule of `dataset check`."""
    return re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", re.IGNORECASE)


def _parts(text: str) -> list[str]:
    return [part for part in text.split(",") if part and not part.isspace()]


def _read(text: str) -> tuple[bool, set[str]]:
    """(read as tags?, its terms). In prose, a term with a space is a phrase, one without a word."""
    lowered = text.lower().replace("’", "'")
    parts = _parts(lowered)
    if tag_share(lowered) >= 0.75:  # 3 in 4 parts short (two parts at least: tag_share is 0 for one)
        tags = {" ".join(part.split()).strip(_TAG_END) for part in parts}
        tags.discard("")
        return True, tags
    # words, with "" for each run of punctuation; a common word or punctuation ends a phrase
    kept = [token if token and token not in STOP_WORDS else None for token in _TOKEN.findall(lowered)]
    terms = {f"{a} {b}" for a, b in zip(kept, kept[1:]) if a and b}
    terms.update(kept)
    terms.discard(None)
    return False, terms


def count_terms(captions: Mapping[str, str], trigger: str | None = None, top: int = 50) -> WordStats:
    """Word statistics of `captions` (image → caption text, in the order to report them)."""
    stats = WordStats(trigger=(trigger or "").strip() or None)
    counts: Counter[str] = Counter()
    tag_terms: set[str] = set()  # seen as a tag in some caption
    prose_terms: set[str] = set()  # seen as a word or a phrase in some caption
    read: list[tuple[str, set[str]]] = []
    for image, text in captions.items():
        if not text or text.isspace():
            stats.missing.append(image)
            continue
        tags, terms = _read(text)
        stats.captioned += 1
        stats.tag_style += tags
        (tag_terms if tags else prose_terms).update(terms)
        counts.update(terms)
        read.append((image, terms))
    if stats.trigger:
        pattern = whole_word(stats.trigger)
        stats.trigger_missing = [image for image, text in captions.items()
                                 if text and not text.isspace() and not pattern.search(text)]

    def kind(term: str) -> str:
        kinds = [TAG] if term in tag_terms else []
        if term in prose_terms:
            kinds.append(PHRASE if " " in term else WORD)
        return ", ".join(sorted(kinds))

    # a phrase only ever seen in prose, in one caption, is not listed
    shown = [(term, n) for term, n in counts.items() if n >= 2 or " " not in term or term in tag_terms]
    stats.distinct = len(shown)
    total = stats.captioned or 1
    stats.top = [TermCount(term, kind(term), n, n / total)
                 for term, n in heapq.nsmallest(max(0, top), shown, key=lambda item: (-item[1], item[0]))]
    rare = {term for term, n in shown if n == 1}
    where = {term: image for image, terms in read for term in rare.intersection(terms)}
    stats.rare = [TermCount(term, kind(term), 1, 1 / total, where[term]) for term in sorted(rare)]
    return stats


def style_trigger(dataset: str | Path) -> str | None:
    """The trigger word of the dataset's caption style, if it has one (a broken style file: none)."""
    from blk.caption.style import dataset_style
    from blk.errors import UserError

    try:
        return dataset_style(dataset).post.trigger.strip() or None
    except UserError:
        return None


def read_captions(dataset: str | Path) -> dict[str, str]:
    """The current sidecar caption of every usable image (empty text when it has none), in path order."""
    from blk.data.captions import CaptionStore
    from blk.data.scan import scan

    dataset = Path(dataset).resolve()
    store = CaptionStore(dataset)
    return {record.rel: store.read(record.rel).text for record in scan(dataset) if record.ok}


def dataset_word_stats(dataset: str | Path, top: int = 50) -> WordStats:
    """Word statistics of a dataset's sidecar captions as they are on disk now, with its style's trigger."""
    return count_terms(read_captions(dataset), style_trigger(dataset), top)
