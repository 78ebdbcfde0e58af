"""Start the real app (app.py) in a child process on a free loopback port, under the network guard."""

import os
import subprocess
import sys
import time
from pathlib import Path

from blk.caption.server import free_port

ROOT = Path(__file__).resolve().parents[2]


class RunningApp:
    def __init__(self, workspace: Path, log: Path, *args: str):
        self.port = free_port()
        self.log = log
        self.output = log.with_suffix(".out")
        command = [sys.executable, str(ROOT / "tests/support/netguard.py"), str(log), str(ROOT / "app.py"),
                   "--workspace", str(workspace), "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=open(self.output, "w"), stderr=subprocess.STDOUT,
                                        env=dict(os.environ, PYTHONPATH=str(ROOT)))
        deadline = time.time() + 120
        while "Running on" not in self.output.read_text():
            if self.process.poll() is not None or time.time() > deadline:
                raise AssertionError("app did not start:\n" + self.output.read_text())
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
