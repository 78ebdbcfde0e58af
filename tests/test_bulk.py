"""Bulk edits: preview first, apply with history, undo; conflicts left alone."""

import pytest
from PIL import Image

from blk.data.bulk import BulkLog, preview_affix, preview_replace, preview_trigger
from blk.data.captions import CaptionStore
from blk.errors import UserError


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    texts = {"a.png": "a red cube, thin lines", "b.png": "A Red sphere", "c.png": "a blue cone", "d.png": ""}
    for name, text in texts.items():
        Image.new("RGB", (4, 4)).save(folder / name)
        if text:
            (folder / name).with_suffix(".txt").write_text(text)
    return folder


IMAGES = ["a.png", "b.png", "c.png", "d.png"]


def test_preview_writes_nothing_and_apply_then_undo(dataset):
    store = CaptionStore(dataset)
    changes = preview_replace(store, IMAGES, "red", "crimson", ignore_case=True)
    assert [(c.image, c.after) for c in changes] == [("a.png", "a crimson cube, thin lines"), ("b.png", "A crimson sphere")]
    assert (dataset / "a.txt").read_text() == "a red cube, thin lines"
    log = BulkLog(dataset)
    result = log.apply(changes, "red → crimson")
    assert result.applied == ["a.png", "b.png"] and result.conflicts == []
    assert store.read("b.png").text == "A crimson sphere" and store.versions("b.png")[-1]["source"] == "bulk"
    undone = log.undo()
    assert undone.applied == ["a.png", "b.png"]
    assert store.read("a.png").text == "a red cube, thin lines" and store.read("b.png").text == "A Red sphere"
    with pytest.raises(UserError, match="no bulk action"):
        log.undo()


def test_regex_with_groups_and_plain_text_with_backslashes(dataset):
    store = CaptionStore(dataset)
    regex = preview_replace(store, IMAGES, r"a (\w+) (cube|cone)", r"one \2 in \1", regex=True)
    assert {c.image: c.after for c in regex} == {"a.png": "one cube in red, thin lines", "c.png": "one cone in blue"}
    plain = preview_replace(store, IMAGES, "cone", r"co\1ne")
    assert plain[0].after == r"a blue co\1ne"
    with pytest.raises(UserError, match="not a valid regular expression"):
        preview_replace(store, IMAGES, "(unclosed", "x", regex=True)


def test_conflicts_are_skipped_on_apply_and_undo(dataset):
    store = CaptionStore(dataset)
    changes = preview_affix(store, IMAGES, prefix="ink drawing, ")
    assert len(changes) == 4 and changes[3].after == "ink drawing, "
    (dataset / "c.txt").write_text("someone typed this meanwhile")
    log = BulkLog(dataset)
    result = log.apply(changes, "prefix")
    assert result.conflicts == ["c.png"] and "c.png" not in result.applied
    store.save("a.png", "edited after the bulk action", store.read("a.png").hash)
    undone = log.undo()
    assert undone.conflicts == ["a.png"] and store.read("a.png").text == "edited after the bulk action"
    assert store.read("b.png").text == "A Red sphere"


def test_trigger_add_and_remove(dataset):
    store = CaptionStore(dataset)
    log = BulkLog(dataset)
    log.apply(preview_trigger(store, IMAGES, "blkstyle"), "add trigger")
    assert store.read("a.png").text == "blkstyle, a red cube, thin lines" and store.read("d.png").text == "blkstyle"
    assert preview_trigger(store, IMAGES, "blkstyle") == []  # already everywhere
    log.apply(preview_trigger(store, IMAGES, "blkstyle", add=False), "remove trigger")
    assert store.read("a.png").text == "a red cube, thin lines" and store.read("d.png").text == ""


def test_removing_a_trigger_leaves_captions_without_it_and_their_status_alone(dataset):
    """An imported caption file ends with a newline; "remove trigger" stripped it from every caption and so
    listed, rewrote and un-approved captions that never had the word."""
    (dataset / "c.txt").write_text("a blue cone, flat colour\n")
    (dataset / "a.txt").write_text("shp, a red cube, thin lines\n")
    store = CaptionStore(dataset)
    store.approve("c.png", store.read("c.png").hash)
    changes = preview_trigger(store, IMAGES, "shp", add=False)
    assert [change.image for change in changes] == ["a.png"]  # the only caption with the word
    BulkLog(dataset).apply(changes, "remove trigger")
    assert store.read("a.png").text == "a red cube, thin lines"
    assert store.status("c.png") == "approved" and store.read("c.png").text == "a blue cone, flat colour\n"


def test_undo_puts_back_each_caption_status_not_edited(dataset):
    """Undo restores provenance: machine stays machine, approved approved, edited edited, none none —
    and the history still records the restore."""
    store = CaptionStore(dataset)
    store.save("b.png", "a red sphere, machine words", store.read("b.png").hash, source="model")
    store.approve("c.png", store.read("c.png").hash)
    before = {image: store.status(image) for image in IMAGES}
    assert before == {"a.png": "edited", "b.png": "machine", "c.png": "approved", "d.png": "none"}
    log = BulkLog(dataset)
    log.apply(preview_trigger(store, IMAGES, "blkstyle"), "add trigger")
    assert {image: store.status(image) for image in IMAGES} == dict.fromkeys(IMAGES, "edited")
    undone = log.undo()
    assert sorted(undone.applied) == IMAGES
    assert {image: store.status(image) for image in IMAGES} == before
    assert store.read("b.png").text == "a red sphere, machine words" and not (dataset / "d.txt").exists()
    grid = {image: status for image, (_, status) in store.snapshot(IMAGES).items()}
    assert grid == before  # what the caption grid shows
    for image in IMAGES:
        last = store.versions(image)[-1]
        assert last["source"] == "restore"  # the audit trail keeps the undo
    assert store.versions("d.png")[-2]["text"] == "blkstyle"  # the removed text stays in the history


def test_undo_of_an_action_logged_without_statuses_reads_them_from_the_history(dataset):
    import json

    store = CaptionStore(dataset)
    store.save("b.png", "machine words", store.read("b.png").hash, source="model")
    log = BulkLog(dataset)
    log.apply(preview_trigger(store, ["a.png", "b.png"], "blkstyle"), "add trigger")
    lines = log.path.read_text().splitlines()  # as older versions of the studio wrote it
    entry = json.loads(lines[-1])
    for change in entry["changes"]:
        del change["before_status"]
    log.path.write_text("\n".join([*lines[:-1], json.dumps(entry)]) + "\n")
    log.undo()
    assert store.status("a.png") == "edited" and store.status("b.png") == "machine"
