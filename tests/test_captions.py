"""Caption store: atomic saves, conflicts refused, every version kept and restorable."""

import json
import os
import threading

import pytest
from PIL import Image

from blk.data.captions import CaptionStore, version_label
from blk.errors import CaptionConflict, UnsafePath


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 8)).save(folder / "b c.png")
    (folder / "a.txt").write_text("original words", encoding="utf-8")
    return folder


def test_save_writes_utf8_and_history(dataset):
    store = CaptionStore(dataset)
    before = store.read("a.png")
    assert before.text == "original words" and before.exists
    saved = store.save("a.png", "a cube in ink, naïve", before.hash, source="human")
    assert (dataset / "a.txt").read_bytes() == "a cube in ink, naïve".encode("utf-8")
    assert store.read("a.png").hash == saved.hash != before.hash
    versions = store.versions("a.png")
    assert [v["source"] for v in versions] == ["original", "human"]
    assert versions[0]["text"] == "original words"
    assert not [p for p in os.listdir(dataset) if p.startswith(".blk-tmp")]


def test_new_caption_for_uncaptioned_image(dataset):
    store = CaptionStore(dataset)
    empty = store.read("b c.png")
    assert not empty.exists and empty.text == ""
    store.save("b c.png", "two spheres", empty.hash, source="model")
    assert (dataset / "b c.txt").read_text() == "two spheres"
    assert [v["source"] for v in store.versions("b c.png")] == ["model"]


def test_conflict_is_refused_and_both_texts_are_kept(dataset):
    first, second = CaptionStore(dataset), CaptionStore(dataset)
    base = first.read("a.png").hash  # both editors opened the same version
    first.save("a.png", "edit from curator one", base)
    with pytest.raises(CaptionConflict) as caught:
        second.save("a.png", "edit from curator two", base)
    assert caught.value.current_text == "edit from curator one"
    assert caught.value.your_text == "edit from curator two"
    assert (dataset / "a.txt").read_text() == "edit from curator one"
    texts = [v["text"] for v in first.versions("a.png")]
    assert "edit from curator one" in texts and "edit from curator two" in texts
    assert [v for v in first.versions("a.png") if v.get("conflict")][0]["text"] == "edit from curator two"


def test_concurrent_saves_from_one_base_let_exactly_one_win(dataset):
    store = CaptionStore(dataset)
    base = store.read("a.png").hash
    results = []

    def edit(i):
        try:
            CaptionStore(dataset).save("a.png", f"edit {i}", base)
            results.append("ok")
        except CaptionConflict:
            results.append("conflict")

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results.count("ok") == 1 and results.count("conflict") == 5
    assert len([v for v in store.versions("a.png") if v["source"] == "human"]) == 6


def test_restore_an_old_version(dataset):
    store = CaptionStore(dataset)
    c = store.save("a.png", "second", store.read("a.png").hash)
    store.save("a.png", "third", c.hash)
    original = store.versions("a.png")[0]
    store.restore("a.png", original["id"], store.read("a.png").hash)
    assert store.read("a.png").text == "original words"
    assert store.versions("a.png")[-1]["source"] == "restore"


def test_non_utf8_caption_is_read_with_warning_and_saved_as_utf8(dataset):
    (dataset / "b c.txt").write_bytes("café, naïve".encode("cp1252"))
    store = CaptionStore(dataset)
    caption = store.read("b c.png")
    assert caption.text == "café, naïve"
    assert "not UTF-8" in caption.warning
    store.save("b c.png", caption.text, caption.hash)
    assert (dataset / "b c.txt").read_bytes().decode("utf-8") == "café, naïve"
    assert store.read("b c.png").warning is None


def test_torn_history_line_is_skipped(dataset):
    store = CaptionStore(dataset)
    store.save("a.png", "kept", store.read("a.png").hash)
    with open(store.history_path, "a") as handle:
        handle.write('{"id": "x", "image": "a.p')  # a crash mid-append
    assert [v["text"] for v in store.versions("a.png")][-1] == "kept"
    store.save("a.png", "after crash", store.read("a.png").hash)
    assert store.versions("a.png")[-1]["text"] == "after crash"
    json.loads(store.history_path.read_text().splitlines()[-1])


@pytest.mark.parametrize("bad", ["../escape.png", "/etc/passwd", "sub/../../x.png"])
def test_paths_outside_the_dataset_are_refused(dataset, bad):
    with pytest.raises(UnsafePath):
        CaptionStore(dataset).read(bad)


def test_status_follows_source_and_approval(dataset):
    store = CaptionStore(dataset)
    assert store.status("b c.png") == "none"
    assert store.status("a.png") == "edited"  # found on disk, written by a person before the studio
    machine = store.save("b c.png", "two spheres", "", source="model")
    assert store.status("b c.png") == "machine"
    store.approve("b c.png", machine.hash)
    assert store.status("b c.png") == "approved"
    assert store.read("b c.png").text == "two spheres"
    edited = store.save("b c.png", "two spheres, ink", machine.hash, source="human")
    assert store.status("b c.png") == "edited"
    (dataset / "b c.txt").write_text("changed in a text editor")
    assert store.status("b c.png") == "edited"
    with pytest.raises(CaptionConflict):
        store.approve("b c.png", edited.hash)  # the file changed since the curator looked


def test_restore_puts_back_the_version_status(dataset):
    """History › Restore brings back provenance too: a machine version stays machine, an approved one approved."""
    store = CaptionStore(dataset)
    machine = store.save("b c.png", "two spheres", "", source="model")
    approved = store.approve("b c.png", machine.hash)
    store.save("b c.png", "two spheres, ink", approved.hash, source="human")
    model_version, approval, edit = store.versions("b c.png")
    store.restore("b c.png", model_version["id"], store.read("b c.png").hash)
    assert store.read("b c.png").text == "two spheres" and store.status("b c.png") == "machine"
    restored = store.versions("b c.png")[-1]
    assert restored["source"] == "restore" and restored["restores"] == model_version["id"]  # still audited
    store.restore("b c.png", approval["id"], store.read("b c.png").hash)
    assert store.status("b c.png") == "approved"
    store.restore("b c.png", edit["id"], store.read("b c.png").hash)
    assert store.status("b c.png") == "edited" and store.read("b c.png").text == "two spheres, ink"


def test_history_labels_say_machine_edited_approved(dataset):
    store = CaptionStore(dataset)
    machine = store.save("b c.png", "two spheres", "", source="model")
    edited = store.save("b c.png", "two spheres, ink", machine.hash, source="human")
    store.approve("b c.png", edited.hash)
    store.save("a.png", "bulk words", store.read("a.png").hash, source="bulk")
    store.restore("b c.png", store.versions("b c.png")[0]["id"], store.read("b c.png").hash)
    assert [version_label(v) for v in store.versions("b c.png")] == [
        "machine", "edited", "approved", "machine (restored)"]
    assert [version_label(v) for v in store.versions("a.png")] == ["edited (found on disk)", "edited (bulk)"]
    with pytest.raises(CaptionConflict):
        store.save("a.png", "typed meanwhile", "stale", source="human")
    assert version_label(store.versions("a.png")[-1]) == "edited (refused)"
    old = {"source": "human", "text": "x"}  # history lines written before statuses were recorded
    assert version_label(old) == "edited" and version_label({"source": "model"}) == "machine"
