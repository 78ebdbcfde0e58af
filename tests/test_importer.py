"""New dataset from uploads: content-checked, renamed by content, captions kept, nothing overwritten."""

import io

import pytest
from PIL import Image

from blk.data.importer import import_files
from blk.errors import UserError


def upload(folder, name, data: bytes):
    path = folder / name
    path.write_bytes(data)
    return path


def png_bytes(colour=(10, 20, 30), size=(16, 12), fmt="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def test_import_creates_a_captioned_dataset_and_refuses_bad_files(workspace, tmp_path):
    good = png_bytes()
    files = [upload(tmp_path, "ink one.png", good), upload(tmp_path, "ink one.txt", "blkstyle, a cube".encode()),
             upload(tmp_path, "photo.jpg", png_bytes((40, 50, 60), fmt="PNG")),  # a PNG wearing a .jpg name
             upload(tmp_path, "broken.png", good[: len(good) // 2]),
             upload(tmp_path, "notes.jpg", b"just text"),
             upload(tmp_path, "latin1.png", png_bytes((1, 2, 3))), upload(tmp_path, "latin1.txt", "caf\xe9".encode("latin-1"))]
    result = import_files(workspace, "inks", files, create=True)
    folder = workspace.datasets / "inks"
    assert sorted(result.added) == ["ink one.png", "latin1.png", "photo.png"]
    assert (folder / "ink one.txt").read_text() == "blkstyle, a cube\n" and result.captions == 1
    assert {name for name, _ in result.failed} == {"broken.png", "notes.jpg", "latin1.txt"}
    assert all(reason.endswith(".") and "\n" not in reason for _, reason in result.failed)
    assert not (folder / "broken.png").exists() and not list(folder.glob(".blk-tmp-*"))
    assert "Added 3 images and 1 caption to inks. 3 files were refused." == result.sentence()

    (tmp_path / "other").mkdir()
    other = upload(tmp_path / "other", "ink one.png", png_bytes((90, 90, 90)))
    again = import_files(workspace, "inks", [other], create=False)  # adding never overwrites
    assert again.added == ["ink one-1.png"] and (folder / "ink one.png").read_bytes() == good
    # the same content again (re-added, renamed, or twice in one upload): not a second training image
    twice = upload(tmp_path / "other", "renamed.png", good)
    same = import_files(workspace, "inks", [files[0], twice, files[1]], create=False)
    assert same.added == [] and same.already == [("ink one.png", "ink one.png"), ("renamed.png", "ink one.png")]
    assert same.captions == 0 and (folder / "ink one.txt").read_text() == "blkstyle, a cube\n"  # caption kept
    assert same.sentence() == ("Added 0 images to inks. Already in the dataset with the same content, so not added "
                               "again: ink one.png, renamed.png (as ink one.png) (a second copy would train on that "
                               "image twice as often).")
    assert sorted(p.name for p in folder.glob("*.png")) == ["ink one-1.png", "ink one.png", "latin1.png", "photo.png"]
    with pytest.raises(UserError, match="already exists"):
        import_files(workspace, "inks", files, create=True)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 81, "new\nline"])
def test_unsafe_dataset_names_are_refused(workspace, tmp_path, name):
    with pytest.raises(UserError, match="not a usable dataset name"):
        import_files(workspace, name, [upload(tmp_path, "a.png", png_bytes())], create=True)
    assert not any(workspace.root.parent.glob("escape"))
