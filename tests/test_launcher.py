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


def test_the_launcher_knows_every_command_of_the_engine():
    """`python3 studio.py COMMAND …` goes to `python -m blk` for exactly the engine's commands."""
    from blk.cli import build_parser

    studio = load_launcher()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(studio.CLI_COMMANDS) == set(commands)
    assert studio.cli_arguments(["--port", "7000"]) is None and studio.cli_arguments([]) is None
    assert studio.cli_arguments(["upscale", "a.png"]) == ["--workspace", str(ROOT / "workspace"), "upscale", "a.png"]
    assert studio.cli_arguments(["--workspace=/w", "models", "list"]) == ["--workspace", "/w", "models", "list"]


def test_the_apps_help_names_the_launchers_other_words(capsys):
    """`python3 studio.py --help` listed the app's options only: `test`, `setup-vllm` and every job command were
    found in the README alone."""
    import pytest

    import app
    from blk.cli import build_parser

    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    said = " ".join(capsys.readouterr().out.split())
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert "studio.py test" in said and "studio.py setup-vllm" in said and "COMMAND --help" in said
    assert all(f" {name}," in said or f" {name};" in said or f"({name}," in said for name in commands), said


def test_a_relative_workspace_means_the_users_folder_for_the_app_and_for_a_command(tmp_path, monkeypatch):
    """The app ran from the studio's folder, so `--workspace ws` meant ROOT/ws for it but the user's ws for a
    command: both now get the path made absolute where the user is, in either spelling."""
    studio = load_launcher()
    monkeypatch.chdir(tmp_path)
    assert studio.with_absolute_workspace(["--workspace", "ws", "--port", "7000"]) == \
        ["--workspace", str(tmp_path / "ws"), "--port", "7000"]
    assert studio.with_absolute_workspace(["--workspace=ws"]) == [f"--workspace={tmp_path / 'ws'}"]
    assert studio.cli_arguments(studio.with_absolute_workspace(["--workspace", "ws", "dataset", "check", "d"])) == \
        ["--workspace", str(tmp_path / "ws"), "dataset", "check", "d"]


def test_a_job_runs_from_any_folder_with_the_paths_the_user_typed(tmp_path):
    """From a folder outside the studio, `python3 studio.py --workspace ws dataset check drawings --json`
    reads `drawings` and `ws` in that folder (it used to need the studio's folder for `python -m blk`)."""
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    from tests.test_journey import stamp_app_environment

    stamp_app_environment()
    (tmp_path / "drawings").mkdir()
    Image.new("RGB", (64, 48), "white").save(tmp_path / "drawings" / "a.png")
    (tmp_path / "drawings" / "a.txt").write_text("blkstyle, a white page")
    Image.new("RGB", (64, 48), "black").save(tmp_path / "drawings" / "b.png")  # no caption
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"BLK_VENV": sys.prefix}
    if sys.version_info >= (3, 11):  # PYTHONSAFEPATH: another checkout's package here must not stand in for ours
        (tmp_path / "blk").mkdir()
        (tmp_path / "blk" / "__init__.py").write_text("raise SystemExit('the wrong blk ran')\n")
    done = subprocess.run([sys.executable, str(ROOT / "studio.py"), "--workspace", "ws", "dataset", "check",
                           "drawings", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert report["dataset"] == str(tmp_path / "drawings") and report["uncaptioned"] == ["b.png"], report
    assert (tmp_path / "ws").is_dir()
    refused = subprocess.run([sys.executable, str(ROOT / "studio.py"), "dataset", "check", "drawings", "--bogus"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.endswith(
        "error: unrecognized arguments: --bogus (`python3 studio.py dataset check --help` lists the options)\n")


def test_a_python_without_venv_support_is_one_sentence_and_leaves_no_half_environment(tmp_path, monkeypatch):
    """As Debian's and Ubuntu's Python without python3-venv (no ensurepip): said before anything is made. Should
    the venv module still fail at pip — Debian's prints its advice and exits once the folder is made, another
    raises CalledProcessError — the half-made folder goes too (a venv without pip was taken as made)."""
    import subprocess
    import sys
    import venv

    import pytest

    class DebianWithoutPip(venv.EnvBuilder):
        def _setup_pip(self, context):  # Debian's venv when `python -m ensurepip` fails and ensurepip is missing
            print("The virtual environment was not created successfully because ensurepip is not available.")
            sys.exit(1)

    class PipFails(venv.EnvBuilder):
        def _setup_pip(self, context):
            subprocess.check_output([context.env_exec_cmd, "-c", "import sys; sys.exit(1)"], stderr=subprocess.STDOUT)

    studio = load_launcher()
    folder = tmp_path / "env"
    for builder in (DebianWithoutPip, PipFails):
        with pytest.raises(SystemExit) as stopped:
            studio.create_venv(folder, builder)
        assert stopped.value.code == studio.NO_VENV_SUPPORT and not folder.exists()
    assert "sudo apt install python3-venv" in studio.NO_VENV_SUPPORT
    monkeypatch.setitem(sys.modules, "ensurepip", None)  # this Python without it: nothing is made at all
    with pytest.raises(SystemExit) as stopped:
        studio.create_venv(folder)
    assert stopped.value.code == studio.NO_VENV_SUPPORT and not folder.exists()
    monkeypatch.undo()
    venv.EnvBuilder(with_pip=False).create(folder)  # one an older launcher left: a python without pip
    assert not studio.has_pip(studio.venv_python(folder)) and studio.has_pip(Path(sys.executable))
