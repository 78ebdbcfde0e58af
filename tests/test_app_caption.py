"""The Caption tab through the running app: a batch from the UI, and the vLLM server stopped with the app."""

import re
import shutil
import time
import urllib.request

from PIL import Image

from blk.caption.job import resolve_vlm
from blk.data.captions import CaptionStore
from tests.support import netguard
from tests.support.running_app import RunningApp

TRANSFORMERS = "transformers, in this process (slow, no server)"


def server_processes(model_dir) -> list[int]:
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "vllm.entrypoints" in cmdline and str(model_dir) in cmdline:
                pids.append(int(proc.name))
    return pids


def test_caption_from_the_ui_and_server_stops_with_the_app(tmp_path, shared_workspace):
    from gradio_client import Client

    resolve_vlm("tiny-vlm", shared_workspace)
    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models")
    folder = workspace / "datasets" / "inks"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGBA", (40, 40), (30 * i, 0, 0, 200)).save(folder / f"ink {i}.png")
    (folder / "ink 0.txt").write_text("my own words")

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    model_dir = workspace / "models" / "tiny-vlm"
    try:
        client = Client(app.url, verbose=False)
        outcome = client.predict("inks", TRANSFORMERS, "tiny-vlm", "", "missing", False, 8, api_name="/caption_run")
        assert "Captioned 3" in outcome and "skipped 1" in outcome
        store = CaptionStore(folder)
        assert [store.status(f"ink {i}.png") for i in range(4)] == ["edited", "machine", "machine", "machine"]

        status = client.predict("tiny-vlm", api_name="/caption_server_start")
        url = re.search(r"http://127\.0\.0\.1:\d+", status).group(0)
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            assert response.status == 200
        assert server_processes(model_dir)
    finally:
        app.stop()
    deadline = time.time() + 30
    while server_processes(model_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert server_processes(model_dir) == []  # the app stopped its server on exit
    assert netguard.outside_loopback(str(tmp_path / "net.jsonl")) == []
