"""Run many `python -m blk …` command lines in ONE child process (each child costs seconds of imports).

    python tests/support/cli_batch.py CASES.json RESULTS.json

CASES.json is a list of argument lists. For each, `blk.cli.main(argv)` runs exactly as `python -m
blk` would run it, with the process's real stdout and stderr (file descriptors 1 and 2) sent to
files, so that output from C libraries is caught as well. An exception escaping `main` is what a
user would see as a traceback: it is recorded as rc "crash" with the traceback as stderr.
RESULTS.json gets [{"argv", "rc", "stdout", "stderr"}, …].
"""

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline environment first, as in blk/__main__.py)
from blk.cli import main  # noqa: E402


def run_one(argv: list[str]) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 2
            except BaseException:  # noqa: BLE001  (this is the traceback a user would see)
                traceback.print_exc()
                rc = "crash"
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return {"argv": argv, "rc": rc, "stdout": out.read().decode("utf-8", "replace"),
                "stderr": err.read().decode("utf-8", "replace")}


if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    results = [run_one(argv) for argv in cases]
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
