"""The launcher (studio.py) says in one sentence when an install failed for want of disk space."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_launcher():
    spec = importlib.util.spec_from_file_location("studio_launcher", ROOT / "studio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_nearly_full_disk_is_named_with_its_free_space(tmp_path):
    studio = load_launcher()
    sentence = studio.disk_space_sentence(tmp_path, 250 * 1024**2)
    assert "0.2 GB free" in sentence and str(tmp_path) in sentence
    assert "8 GB" in sentence and "run the same command again" in sentence


def test_enough_space_adds_nothing_to_pips_own_message(tmp_path):
    studio = load_launcher()
    assert studio.disk_space_sentence(tmp_path, studio.INSTALL_NEEDS_BYTES) == ""
    assert studio.disk_space_sentence(tmp_path, studio.INSTALL_NEEDS_BYTES - 1) != ""
