"""The artist's tour, in a real browser, on the tiny models, started with the README command.

Fresh workspace → a dataset from uploaded images → few-shot captions through
the real vLLM server → two captions edited and approved in the grid → a short
LoRA, its loss plot → a sketch with the new checkpoint → an RGBA stencil and
an ink-to-alpha asset → the sketch upscaled on both paths → two checkpoints
side by side. Every Python process (launcher, app, vLLM server) runs under the
network guard (a sitecustomize on PYTHONPATH) and Chromium's requests are
recorded: nothing may reach an address outside loopback. Screenshots of each
tab go to test-artifacts/journey-*.png.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from blk.caption.server import free_port
from blk.data.captions import CaptionStore
from blk.generate.metadata import read_parameters
from tests.support import netguard
from tests.support.browser import app_log_on_failure, browser_page, edit_grid_cell, screenshot

ROOT = Path(__file__).resolve().parent.parent
SITECUSTOMIZE = """
import os
if os.environ.get("BLK_NETGUARD_LOG"):
    from tests.support import netguard
    netguard.install(os.environ["BLK_NETGUARD_LOG"])
"""


def launch_with_readme_command(workspace: Path, guard_dir: Path, log: Path, port: int):
    """`python3 studio.py --workspace W --port P`, the app's venv being the one running the tests."""
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, BLK_VENV=sys.prefix, BLK_NETGUARD_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(guard_dir), str(ROOT)]))
    output = log.with_suffix(".out")
    process = subprocess.Popen([sys.executable, str(ROOT / "studio.py"), "--workspace", str(workspace),
                                "--port", str(port)], cwd=ROOT, env=env, stdout=open(output, "w"),
                               stderr=subprocess.STDOUT)
    deadline = time.time() + 600  # studio.py checks (and if needed completes) the environment first
    while "Running on" not in output.read_text():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError("the README command did not start the app:\n" + output.read_text()[-3000:])
        time.sleep(0.3)
    return process, output


def stamp_app_environment() -> None:
    """The test venv already holds the app's requirements (it holds the test set that includes them);
    say so, as `python3 studio.py test` does, so that the README command does not reinstall."""
    sys.path.insert(0, str(ROOT))
    import studio

    stamp = Path(sys.prefix) / f".blk-installed-{studio.APP_REQUIREMENTS.stem}"
    stamp.write_text(studio.requirements_hash(studio.APP_REQUIREMENTS, studio.APP_REQUIREMENTS) + "\n")


