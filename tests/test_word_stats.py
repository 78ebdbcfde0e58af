"""Word statistics of a dataset's captions: the counting rules (tags or prose, case, common words, once per
caption, phrases, rare terms), missing captions, trigger coverage as `dataset check` counts it, and the grid's
word filter agreeing with the counts."""

from PIL import Image

from blk.caption.style import CaptionStyle, PostProcess, dataset_style_path, save_style
from blk.data.captions import CaptionStore
from blk.data.grid import GridQuery, query_grid
from blk.data.word_stats import (
    STOP_WORDS,
    caption_terms,
    count_terms,
    dataset_word_stats,
    has_term,
    is_tag_style,
    normalize_term,
)


def make_dataset(folder, captions: dict[str, str | None]):
    """Images named by `captions`; a sidecar for each caption that is not None."""
    folder.mkdir(parents=True)
    for i, (image, text) in enumerate(captions.items()):
        Image.new("RGB", (16, 16), (10 * i, 40, 90)).save(folder / image)
        if text is not None:
            (folder / image).with_suffix(".txt").write_text(text, encoding="utf-8")
    return folder


def top(stats) -> dict[str, int]:
    return {t.term: t.captions for t in stats.top}


def test_a_caption_is_tags_when_three_in_four_comma_parts_are_three_words_or_fewer():
    assert is_tag_style("red hair, smiling, looking at viewer")
    assert is_tag_style("blkstyle, ink, a long tag with many words in it, paper")  # 3 of 4 short
    assert not is_tag_style("blkstyle, ink, a long tag with many words in it, another long part of prose here")
    assert not is_tag_style("A woman, a dog, and a cat sit quietly on a bench.")  # 2 of 3 short: prose
    assert not is_tag_style("blkstyle, a woman in a red dress stands in the rain.")
    assert not is_tag_style("red circle")  # one part: a (short) sentence
    assert not is_tag_style("")


def test_tags_are_whole_lower_case_and_once_per_caption():
    assert caption_terms("Red  Hair, smiling., red hair , Looking at Viewer,,") == {
        "red hair": "tag", "smiling": "tag", "looking at viewer": "tag"}


def test_prose_counts_words_without_common_words_and_phrases_of_adjacent_words():
    terms = caption_terms("A woman holds a Red umbrella. The red umbrella is wet, and the woman's coat is "
                          "black-and-white.")
    words = {t for t, kind in terms.items() if kind == "word"}
    phrases = {t for t, kind in terms.items() if kind == "phrase"}
    assert words == {"woman", "holds", "red", "umbrella", "wet", "woman's", "coat", "black-and-white"}
    assert phrases == {"woman holds", "red umbrella", "woman's coat"}  # "wet, and": punctuation and "and" break
    assert not {"a", "the", "is", "and"} & set(terms) and {"a", "the", "is", "and"} <= STOP_WORDS
    assert caption_terms("a red and blue umbrella") == {"red": "word", "blue": "word", "umbrella": "word",
                                                        "blue umbrella": "phrase"}  # no phrase across "and"
    assert caption_terms("It’s the Artist’s pen") == {"artist's": "word", "pen": "word", "artist's pen": "phrase"}
    assert caption_terms("   ") == {} and caption_terms("") == {}


def test_counts_are_captions_containing_a_term_and_shares_are_of_captioned_images():
    stats = count_terms({
        "a.png": "Ink ink INK on paper.",  # "ink" three times, one caption
        "b.png": "Ink lines on paper.",
        "c.png": "A paper crane.",
        "d.png": "",  # no caption: not in the shares
    }, top=3)
    assert stats.captioned == 3 and stats.missing == ["d.png"] and stats.tag_style == 0 and stats.prose == 3
    assert [(t.term, t.kind, t.captions) for t in stats.top] == [("paper", "word", 3), ("ink", "word", 2),
                                                                  ("crane", "word", 1)]  # then alphabetical
    assert [round(t.share, 4) for t in stats.top] == [1.0, 0.6667, 0.3333]
    assert count_terms({"a.png": "ink, ink, INK , paper"}).top[0].captions == 1  # a repeated tag: once


def test_rare_terms_are_words_and_tags_of_exactly_one_caption_with_its_image():
    stats = count_terms({
        "1.png": "A red umbrella in the rain.",
        "2.png": "A red umbrella on a tram.",
        "3.png": "A red umbrela beside a canal.",  # the typo an artist wants to find
        "4.png": "red hair, smiling, freckles",
        "5.png": "red hair, smiling",
    }, top=100)
    assert [(t.term, t.kind, t.image) for t in stats.rare] == [
        ("beside", "word", "3.png"), ("canal", "word", "3.png"), ("freckles", "tag", "4.png"),
        ("rain", "word", "1.png"), ("tram", "word", "2.png"), ("umbrela", "word", "3.png")]
    counted = top(stats)
    assert counted["red umbrella"] == 2 and counted["red"] == 3 and counted["red hair"] == 2
    assert counted["smiling"] == 2 and "red umbrela" not in counted  # a phrase of one caption is not listed
    assert not [t for t in stats.rare if t.kind == "phrase"]
    assert stats.tag_style == 2 and stats.distinct == len(counted)


def test_a_term_used_as_a_tag_and_as_a_word_is_one_term_of_both_kinds():
    stats = count_terms({"a.png": "ink, paper, brush", "b.png": "Ink on wet paper."})
    assert {t.term: (t.kind, t.captions) for t in stats.top}["ink"] == ("tag, word", 2)


