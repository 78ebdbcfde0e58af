"""In a real browser: start a tiny run from the Train tab; the loss plot gains points and a sample appears;
then the step chooser shows one step's samples and its checkpoint (or that it was pruned)."""

import shutil

import numpy as np
from PIL import Image

from tests.support.browser import browser_page, screenshot
from tests.support.running_app import RunningApp


def test_train_tab_runs_a_tiny_lora(tmp_path, shared_workspace):
    from playwright.sync_api import expect

    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models")
    folder = workspace / "datasets" / "inks"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"ink{i}.png")
        (folder / f"ink{i}.txt").write_text(f"blkstyle, an ink study {i}")

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        with browser_page() as page:
            page.goto(app.url)
            page.get_by_role("tab", name="Train").click()
            page.get_by_label("Dataset", exact=True).last.click()
            page.get_by_role("option", name="inks").click()
            page.get_by_label("Steps", exact=True).fill("40")
            page.get_by_label("Samples every N steps").fill("10")
            page.get_by_label("Checkpoint every N steps").fill("10")
            page.get_by_label("Keep newest").fill("2")  # steps 10 and 20 are pruned by the end
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_text("Started conceptor-flux-dev-inks")).to_be_visible(timeout=60_000)
            import re

            expect(page.get_by_text(re.compile(r"step [1-9]\d* of 40"))).to_be_visible(timeout=180_000)
            expect(page.locator("#blk-samples img").first).to_be_visible(timeout=60_000)
            expect(page.locator("#blk-loss-plot").get_by_text("smoothed")).to_be_visible(timeout=30_000)  # legend
            screenshot(page, "train-tab-running")
            expect(page.get_by_text("step 40 of 40")).to_be_visible(timeout=240_000)
            expect(page.get_by_text(re.compile(r"^finished"))).to_be_visible()
            screenshot(page, "train-tab-finished")

            chooser = page.get_by_label("Step", exact=True)
            chooser.click()
            page.get_by_role("option", name="step 10 · samples · checkpoint pruned").click()
            expect(page.locator("#blk-step-samples img").first).to_be_visible(timeout=30_000)
            expect(page.locator("#blk-step-info")).to_contain_text("checkpoint of step 10 was pruned")
            chooser.click()
            page.get_by_role("option", name="step 40 · samples · checkpoint", exact=True).click()
            expect(page.locator("#blk-step-info")).to_contain_text("step-000040.safetensors")
            expect(page.locator("#blk-step-samples img").first).to_have_attribute("src", re.compile("step-000040-0"))
            screenshot(page, "train-tab-step-chosen")
            box = page.locator("#blk-loss-plot svg").first.bounding_box()  # drag a range near step 10
            y = box["y"] + box["height"] * 0.4
            page.mouse.move(box["x"] + box["width"] * 0.22, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.26, y, steps=5)
            page.mouse.move(box["x"] + box["width"] * 0.30, y, steps=5)
            page.mouse.up()
            expect(page.locator("#blk-step-info")).to_contain_text("checkpoint of step 10 was pruned", timeout=15_000)
        from gradio_client import Client

        run_name = next((workspace / "runs").iterdir()).name
        plot = Client(app.url, verbose=False).predict(run_name, False, api_name="/train_watch")[0]
        rows = plot["value"]["data"] if "value" in plot else plot["data"]
        assert len(rows) == 80 and {row[-1] for row in rows} == {"raw", "smoothed"}
        form = ["tiny-flux", "64", 4, 4, "adamw", 1e-3, 500, "constant", "", 0, 100, 2, 0, 0]
        estimate = Client(app.url, verbose=False).predict("conceptor-flux-dev", "inks", *form,
                                                          api_name="/train_estimate")
        assert "s/step" in estimate and "for 500 steps" in estimate, estimate
    finally:
        app.stop()
    runs = list((workspace / "runs").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "checkpoints" / "step-000040.safetensors").exists()
