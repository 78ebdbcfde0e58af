#!/usr/bin/env python3
"""BLK Studio launcher: prepares the Python environment when needed, then starts the app or the tests.

    python3 studio.py [app options]      start the app (see `python3 studio.py --help`)
    python3 studio.py test [pytest args] run the whole test suite

The environment is a venv at `.venv/` (or the folder named by BLK_VENV). It is
created on first use and updated whenever requirements*.txt change: the hash of
those files is stamped into the venv after a successful install, so an
interrupted install is simply redone next time. Uses only the standard library.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
APP_REQUIREMENTS = ROOT / "requirements.txt"
TEST_REQUIREMENTS = ROOT / "requirements-dev.txt"  # includes requirements.txt


def venv_dir() -> Path:
    return Path(os.environ.get("BLK_VENV") or ROOT / ".venv").expanduser().resolve()


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirements_hash(requirements: Path) -> str:
    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    for path in (APP_REQUIREMENTS, requirements):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_environment(requirements: Path) -> Path:
    """Create or update the venv so that it satisfies `requirements`; return its python."""
    if sys.version_info < (3, 10):
        sys.exit("BLK Studio needs Python 3.10 or newer (3.11 recommended).")
    folder = venv_dir()
    python = venv_python(folder)
    stamp = folder / f".blk-installed-{requirements.stem}"
    wanted = requirements_hash(requirements)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists():
        print(f"Creating the environment in {folder} …", flush=True)
        venv.EnvBuilder(with_pip=True, clear=folder.exists()).create(folder)
    print(f"Installing {requirements.name} (first time: several minutes, a few GB) …", flush=True)
    result = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                             "-r", str(requirements)], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"Installing {requirements.name} failed (see pip's message above); nothing was started.")
    stamp.write_text(wanted + "\n")
    if requirements == TEST_REQUIREMENTS:  # the test set includes the app's: mark that as done too
        (folder / f".blk-installed-{APP_REQUIREMENTS.stem}").write_text(requirements_hash(APP_REQUIREMENTS) + "\n")
    return python


def main(argv: list[str]) -> int:
    if argv[:1] == ["test"]:
        python = ensure_environment(TEST_REQUIREMENTS)
        command = [str(python), "-m", "pytest", *(argv[1:] or ["tests"])]
    else:
        python = ensure_environment(APP_REQUIREMENTS)
        command = [str(python), str(ROOT / "app.py"), *argv]
    try:
        return subprocess.call(command, cwd=ROOT)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
