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


def test_stopping_the_readme_command_stops_the_app(tmp_path):
    """`kill` (SIGTERM) of `python3 studio.py` used to stop the launcher only: the app went on holding its
    port (and a captioning server), orphaned. The launcher now becomes the app."""
    import signal
    import socket
    import time

    from blk.caption.server import free_port
    from tests.test_journey import launch_with_readme_command, stamp_app_environment

    stamp_app_environment()
    port = free_port()
    process, output = launch_with_readme_command(tmp_path / "workspace", tmp_path / "guard", tmp_path / "net.jsonl",
                                                 port)
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        deadline = time.time() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break  # nothing listens any more
            assert time.time() < deadline, "the app still listens after its launcher was stopped"
            time.sleep(0.5)
    finally:
        process.kill()
