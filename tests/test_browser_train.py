"""In a real browser: start a tiny run from the Train tab; the loss plot gains points and a sample appears;
then the step chooser shows one step's samples and its checkpoint (or that it was pruned), and the form is still
filled after a reload. And the tab reads at 900 and 1300 px: whole checkbox labels, a legend with its keys, whole
steps on the x axis, a small sample small, and Resume's answer beside the button."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from blk.caption.style import CaptionStyle, PostProcess, dataset_style_path, save_style
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
        (folder / f"ink{i}.txt").write_text(f"inkstudy, an ink study {i}")
    save_style(CaptionStyle(post=PostProcess(trigger="inkstudy")), dataset_style_path(folder))  # its trigger word

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        with browser_page() as page:
            page.goto(app.url)
            page.get_by_role("tab", name="Train").click()
            page.get_by_label("Dataset", exact=True).last.click()
            page.get_by_role("option", name="inks").click()
            # the preset's "blkstyle, …" sample prompts take the dataset's trigger word
            expect(page.get_by_label("Sample prompts (one per line)")).to_have_value(re.compile(r"^inkstudy, "))
            page.get_by_label("Steps", exact=True).fill("40")
            page.get_by_label("Samples every N steps").fill("10")
            page.get_by_label("Checkpoint every N steps").fill("10")
            page.get_by_label("Keep newest").fill("2")  # steps 10 and 20 are pruned by the end
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_text("Started conceptor-flux-dev-inks")).to_be_visible(timeout=60_000)
            expect(page.get_by_text(re.compile(r"step [1-9]\d* of 40"))).to_be_visible(timeout=180_000)
            expect(page.locator("#blk-samples img").first).to_be_visible(timeout=60_000)
            expect(page.locator("#blk-loss-plot").get_by_text("smoothed")).to_be_visible(timeout=30_000)  # legend
            screenshot(page, "train-tab-running")
            expect(page.get_by_text("step 40 of 40")).to_be_visible(timeout=240_000)
            expect(page.get_by_text(re.compile(r"^finished"))).to_be_visible()
            screenshot(page, "train-tab-finished")

            chooser = page.get_by_label("Step", exact=True)
            for attempt in range(3):  # a timer tick re-listing the choices (the last pruning) can swallow a click
                chooser.click()
                page.get_by_role("option", name="step 10 · samples · checkpoint pruned").click()
                try:
                    expect(page.locator("#blk-step-samples img").first).to_be_visible(timeout=15_000)
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
            expect(page.locator("#blk-step-info")).to_contain_text("checkpoint of step 10 was pruned")
            chooser.click()
            page.get_by_role("option", name="step 40 · samples · checkpoint", exact=True).click()
            expect(page.locator("#blk-step-info")).to_contain_text("step-000040.safetensors")
            expect(page.locator("#blk-step-samples img").first).to_have_attribute("src", re.compile("step-000040-0"))
            screenshot(page, "train-tab-step-chosen")
            page.locator("#blk-loss-plot").scroll_into_view_if_needed()  # the mouse works in the viewport
            box = page.locator("#blk-loss-plot svg").first.bounding_box()  # drag a range near step 10
            y = box["y"] + box["height"] * 0.4
            page.mouse.move(box["x"] + box["width"] * 0.22, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.26, y, steps=5)
            page.mouse.move(box["x"] + box["width"] * 0.30, y, steps=5)
            page.mouse.up()
            expect(page.locator("#blk-step-info")).to_contain_text("checkpoint of step 10 was pruned", timeout=15_000)
            page.locator("#blk-step-to-sketch").click()  # step 10's was pruned: nothing to try
            expect(page.get_by_text("Step 10 has no checkpoint to try")).to_be_visible()
            chooser.click()
            page.get_by_role("option", name="step 40 · samples · checkpoint", exact=True).click()
            # chosen (the click is not swallowed by a timer tick) before it goes to Sketch: a busy machine once
            # sent step 10's "no checkpoint" instead
            expect(page.locator("#blk-step-info")).to_contain_text("step-000040.safetensors", timeout=30_000)
            page.locator("#blk-step-to-sketch").click()  # Sketch opens with step 40's checkpoint in its LoRA list
            expect(page.get_by_text(re.compile(r"^conceptor-flux-dev-inks-.* · step 40 — strength$"))).to_be_visible(
                timeout=30_000)
            expect(page.locator("#blk-sketch-generate")).to_be_visible()

            page.reload()  # the form comes back as it was left, dataset included (this browser's memory)
            page.get_by_role("tab", name="Train").click()
            expect(page.get_by_label("Dataset", exact=True).last).to_have_value("inks")
            expect(page.get_by_label("Steps", exact=True)).to_have_value("40")
            expect(page.get_by_label("Keep newest")).to_have_value("2")
            expect(page.get_by_label("Sample prompts (one per line)")).to_have_value(re.compile(r"^inkstudy, "))
        from gradio_client import Client

        run_name = next((workspace / "runs").iterdir()).name
        plot = Client(app.url, verbose=False).predict(run_name, False, api_name="/train_watch")[0]
        rows = plot["value"]["data"] if "value" in plot else plot["data"]
        assert len(rows) == 80 and {row[-1] for row in rows} == {"loss", "smoothed"}
        form = ["tiny-flux", "64", 4, 4, "adamw", 1e-3, 500, "constant", "", 0, 100, 2, 0, 0]
        estimate = Client(app.url, verbose=False).predict("conceptor-flux-dev", "inks", *form,
                                                          api_name="/train_estimate")
        assert "s/step" in estimate and "for 500 steps" in estimate, estimate
    finally:
        app.stop()
    runs = list((workspace / "runs").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "checkpoints" / "step-000040.safetensors").exists()


def finished_demo_run(workspace):
    """A 6-step run that has finished, with one 64 px sample (as the runner writes its folder)."""
    from blk.train.config import TrainConfig, save_config

    folder = workspace / "runs" / "demo-run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "samples").mkdir()
    config = TrainConfig()
    config.schedule.steps = 6
    save_config(config, folder / "config.yaml")
    Image.new("RGB", (64, 64), (200, 80, 40)).save(folder / "samples" / "step-000006-0.png")
    events = [("status", 0, {"status": "started"})]
    events += [("loss", step, {"loss": 0.5 - step * 0.03, "lr": 1e-4}) for step in range(1, 7)]
    events += [("sample", 6, {"paths": ["samples/step-000006-0.png"], "prompts": ["a cube"]}),
               ("status", 6, {"status": "finished"})]
    (folder / "events.jsonl").write_text("".join(json.dumps({"t": 1000.0 + 2 * i, "step": step, "kind": kind, **fields})
                                                 + "\n" for i, (kind, step, fields) in enumerate(events)))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (folder / "process.json").write_text(json.dumps({"pid": ended.pid, "started": 0, "processes": 1}))


CLIPPED_CHECKBOXES = """() => [...document.querySelectorAll('#blk-train-advanced input[type=checkbox]')].map(box => {
  const block = box.closest('.block'), text = box.closest('label').querySelector('span');
  const b = block.getBoundingClientRect(), t = text.getBoundingClientRect();
  const oneLine = t.height < 1.6 * parseFloat(getComputedStyle(text).lineHeight);
  const whole = t.width > 0 && t.left >= b.left - 0.5 && t.right <= b.right + 0.5
    && block.scrollWidth <= block.clientWidth + 1;
  return [text.textContent, oneLine && whole];
})"""
X_TICKS = """() => [...document.querySelectorAll('#blk-loss-plot [aria-label^="X-axis"] .role-axis-label text')]
  .map(t => t.textContent)"""
LEGEND = """() => { const block = document.getElementById('blk-loss-plot'), box = block.getBoundingClientRect();
  return [...block.querySelectorAll('.role-legend-label text, .role-legend-title text')].map(t => {
    const r = t.getBoundingClientRect();
    return [t.textContent, r.bottom <= box.bottom + 0.5 && r.height > 0]; }); }"""


def test_the_train_tab_reads_at_900_and_1300_px(tmp_path):
    from playwright.sync_api import expect

    workspace = tmp_path / "workspace"
    finished_demo_run(workspace)
    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        for width in (900, 1300):
            with browser_page(width=width, height=1000) as page:
                page.goto(app.url)
                page.get_by_role("tab", name="Train").click()
                expect(page.get_by_text("step 6 of 6")).to_be_visible(timeout=30_000)
                page.locator("#blk-train-advanced").get_by_text("Advanced").first.click()
                expect(page.get_by_label("Gradient checkpointing")).to_be_visible()
                expect(page.locator("#blk-loss-plot svg text", has_text="smoothed")).to_have_count(1, timeout=30_000)
                expect(page.locator("#blk-samples img").first).to_be_visible(timeout=30_000)
                screenshot(page, f"train-tab-{width}")

                checkboxes = dict(page.evaluate(CLIPPED_CHECKBOXES))
                assert set(checkboxes) >= {"Horizontal flip", "Shuffle tokens", "int8 base", "Gradient checkpointing",
                                           "Cache latents"}
                assert all(checkboxes.values()), f"clipped or wrapped at {width} px: {checkboxes}"
                legend = page.evaluate(LEGEND)
                assert legend == [["loss", True], ["smoothed", True]], legend  # its keys, inside the plot's box
                ticks = page.evaluate(X_TICKS)
                assert ticks and all(tick.isdigit() for tick in ticks), ticks  # whole steps, not 1.0 1.2 1.4 …
                sample = page.locator("#blk-samples img").first.bounding_box()
                gallery = page.locator("#blk-samples").bounding_box()
                assert sample["width"] <= gallery["width"] / 3, (sample, gallery)

                page.get_by_role("button", name="Resume").click()
                note = page.locator("#blk-run-note")
                expect(note).to_contain_text("already trained all its 6 steps")
                assert note.bounding_box()["y"] < 1000  # in the first screenful, beside the buttons
                # a finished run has no trainer to stop, kill or ask for samples (test_train_process serves one)
                for name in ("Stop (save and end)", "Kill", "Sample now"):
                    expect(page.get_by_role("button", name=name)).to_be_disabled()
        assert [r.name for r in (workspace / "runs").iterdir()] == ["demo-run"]
        assert not (workspace / "runs" / "demo-run" / "trainer.log").exists()  # Resume started nothing
    finally:
        app.stop()
