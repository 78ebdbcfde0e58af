"""Start-up time: command → "Running on", against the 5 s target (a benchmark, not a test).

    python3 bench/startup.py [--runs 3]

Prints, side by side, the median of several cold starts of:
  studio.py   the README command (environment check + app)
  app.py      the app alone, in the prepared environment
  ui+gradio   `import ui, gradio`: gradio as the app imports it (stub regeneration skipped)
  gradio      plain `import gradio`, for comparison
and each one's ratio to the target. Needs the environment prepared once (run studio.py or the tests first).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from studio import venv_dir, venv_python  # noqa: E402

TARGET_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_until_running(command: list[str]) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "Running on" in line:
                return time.perf_counter() - start
        raise RuntimeError("the app exited before it was running")
    finally:
        process.terminate()
        process.wait(timeout=30)


def time_command(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    python = str(venv_python(venv_dir()))
    workspace = tempfile.mkdtemp(prefix="blk-bench-")
    cases = {
        "studio.py": lambda: time_until_running([sys.executable, "studio.py", "--workspace", workspace, "--port", str(free_port())]),
        "app.py": lambda: time_until_running([python, "app.py", "--workspace", workspace, "--port", str(free_port())]),
        "ui+gradio": lambda: time_command([python, "-c", "import ui, gradio"]),
        "gradio": lambda: time_command([python, "-c", "import gradio"]),
    }
    time_until_running([python, "app.py", "--workspace", workspace, "--port", str(free_port())])  # warm the disk cache
    print(f"{'case':<10} {'median s':>9} {'min s':>7} {'ratio to 5 s target':>20}")
    for name, run in cases.items():
        times = [run() for _ in range(args.runs)]
        median = statistics.median(times)
        print(f"{name:<10} {median:>9.2f} {min(times):>7.2f} {median / TARGET_S:>20.2f}")


if __name__ == "__main__":
    main()