def test_empty_dataset_and_a_dataset_without_captions(tmp_path):
    empty = count_terms({})
    assert (empty.captioned, empty.top, empty.rare, empty.missing, empty.distinct) == (0, [], [], [], 0)
    (tmp_path / "none").mkdir()
    assert dataset_word_stats(tmp_path / "none").top == []
    folder = make_dataset(tmp_path / "bare", {"a.png": None, "b.png": "  \n", "c.png": None})
    stats = dataset_word_stats(folder)
    assert stats.captioned == 0 and stats.missing == ["a.png", "b.png", "c.png"] and stats.top == []


def test_dataset_stats_read_the_sidecars_on_disk_now(tmp_path):
    folder = make_dataset(tmp_path / "inks", {"a.png": "ink wash, paper", "b.png": "ink wash, crow",
                                              "c.png": None, "broken.png": "ink wash"})
    (folder / "broken.png").write_bytes(b"not an image")  # a bad file is not an image of the dataset
    (folder / "d.txt").write_text("orphan words")  # a caption without an image is not counted
    (folder / "e.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "e.txt").write_bytes("Café au lait, ink wash".encode("cp1252"))  # not UTF-8: still read
    stats = dataset_word_stats(folder)
    assert (stats.captioned, stats.missing) == (3, ["c.png"])
    assert top(stats) == {"ink wash": 3, "café au lait": 1, "crow": 1, "paper": 1}
    store = CaptionStore(folder)
    store.save("a.png", "crow, paper", store.read("a.png").hash, source="human")
    store.save("c.png", "crow", "", source="model")  # machine-written
    stats = dataset_word_stats(folder)
    assert top(stats)["ink wash"] == 2 and top(stats)["crow"] == 3 and stats.missing == []


def test_trigger_coverage_is_the_dataset_checks(tmp_path):
    from blk.data.check import check_dataset

    folder = make_dataset(tmp_path / "inks", {
        "a.png": "BLKstyle, a crow", "b.png": "a crow in blkstyle.", "c.png": "blkstyles, a crow",
        "d.png": "xblkstyle crow", "e.png": None, "f.png": "a crow"})
    assert dataset_word_stats(folder).trigger is None  # no style, no trigger
    save_style(CaptionStyle(post=PostProcess(trigger="blkstyle")), dataset_style_path(folder))
    stats = dataset_word_stats(folder)
    report = check_dataset(folder, trigger="blkstyle")
    assert stats.trigger == "blkstyle" and stats.trigger_missing == ["c.png", "d.png", "f.png"]
    assert stats.trigger_missing == report.trigger_missing and stats.captioned == report.captioned
    assert stats.trigger_covered == 2
    dataset_style_path(folder).write_text("post: [unclosed")  # a broken style file: no trigger, no error
    assert dataset_word_stats(folder).trigger is None


def test_the_grid_word_filter_shows_exactly_the_captions_a_count_counts(tmp_path):
    folder = make_dataset(tmp_path / "inks", {
        "red.png": "A crow on a wire.",  # the name says red, the caption does not
        "a.png": "A red crow. Red, red!",
        "b.png": "Tired crows on a red roof.",  # "tired" is not "red"
        "c.png": "red roof, crow, Red Roof",
        "d.png": "blue roof, crow",
        "e.png": None})
    stats = dataset_word_stats(folder, top=100)
    for term in stats.top + stats.rare:
        page = query_grid(folder, GridQuery(term=term.term, page_size=100))
        assert page.total == term.captions, term
    red = query_grid(folder, GridQuery(term=" RED ", page_size=100))
    assert [r.image for r in red.rows] == ["a.png", "b.png"]  # the word; c.png has the tag "red roof"
    assert [r.image for r in query_grid(folder, GridQuery(term="red roof", page_size=100)).rows] == ["b.png", "c.png"]
    assert query_grid(folder, GridQuery(text="red", page_size=100)).total == 4  # the text filter is unchanged
    assert query_grid(folder, GridQuery(term="", page_size=100)).total == 6  # no term: every image
    assert query_grid(folder, GridQuery(term="red", status="none", page_size=100)).total == 0  # both apply
    assert has_term("Red roof, crow", "red roof") and not has_term("Red roof, crow", "roof")
    assert normalize_term("  Looking  AT viewer. ") == "looking at viewer"


def test_any_mark_between_words_breaks_a_phrase():
    """Dashes, ellipses, ampersands, asterisks and underscores end a phrase like commas do ("no punctuation
    between them"); inner hyphens and apostrophes keep a word whole; a typed trailing apostrophe still matches."""
    from blk.data.word_stats import _read, normalize_term

    for text, false_phrase in (("a sleeping cat — curled dog", "cat curled"), ("fox & hound", "fox hound"),
                               ("red – blue", "red blue"), ("moon … tide", "moon tide"), ("ink*wash", "ink wash"),
                               ("ink_wash", "ink wash"), ("stone - path", "stone path")):
        _, terms = _read(text)
        assert false_phrase not in terms, (text, terms)
    _, terms = _read("the artist's black-and-white study")
    assert {"artist's", "black-and-white", "black-and-white study"} <= terms
    assert normalize_term("Artists' ") == "artists" and "artists" in _read("the artists' studio")[1]
