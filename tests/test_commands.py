"""The commands the studio shows the artist work as shown: this environment's Python, this workspace."""

import sys

from blk import commands
from blk.workspace import Workspace


def test_commands_shown_use_the_python_that_runs_the_studio(monkeypatch, tmp_path):
    """`.venv/bin/pip` is wrong when the environment lives elsewhere (BLK_VENV, the launcher's cache folder)."""
    elsewhere = tmp_path / "my env" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(elsewhere))
    assert commands.pip_install("rembg", "onnxruntime") == f"'{elsewhere}' -m pip install rembg onnxruntime"
    assert commands.blk_command(None, "models", "fetch", "sdxl") == f"'{elsewhere}' -m blk models fetch sdxl"
    monkeypatch.setattr(sys, "executable", str(commands.STUDIO / ".venv" / "bin" / "python"))
    assert commands.blk_command(None, "models", "list") == ".venv/bin/python -m blk models list"  # as the README


def test_blk_commands_name_a_workspace_that_is_not_the_default(monkeypatch, tmp_path):
    """`python -m blk` run from the studio's folder uses ./workspace: another workspace must be named, before
    the subcommand (where `blk.cli` reads it), quoted when its path has a space."""
    from blk.cli import build_parser

    monkeypatch.setattr(sys, "executable", "/opt/env/bin/python")
    other = Workspace(tmp_path / "my ws")
    shown = commands.blk_command(other, "models", "fetch", "flux-dev")
    assert shown == f"/opt/env/bin/python -m blk --workspace '{other.root}' models fetch flux-dev"
    assert build_parser().parse_args(["--workspace", str(other.root), "models", "fetch", "flux-dev"]).name == \
        "flux-dev"
    assert commands.blk_command(tmp_path / "my ws", "models", "list").endswith(f"--workspace '{other.root}' models list")
    # the default workspace (./workspace in the studio's folder), however it is spelled, is not named
    monkeypatch.setattr(commands, "DEFAULT_WORKSPACE", tmp_path / "my ws")
    assert commands.blk_command(other, "models", "fetch", "flux-dev") == \
        "/opt/env/bin/python -m blk models fetch flux-dev"
    assert "--workspace" not in commands.blk_command(tmp_path / "x" / ".." / "my ws", "models", "list")


def test_the_default_workspace_is_the_one_blk_cli_uses_in_the_studios_folder():
    from blk.cli import build_parser

    assert commands.DEFAULT_WORKSPACE == commands.STUDIO / build_parser().parse_args(["models", "list"]).workspace
