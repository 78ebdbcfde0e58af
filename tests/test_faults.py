"""Fault injection on the real app: kill -9 mid-caption-batch, mid-training and mid-upscale, then restart;
two browser sessions editing one caption; a full disk during a caption save and an upscale.

Everything runs for real: app.py in a child process (`RunningApp`), driven through its API by
gradio_client (or by headless Chromium), killed with SIGKILL as a crash or a power cut would — no
Python code of the app runs after the signal. After each fault the whole workspace is scanned for
temporaries (`.blk-tmp-*`) and for images that do not decode to the end.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from blk.atomic import TEMP_PREFIX
from blk.caption.job import resolve_vlm
from blk.data.captions import CaptionStore
from blk.train.process import is_running, run_info
from blk.train.runner import EventLog
from tests.conftest import run_blk
from tests.support import netguard
from tests.support.running_app import RunningApp

TRANSFORMERS = "transformers, in this process (slow, no server)"


# -- helpers ------------------------------------------------------------------------------------

def new_workspace(tmp_path: Path, shared_workspace, vlm: bool = False) -> Path:
    """A fresh workspace with the session's tiny models copied in (nothing is built twice)."""
    if vlm:
        resolve_vlm("tiny-vlm", shared_workspace)
    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models")
    return workspace


def kill_app(app: RunningApp) -> None:
    """SIGKILL the app process itself (netguard runs app.py in the same process via runpy)."""
    os.kill(app.process.pid, signal.SIGKILL)
    app.process.wait(timeout=30)
    assert app.process.returncode == -signal.SIGKILL


def wait_for(predicate, timeout: float = 120, every: float = 0.1, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"{TEMP_PREFIX}*"))


def undecodable_images(root: Path) -> list[str]:
    """Every PNG/TIFF under outputs/ and datasets/ (caches included) must decode to its last pixel."""
    bad = []
    for top in ("outputs", "datasets"):
        for path in sorted((root / top).rglob("*")):
            if path.name.startswith(TEMP_PREFIX) or not path.is_file():
                continue
            suffix = path.suffix.lower()
            try:
                if suffix == ".png":
                    with Image.open(path) as image:
                        image.load()
                elif suffix in (".tif", ".tiff"):
                    pixels = tifffile.imread(path)
                    assert pixels.size > 0
            except Exception as exc:  # noqa: BLE001  (any failure to decode is the finding)
                bad.append(f"{path.relative_to(root)}: {exc}")
    return bad


def image_count(root: Path) -> int:
    return sum(1 for top in ("outputs", "datasets") for p in (root / top).rglob("*")
               if p.suffix.lower() in (".png", ".tif", ".tiff") and not p.name.startswith(TEMP_PREFIX))


def client_for(app: RunningApp):
    from gradio_client import Client

    return Client(app.url, verbose=False)


# -- 1a. the app killed in the middle of a caption batch ----------------------------------------

def test_app_killed_mid_caption_batch_keeps_finished_captions_and_runs_only_the_rest(tmp_path, shared_workspace):
    workspace = new_workspace(tmp_path, shared_workspace, vlm=True)
    folder = workspace / "datasets" / "inks"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    names = [f"ink {i:02d}.png" for i in range(12)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / name)
    txt = lambda name: folder / Path(name).with_suffix(".txt").name  # noqa: E731

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        job = client_for(app).submit("inks", TRANSFORMERS, "tiny-vlm", "", "missing", False, 1,
                                     api_name="/caption_run")
        wait_for(lambda: any(txt(n).exists() for n in names), 180, 0.02, "a first caption")
        kill_app(app)
        with contextlib.suppress(Exception):
            job.cancel()
    finally:
        if app.process.poll() is None:
            app.stop()
    written = [n for n in names if txt(n).exists()]
    assert 1 <= len(written) < len(names), f"the batch was not mid-way when killed ({len(written)} captions)"
    store = CaptionStore(folder)
    before = {}
    for name in written:
        data = txt(name).read_bytes()
        text = data.decode("utf-8")  # strict: a half-written file would fail here or below
        assert text.strip(), name
        assert store.versions(name)[-1]["text"] == text and store.status(name) == "machine", name
        before[name] = data
    assert temporaries(workspace) == [] and undecodable_images(workspace) == []

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        outcome = client_for(app).predict("inks", TRANSFORMERS, "tiny-vlm", "", "missing", False, 1,
                                          api_name="/caption_run")
    finally:
        app.stop()
    missing = len(names) - len(written)
    assert f"Captioned {missing}**, skipped {len(written)}, failed 0" in outcome, outcome
    assert all(txt(n).read_bytes() == before[n] for n in written)  # the finished ones were not redone
    for name in names:  # every caption on disk is the newest version its history has
        assert store.status(name) == "machine" and store.versions(name)[-1]["text"] == txt(name).read_text(), name
    assert temporaries(workspace) == [] and undecodable_images(workspace) == []
    assert netguard.outside_loopback(str(tmp_path / "net.jsonl")) == []
    print(f"\n[caption kill] killed after {len(written)}/12 captions; resumed: {missing} captioned, "
          f"{len(written)} skipped; 0 temporaries, {image_count(workspace)} images decode")