def drawings(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(5)
    paths = []
    for i in range(4):
        pixels = np.full((64, 64, 3), 240, np.uint8)
        for _ in range(6):
            x, y = rng.integers(0, 56, 2)
            pixels[y:y + 8, x:x + 8] = rng.integers(0, 90, 3)
        path = folder / f"drawing {i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    (folder / "drawing 0.txt").write_text("blkstyle, four dark squares on white paper, ink")
    return paths + [folder / "drawing 0.txt"]


@pytest.mark.timeout(1500)
def test_the_artists_tour(tmp_path, shared_workspace):
    from playwright.sync_api import expect

    from blk.caption.job import resolve_vlm
    from tests.test_browser_stencil import ink_scan
    from tests.test_upscale_esrgan import rrdb_file

    resolve_vlm("tiny-vlm", shared_workspace)
    stamp_app_environment()
    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models", ignore=shutil.ignore_patterns("layerdiffuse"))
    (workspace / "models" / "upscalers").mkdir()
    rrdb_file(workspace / "models" / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    uploads = drawings(tmp_path / "uploads")
    scan = ink_scan(tmp_path / "scan.png")
    log = tmp_path / "net.jsonl"
    port = free_port()
    process, output = launch_with_readme_command(workspace, tmp_path / "guard", log, port)
    requests: list[str] = []
    try:
        with app_log_on_failure(output), browser_page(height=1200) as page:
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"http://127.0.0.1:{port}/")

            # Caption: a dataset from uploads; approve and promote the one captioned drawing; caption the rest
            page.get_by_text("New dataset, or add images").click()
            page.locator("#blk-new-dataset-name textarea, #blk-new-dataset-name input").first.fill("inks")
            page.locator("#blk-new-dataset-files input[type=file]").set_input_files([str(p) for p in uploads])
            page.locator("#blk-new-dataset-create").click()
            expect(page.locator("#blk-new-dataset-note")).to_contain_text("Added 4 images and 1 caption to inks.")
            page.get_by_role("button", name="Show", exact=True).click()
            page.get_by_text("Page 1 of 1").wait_for()
            grid = page.locator("#blk-caption-grid")
            grid.get_by_test_id("cell-0-0").click()
            expect(page.get_by_text("drawing 0.png — edited")).to_be_visible()
            page.get_by_role("button", name="Approve", exact=True).click()
            expect(page.get_by_text("drawing 0.png — approved")).to_be_visible()
            page.get_by_text("Caption with a vision-language model").click()
            page.get_by_role("button", name="Promote the clicked image (approved caption)").click()
            expect(page.locator("#blk-caption-examples")).to_contain_text("drawing 0.png")
            page.get_by_role("button", name="Caption", exact=True).click()
            expect(page.get_by_text(re.compile(r"Captioned 3"))).to_be_visible(timeout=400_000)
            page.get_by_role("button", name="Show", exact=True).click()
            for row, text in ((1, "blkstyle, a cloud of ink dots"), (2, "blkstyle, a square grid, thin line")):
                edit_grid_cell(grid, grid.get_by_test_id(f"cell-{row}-1"), text)
            page.get_by_role("button", name="Save edits").click()
            page.get_by_text("Saved 2 caption(s).").wait_for()
            for row in (1, 2):
                grid.get_by_test_id(f"cell-{row}-0").click()
                expect(page.get_by_text(f"drawing {row}.png — edited")).to_be_visible()
                page.get_by_role("button", name="Approve", exact=True).click()
                expect(page.get_by_text(f"drawing {row}.png — approved")).to_be_visible()
            screenshot(page, "journey-caption")

            # Train: a short run on the new dataset, watched live
            page.get_by_role("tab", name="Train").click()
            page.get_by_label("Dataset", exact=True).last.click()
            page.get_by_role("option", name="inks").click()
            page.get_by_label("Steps", exact=True).fill("12")
            page.get_by_label("Samples every N steps").fill("6")
            page.get_by_label("Checkpoint every N steps").fill("6")
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_text(re.compile(r"^finished"))).to_be_visible(timeout=400_000)
            expect(page.locator("#blk-loss-plot").get_by_text("smoothed")).to_be_visible(timeout=30_000)
            screenshot(page, "journey-train")
            run_name = next((workspace / "runs").iterdir()).name

            # Sketch with the new checkpoint, then send it to Upscale
            page.get_by_role("tab", name="Sketch").click()
            page.get_by_label("Prompt", exact=True).fill("blkstyle, a dodecahedron")
            page.locator("#blk-sketch-lora-pick input").click()
            page.get_by_role("option", name=f"{run_name}/step-000012.safetensors").click()  # picking adds it
            page.get_by_label("Aspect").click()
            page.get_by_role("option", name="custom size").click()
            page.locator("#blk-sketch-width input").fill("64")
            page.locator("#blk-sketch-height input").fill("64")
            page.locator("#blk-sketch-steps input").fill("2")
            page.locator("#blk-sketch-generate").click()
            expect(page.locator("#blk-sketch-status")).to_contain_text("64×64", timeout=180_000)
            screenshot(page, "journey-sketch")

            # Stencil: an RGBA asset and an ink scan made transparent
            page.get_by_role("tab", name="Stencil").click()
            page.get_by_label("Descriptor").fill("a cloud, thick line")
            page.get_by_label("Width (multiple of 64; not used with a starting image)").fill("64")
            page.get_by_label("Height (multiple of 64; not used with a starting image)").fill("64")
            page.locator("#blk-stencil-steps input").fill("2")
            page.locator("#blk-stencil-generate").click()
            expect(page.locator("#blk-stencil-status")).to_contain_text("64×64 RGBA", timeout=180_000)
            page.get_by_role("tab", name="Ink to alpha").click()
            page.locator("#blk-alpha-files input[type=file]").set_input_files(str(scan))
            page.locator("#blk-alpha-convert").click()
            expect(page.locator("#blk-alpha-status")).to_contain_text("1 converted", timeout=60_000)
            screenshot(page, "journey-stencil")

            # Upscale the sketch on both paths
            page.get_by_role("tab", name="Sketch").click()
            page.locator("#blk-sketch-gallery img").first.click()
            expect(page.locator("#blk-sketch-selected")).to_contain_text("Selected")  # the server holds the choice
            page.locator("#blk-sketch-to-upscale").click()
            # a view made from the file that was sent
            expect(page.locator("#blk-upscale-input-note")).to_contain_text("64×64, 8-bit", timeout=60_000)
            expect(page.locator("#blk-upscale-view img")).to_be_visible(timeout=30_000)
            page.locator("#blk-upscale-model input").click()
            page.get_by_role("option", name="RealESRGAN_x4plus_tiny.pth").click()
            page.locator("#blk-upscale-go").click()
            expect(page.locator("#blk-upscale-status")).to_contain_text(re.compile(r"256×256 in \d+ s"),
                                                                        timeout=120_000)
            page.get_by_label("Diffusion + texture LoRA (mural sizes)").check()
            # the path's defaults arrived first (twice after 5 s on a busy machine, after the job's own events)
            expect(page.get_by_label("Overlap px")).to_have_value("96", timeout=30_000)
            page.get_by_label("Scale", exact=True).fill("2")
            page.get_by_label("Overlap px").fill("16")
            page.get_by_label("Steps (0: the model's default)").fill("4")
            page.locator("#blk-upscale-go").click()
            expect(page.locator("#blk-upscale-status")).to_contain_text(re.compile(r"128×128 in \d+ s"),
                                                                        timeout=240_000)
            screenshot(page, "journey-upscale")

            # Review: two checkpoints side by side
            page.get_by_role("tab", name="Review", exact=True).click()
            # opening the tab chooses the newest run (the one just trained) and fills the form from it: its
            # prompts and its two newest checkpoints as A and B (choosing the same run again in the list, as this
            # test did, left A and B empty when run after the other browser tests: not yet understood)
            expect(page.locator("#blk-review-run input")).to_have_value(run_name, timeout=60_000)
            expect(page.get_by_label("Prompts (columns, one per line)")).to_have_value(
                "blkstyle, a figure in a landscape, dusk", timeout=60_000)
            page.get_by_role("tab", name="Side by side").click()
            page.get_by_label("Prompt", exact=True).last.fill("blkstyle, a cube")
            page.get_by_role("button", name="Compare").click()
            expect(page.get_by_text("Left: A (step 6)")).to_be_visible(timeout=120_000)
            screenshot(page, "journey-review")
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()

    # what the tour left on disk
    folder = workspace / "datasets" / "inks"
    store = CaptionStore(folder)
    assert [store.status(f"drawing {i}.png") for i in range(4)] == ["approved", "approved", "approved", "machine"]
    assert (workspace / "runs" / run_name / "checkpoints" / "step-000012.safetensors").exists()
    sketch = next((workspace / "outputs" / "sketch").rglob("*.png"))
    assert read_parameters(sketch)["loras"][0]["name"] == f"{run_name}/step-000012.safetensors"
    upscaled = sorted(p.name for p in (workspace / "outputs" / "upscale").rglob("*.*") if not p.name.startswith("."))
    assert len(upscaled) == 2 and any("esrgan-256x256" in n for n in upscaled), upscaled
    assert not [p for p in workspace.rglob(".blk-tmp-*")]

    # privacy: every Python process and the browser stayed on this machine
    outside = netguard.outside_loopback(str(log))
    assert outside == [], outside
    hosts = {urlparse(url).hostname for url in requests if not url.startswith(("data:", "blob:"))}
    assert hosts <= {"127.0.0.1", "localhost"}, hosts
    assert json.loads(log.read_text().splitlines()[0])  # the guard was active in the launched processes
