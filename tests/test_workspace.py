"""Workspace folders, settings and path confinement; atomic writes."""

import os

import pytest

from blk import atomic
from blk.errors import UnsafePath, UserError
from blk.workspace import Workspace


def test_layout_and_settings_round_trip(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    for sub in ("datasets", "runs", "models", "outputs/sketch", "outputs/stencil", "outputs/upscale"):
        assert (workspace.root / sub).is_dir()
    workspace.settings.allowed_folders.append(str(tmp_path / "scans"))
    workspace.save_settings()
    assert Workspace(tmp_path / "ws").settings.allowed_folders == [str(tmp_path / "scans")]


def test_confinement(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    (tmp_path / "scans").mkdir()
    (tmp_path / "private").mkdir()
    (workspace.datasets / "escape").symlink_to(tmp_path / "private")
    assert workspace.confine("datasets/x") == workspace.root / "datasets" / "x"
    for bad in ("../private", str(tmp_path / "private"), "datasets/escape", "/etc/passwd"):
        with pytest.raises(UnsafePath):
            workspace.confine(bad)
    workspace.settings.allowed_folders.append(str(tmp_path / "scans"))
    assert workspace.confine(str(tmp_path / "scans" / "a.png")) == tmp_path / "scans" / "a.png"


def test_malformed_settings_is_one_sentence(tmp_path):
    """Broken YAML gives its line and problem on one line (the parser's own text ran over four); settings of
    the wrong shape (`models: [1, 2]` raised AttributeError later) are refused when read."""
    (tmp_path / "ws").mkdir()
    settings = tmp_path / "ws" / "settings.yaml"
    settings.write_text("allowed_folders: [unclosed\n")
    with pytest.raises(UserError, match=r"is not valid YAML at line 2 \(") as broken:
        Workspace(tmp_path / "ws")
    assert "\n" not in str(broken.value)
    for text, said in (("models: [1, 2]\n", "models must map each name to a path"),
                       ("allowed_folders: /scans\n", "allowed_folders must be a list of folders"),
                       ("device: 3\n", "device must be auto, cpu")):
        settings.write_text(text)
        with pytest.raises(UserError, match="not valid settings YAML") as refused:
            Workspace(tmp_path / "ws")
        assert said in str(refused.value), text
    settings.write_text("models:\nallowed_folders:\n")  # every entry commented out: none, not an error
    assert Workspace(tmp_path / "ws").settings.models == {}


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "caption.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target, "w", encoding="utf-8") as handle:
            handle.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["caption.txt"]
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["caption.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask):
    from PIL import Image

    from blk.generate.metadata import save_png

    previous = os.umask(umask)
    try:
        atomic.write_text(tmp_path / "caption.txt", "a tower")
        save_png(tmp_path / "sketch.png", Image.new("RGB", (4, 4)), {"seed": 1})
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask  # not mkstemp's private 0600
    for name in ("caption.txt", "sketch.png", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