# -- 1b. the app killed while a run trains; then the run itself killed -----------------------------

def test_training_survives_the_app_and_resumes_after_its_own_kill(tmp_path, shared_workspace):
    from safetensors.torch import load_file

    workspace = new_workspace(tmp_path, shared_workspace)
    folder = workspace / "datasets" / "inks"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"ink{i}.png")
        (folder / f"ink{i}.txt").write_text(f"an ink study {i}")
    # preset, dataset, model, resolutions, rank, alpha, optimizer, lr, steps, schedule, prompts,
    # sample every, checkpoint every, keep, validation images, validation every
    form = ("conceptor-flux-dev", "inks", "tiny-flux", "64", 4, 4, "adamw", 1e-3, 400, "constant", "", 0, 2, 3, 0, 0)

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        _, note = client_for(app).predict(*form, api_name="/train_start")
        name = re.search(r"Started (\S+)\.", note).group(1)
        run_dir = workspace / "runs" / name
        wait_for(lambda: run_info(run_dir).step >= 3, 180, 0.2, "step 3")
        kill_app(app)
    finally:
        if app.process.poll() is None:
            app.stop()
    at_kill = run_info(run_dir).step
    assert is_running(run_dir), "the run died with the app"
    wait_for(lambda: run_info(run_dir).step >= at_kill + 2, 60, 0.2, "steps after the app died")

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        _, _, status, _, checkpoint_list = client_for(app).predict(name, False, api_name="/train_watch")
        shown = int(re.search(r"\*\*running\*\* — step (\d+) of 400", status).group(1))
        assert shown >= at_kill + 2, status  # the restarted app re-attached to the living run
        assert re.search(r"- step \d+: `", checkpoint_list), checkpoint_list  # its checkpoints are listed

        # now the run's own process, killed as a crash would
        wait_for(lambda: len(list((run_dir / "checkpoints").glob("step-*.safetensors"))) >= 2, 120, 0.2, "checkpoints")
        pid = json.loads((run_dir / "process.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not is_running(run_dir), 30, 0.1, "the run to end")
        killed = run_info(run_dir)
        _, _, status, _, _ = client_for(app).predict(name, False, api_name="/train_watch")
        assert killed.status == "killed" and status.startswith("**killed**"), status
    finally:
        app.stop()
    kept = sorted((run_dir / "checkpoints").glob("step-*.safetensors"))
    assert kept, "no checkpoint survived the kill"
    kept_bytes = {p.name: p.read_bytes() for p in kept}
    for path in kept:
        assert load_file(str(path))  # whole, loadable
    last = int(kept[-1].stem.split("-")[1])
    assert last <= killed.step
    leftover = temporaries(workspace)  # a kill mid-checkpoint may leave a staging folder; resume removes it

    resumed = run_blk("--workspace", str(workspace), "train", "--resume", str(run_dir), "--steps",
                      str(killed.step + 3), env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    final = run_info(run_dir)
    assert final.status == "finished" and final.step == killed.step + 3
    events = EventLog(run_dir / "events.jsonl").read()
    statuses = [e["status"] for e in events if e["kind"] == "status"]
    assert statuses[0] == "started" and statuses[-2:] == ["resumed", "finished"]
    resumed_at = max(i for i, e in enumerate(events) if e["kind"] == "status" and e["status"] == "resumed")
    first_loss = next(e["step"] for e in events[resumed_at:] if e["kind"] == "loss")
    # continues right after the newest saved state: the newest checkpoint file's, or (a kill between a state and
    # its file) the next one's, whose file the resume then writes: never a step before the newest file
    assert first_loss - 1 in (last, last + 2), (first_loss, last)
    after = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.safetensors"))
    assert after[-1] == f"step-{final.step:06d}.safetensors"
    # keep 3: the newest three of the old and the new checkpoints survive, the old ones untouched
    written = {f"step-{s:06d}.safetensors" for s in range(last + 1, final.step + 1) if s % 2 == 0 or s == final.step}
    assert after == sorted({p.name for p in kept} | written)[-3:], after
    for name in set(after) & set(kept_bytes):
        assert (run_dir / "checkpoints" / name).read_bytes() == kept_bytes[name]
    assert temporaries(workspace) == [] and undecodable_images(workspace) == []
    print(f"\n[train kill] app killed at step {at_kill}, run went on (app showed step {shown}); run killed at "
          f"step {killed.step}, newest checkpoint {last}; resumed from {last + 1} to {final.step}; "
          f"{len(leftover)} temporaries after the kill, 0 after resume")


# -- 1c. the app killed mid-upscale --------------------------------------------------------------

def upscale_args(image: Path, upscaler: Path, esrgan_label: str) -> tuple:
    from gradio_client import handle_file

    # image, path, scale, size, upscaler, model, lora, enlarge first, tile, overlap, steps, seed, prompt,
    # denoise A, B, use C, denoise C, final pass, format, keep 16-bit, dpi
    return (handle_file(str(image)), esrgan_label, 4, "", str(upscaler), "tiny-flux", None, True, 32, 8, None, 0,
            "", 0.3, 0.2, False, 0.15, True, "TIFF", False, None)


def journals(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TEMP_PREFIX}*.journal.json")) if folder.exists() else []


def finished_rows(folder: Path) -> dict | None:
    for path in journals(folder):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
            if state.get("tiles_done", 0) > 0:
                return state
    return None


def test_app_killed_mid_upscale_resumes_to_the_uninterrupted_pixels(tmp_path, shared_workspace):
    from blk.upscale.esrgan import EsrganJob, run
    from tests.test_upscale_esrgan import rrdb_file
    from ui.tabs.upscale import ESRGAN

    workspace = new_workspace(tmp_path, shared_workspace)
    upscaler = rrdb_file((workspace / "models" / "upscalers").mkdir(parents=True) or
                         workspace / "models" / "upscalers" / "tiny-x4.pth")
    image = tmp_path / "art.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (128, 160, 3), dtype=np.uint8)).save(image)
    out_root = workspace / "outputs" / "upscale"

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        client_for(app).submit(*upscale_args(image, upscaler, ESRGAN), api_name="/upscale")
        state = wait_for(lambda: finished_rows(out_root), 180, 0.02, "a finished row in the journal")
        kill_app(app)
    finally:
        if app.process.poll() is None:
            app.stop()
    state = json.loads(journals(out_root)[0].read_text())  # the last one written before the kill
    assert 0 < state["tiles_done"] < 35, state
    results = [p for p in out_root.rglob("*") if p.is_file() and not p.name.startswith(TEMP_PREFIX)]
    assert results == []  # no result, not even a partial one
    left = temporaries(workspace)
    assert left and all(p.parent.parent == out_root for p in left)  # the job's own files, beside its output
    assert undecodable_images(workspace) == []

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    tokens = set()
    try:
        job = client_for(app).submit(*upscale_args(image, upscaler, ESRGAN), api_name="/upscale")
        while not job.done():  # the resumed job keeps the killed job's files (same token), never starts over
            for path in journals(out_root):
                with contextlib.suppress(OSError, ValueError):
                    tokens.add(json.loads(path.read_text())["token"])
            time.sleep(0.02)
        _, result_file, status = job.result()
    finally:
        app.stop()
    assert "640×512" in status and result_file, status
    assert tokens <= {state["token"]}, tokens
    result = Path(re.search(r"Saved: `([^`]+)`", status).group(1))
    reference = run(EsrganJob(image, tmp_path / "reference.tif", upscaler, scale=None, size=(640, 512), tile=32,
                              overlap=8))
    assert np.array_equal(tifffile.imread(result), tifffile.imread(reference.path))
    assert temporaries(workspace) == [] and undecodable_images(workspace) == []
    assert netguard.outside_loopback(str(tmp_path / "net.jsonl")) == []
    print(f"\n[upscale kill] killed after {state['tiles_done']}/35 tiles ({len(left)} job files left); the restarted "
          f"app resumed with the same journal token; result equals an uninterrupted run; 0 temporaries after")


# -- 2. two browser sessions edit the same caption -------------------------------------------------

def test_two_browser_sessions_editing_one_caption(tmp_path, shared_workspace):
    from playwright.sync_api import expect, sync_playwright

    from tests.support.browser import ARGS, CHROMIUM, edit_grid_cell, screenshot
    from tests.test_browser_caption import open_grid

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (python3 studio.py test installs it where it can)")
    workspace = new_workspace(tmp_path, shared_workspace)
    folder = workspace / "datasets" / "inks"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (48, 32), (60 * i, 40, 90)).save(folder / f"ink {i}.png")
    CaptionStore(folder).save("ink 1.png", "model words", "", source="model")

    def edit(page, old: str, new: str):
        grid = page.locator("#blk-caption-grid")
        cell = grid.get_by_test_id("cell-1-1")  # ink 1.png's caption
        expect(cell).to_contain_text(old)
        edit_grid_cell(grid, cell, new)
        page.get_by_role("button", name="Save edits").click()

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                pages = []
                for _ in range(2):  # two contexts: two separate sessions, as two curators would have
                    page = browser.new_context(viewport={"width": 1300, "height": 1100}).new_page()
                    page.set_default_timeout(60_000)
                    open_grid(page, app.url)
                    pages.append(page)
                a, b = pages
                edit(a, "model words", "curator A: thin ink lines")
                a.get_by_text("Saved 1 caption(s).").wait_for()
                edit(b, "model words", "curator B: a heavy brush")
                b.get_by_text("Changed by someone else meanwhile").wait_for()
                note = b.get_by_text("ink 1.png — on disk")
                expect(note).to_contain_text("curator A: thin ink lines")
                expect(note).to_contain_text("curator B: a heavy brush")
                screenshot(b, "faults-caption-conflict")
                expect(b.locator("#blk-caption-grid").get_by_test_id("cell-1-1")).to_contain_text("curator A")
            finally:
                browser.close()
    finally:
        app.stop()
    store = CaptionStore(folder)
    assert (folder / "ink 1.txt").read_text() == "curator A: thin ink lines"
    versions = [(v["text"], v["source"], bool(v.get("conflict"))) for v in store.versions("ink 1.png")]
    assert versions == [("model words", "model", False), ("curator A: thin ink lines", "human", False),
                        ("curator B: a heavy brush", "human", True)]
    assert store.status("ink 1.png") == "edited"
    assert temporaries(workspace) == []


# -- 3. disk full ------------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write until the disk refuses a byte more."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError):  # the last partial page too
        with open(filler, "ab", buffering=0) as handle:
            while True:
                handle.write(b"\0")
    return filler


def test_disk_full_during_a_caption_save_and_an_upscale(tmp_path, shared_workspace):
    from ui.tabs.upscale import ESRGAN
    from tests.test_upscale_esrgan import rrdb_file

    workspace = new_workspace(tmp_path, shared_workspace)
    upscaler = rrdb_file((workspace / "models" / "upscalers").mkdir(parents=True) or
                         workspace / "models" / "upscalers" / "tiny-x4.pth")
    image = tmp_path / "wall.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(image)
    with tmpfs(workspace / "datasets" / "inks", "1m") as folder, tmpfs(workspace / "outputs", "256k") as outputs:
        Image.new("RGB", (48, 32), (10, 40, 90)).save(folder / "ink 0.png")
        Image.new("RGB", (48, 32), (90, 40, 10)).save(folder / "ink 1.png")
        (folder / "ink 0.txt").write_text("my words, written before the studio")
        CaptionStore(folder).save("ink 1.png", "an approved caption", "", source="human")
        store = CaptionStore(folder)
        base = {n: store.read(n).hash for n in ("ink 0.png", "ink 1.png")}
        history = store.history_path.read_bytes()
        fill(folder)

        # (a) engine: one sentence, the old caption and the history untouched
        from blk.errors import UserError

        for name in ("ink 0.png", "ink 1.png"):
            before = (folder / Path(name).with_suffix(".txt")).read_bytes()
            with pytest.raises(UserError) as refused:
                store.save(name, "new words that do not fit " * 40, base[name], source="human")
            message = str(refused.value)
            assert "full" in message and name in message and "\n" not in message, message
            assert (folder / Path(name).with_suffix(".txt")).read_bytes() == before
        assert [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)] == []

        app = RunningApp(workspace, tmp_path / "net.jsonl")
        try:
            client = client_for(app)
            # (a) through the app: the grid's save on a full disk
            table, _, _ = client.predict("inks", "all", "", False, "name", False, 1, 50, api_name="/grid_page")
            rows = table["data"] if isinstance(table, dict) else table
            edited = [[r[0], "a curator's long edit " * 40 if r[0] == "ink 1.png" else r[1], *r[2:]] for r in rows]
            note = client.predict("inks", {"headers": ["image", "caption", "status", "tokens", "over budget"],
                                           "data": edited, "metadata": None}, api_name="/grid_save")
            assert "Not saved" in note and "The disk holding inks is full: the caption of ink 1.png was not saved" \
                in note, note
            # (b) an upscale whose canvas does not fit on the output disk: said before any tile
            _, result_file, status = client.predict(*upscale_args(image, upscaler, ESRGAN), api_name="/upscale")
        finally:
            app.stop()
        assert result_file is None and "free and this job needs about" in status, status
        assert "\n" not in status.strip("*"), status
        assert [p for p in outputs.rglob("*") if p.is_file()] == []  # no partial result, no temporaries
        assert (folder / "ink 1.txt").read_text() == "an approved caption"
        assert (folder / "ink 0.txt").read_text() == "my words, written before the studio"
        assert store.history_path.read_bytes().startswith(history)
        (folder / "filler.bin").unlink()
        assert temporaries(workspace) == [] and undecodable_images(workspace) == []
    print(f"\n[disk full] caption saves refused: 2 engine + 1 app, old captions intact; upscale: {status}")
