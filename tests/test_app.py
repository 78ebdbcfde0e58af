"""The app starts for real on a loopback port, works through gradio_client, and never leaves loopback."""

import subprocess
import sys

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.support import netguard
from tests.support.running_app import RunningApp


@pytest.fixture
def guarded_workspace(tmp_path, shared_workspace):
    import shutil

    workspace = tmp_path / "workspace"
    (workspace / "models").mkdir(parents=True)
    for name in ("tiny-flux", "tiny-sdxl"):  # reuse the session's build; the app would build them too
        shutil.copytree(shared_workspace.models / name, workspace / "models" / name)
    dataset = workspace / "datasets" / "clouds"
    dataset.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (60 * i, 90, 200)).save(dataset / f"cloud {i}.png")
    (dataset / "cloud 0.txt").write_text("blkstyle, a stylised cloud")
    (dataset / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    return workspace


def test_guard_records_outside_addresses(tmp_path):
    """The guard itself must catch a lookup, or the privacy test below could never fail."""
    log = tmp_path / "net.jsonl"
    code = ("import sys, socket; sys.path.insert(0, 'tests/support'); import netguard; "
            f"netguard.install({str(log)!r}); "
            "exec('try:\\n socket.getaddrinfo(\"huggingface.co\", 443)\\nexcept OSError:\\n pass'); "
            "s = socket.socket(); s.settimeout(0.2)\n"
            "try:\n s.connect(('192.0.2.1', 9))\nexcept OSError:\n pass")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    hosts = {e["host"] for e in netguard.outside_loopback(str(log))}
    assert hosts == {"huggingface.co", "192.0.2.1"}


def test_app_works_offline_and_never_leaves_loopback(guarded_workspace, tmp_path):
    from gradio_client import Client

    app_log, client_log = tmp_path / "app-net.jsonl", tmp_path / "client-net.jsonl"
    netguard.install(str(client_log))  # this test process too (gradio_client)
    app = RunningApp(guarded_workspace, app_log)
    try:
        page = httpx.get(app.url, timeout=30).text
        assert "BLK Studio" in page
        assert "fonts.googleapis" not in page and "cdn.jsdelivr" not in page
        client = Client(app.url, verbose=False)
        rows = client.predict(api_name="/models_list")
        names = [row[0] for row in rows["data"]]
        assert {"flux-dev", "flux-schnell", "sdxl", "tiny-flux", "tiny-sdxl"} <= set(names)
        status = {row[0]: row[2] for row in rows["data"]}
        assert status["tiny-flux"] == "found" and status["flux-dev"] == "missing"

        assert "cpu — slow" in client.predict(api_name="/devices")

        report, gallery = client.predict("clouds", "blkstyle", api_name="/dataset_check")
        assert "images: 4  usable: 3  captioned: 1" in report
        assert "broken.png" in report and "Trigger word 'blkstyle': in 1 of 1 captions" in report
        assert len(gallery) == 3
        missing, empty = client.predict("", "", api_name="/dataset_check")
        assert "Choose a dataset" in missing and empty == []
        absent, _ = client.predict("no-such-set", "", api_name="/dataset_check")
        assert "no dataset named no-such-set" in absent
        escape, _ = client.predict("../../..", "", api_name="/dataset_check")
        assert "outside the workspace" in escape
    finally:
        app.stop()
    outside = netguard.outside_loopback(str(app_log)) + netguard.outside_loopback(str(client_log))
    assert outside == [], f"connections outside loopback: {outside}"


def test_listening_beyond_loopback_needs_auth(tmp_path):
    result = subprocess.run([sys.executable, "app.py", "--workspace", str(tmp_path / "w"), "--listen", "0.0.0.0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "add --auth" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = subprocess.run([sys.executable, "app.py", "--workspace", str(tmp_path / "w"), "--listen", "0.0.0.0",
                          "--auth", "nopassword"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "USER:PASSWORD" in bad.stderr


def test_auth_guards_every_route(guarded_workspace, tmp_path):
    from gradio_client import Client

    credentials = tmp_path / "users.txt"
    credentials.write_text("# studio users\ncurator:s3cret-words\n")
    app = RunningApp(guarded_workspace, tmp_path / "net.jsonl", "--listen", "0.0.0.0", "--auth", str(credentials))
    try:
        image = guarded_workspace / "datasets" / "clouds" / "cloud 1.png"
        for route in ("config", "gradio_api/info", f"gradio_api/file={image}"):
            response = httpx.get(app.url + route, timeout=30)
            assert response.status_code in (401, 403), (route, response.status_code)
        for route in ("gradio_api/call/models_list", "gradio_api/queue/join", "gradio_api/upload"):
            response = httpx.post(app.url + route, json={"data": []}, timeout=30)
            assert response.status_code in (401, 403), (route, response.status_code)
        assert "models_list" not in httpx.get(app.url + "config", timeout=30).text
        rows = Client(app.url, auth=("curator", "s3cret-words"), verbose=False).predict(api_name="/models_list")
        assert any(row[0] == "tiny-flux" for row in rows["data"])
        with pytest.raises(Exception):
            Client(app.url, auth=("curator", "wrong"), verbose=False)
    finally:
        app.stop()
