"""In a real browser: upscale one image on the Real-ESRGAN path and on the diffusion path."""

import re
import shutil

import numpy as np
import tifffile
from PIL import Image

from blk.generate.metadata import read_parameters
from tests.support.browser import browser_page, screenshot
from tests.support.running_app import RunningApp
from tests.test_upscale_esrgan import rrdb_file


def test_upscale_tab_both_paths(tmp_path, shared_workspace):
    from playwright.sync_api import expect

    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models", ignore=shutil.ignore_patterns("layerdiffuse"))
    (workspace / "models" / "upscalers").mkdir()
    rrdb_file(workspace / "models" / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    (workspace / "models" / "loras").mkdir()
    (workspace / "models" / "loras" / "texture.safetensors").write_bytes(b"listed, never loaded")
    yy, xx = np.mgrid[0:40, 0:48]
    source = tmp_path / "drawing.png"  # with transparency: the tab must get the file, not a browser's RGB copy
    Image.fromarray(np.stack([xx * 5, yy * 6, xx * 0 + 128, np.where(xx < 24, 255, 0)], -1).astype(np.uint8)).save(
        source)

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        with browser_page() as page:
            page.goto(app.url)
            page.get_by_role("tab", name="Upscale").click()
            page.locator("#blk-upscale-input input[type=file]").set_input_files(str(source))
            expect(page.locator("#blk-upscale-input-note")).to_contain_text("drawing.png: 48×40, 8-bit, with transparency")
            expect(page.locator("#blk-upscale-view img")).to_be_visible()
            # the checkerboard lies behind the picture's pixels only: its box has the picture's shape (a box
            # fitted to the frame showed checkered margins beside an opaque image, read as transparency)
            box = page.locator("#blk-upscale-view img").bounding_box()
            assert abs(box["width"] / box["height"] - 48 / 40) < 0.03, box
            page.locator("#blk-upscale-model input").click()
            page.get_by_role("option", name="RealESRGAN_x4plus_tiny.pth").click()
            page.get_by_label("Scale", exact=True).fill("4")
            expect(page.get_by_label("Tile px (0: automatic)")).to_have_value("0")  # what the label says
            expect(page.get_by_label("DPI (0: the input's)")).to_have_value("0")
            page.get_by_role("button", name="Estimate").click()
            expect(page.locator("#blk-upscale-status")).to_contain_text("48×40 → 192×160", timeout=30_000)
            page.locator("#blk-upscale-go").click()
            expect(page.locator("#blk-upscale-status")).to_contain_text(re.compile(r"192×160 in \d+ s"), timeout=120_000)
            expect(page.locator("#blk-upscale-slider img").first).to_be_visible()
            screenshot(page, "upscale-tab-esrgan")
            page.get_by_role("button", name="Estimate").click()  # the job just measured its tiles
            expect(page.locator("#blk-upscale-status")).to_contain_text("from the last job with these settings")

            page.get_by_label("Diffusion + texture LoRA (mural sizes)").check()
            expect(page.get_by_label("Overlap px")).to_have_value("96")  # the path's defaults arrived first
            page.get_by_label("Scale", exact=True).fill("2")
            page.get_by_label("Overlap px").fill("16")
            expect(page.locator("#blk-upscale-lora input")).to_have_value("(none)")  # no LoRA unless picked
            page.get_by_label("Steps (0: the model's default)").fill("4")
            page.get_by_label("PNG", exact=True).check()
            expect(page.locator("#blk-upscale-step-scale")).to_contain_text("Largest enlargement per step")
            # with the diffusion settings open, the buttons still sit just above their status, on the first screen
            buttons, report = page.locator("#blk-upscale-go").bounding_box(), \
                page.locator("#blk-upscale-status").bounding_box()
            assert buttons["y"] + buttons["height"] <= report["y"] + 1 and report["y"] - buttons["y"] < 120
            on_page = buttons["y"] + page.evaluate("window.scrollY")  # from the page's top, however scrolled
            assert on_page + buttons["height"] < page.viewport_size["height"], on_page
            page.get_by_role("button", name="Estimate").click()  # the engine's plan, no pipeline loaded
            expect(page.locator("#blk-upscale-status")).to_contain_text("96×80: 2 passes of", timeout=30_000)
            expect(page.locator("#blk-upscale-status")).to_contain_text("Texture LoRA: none")
            page.locator("#blk-upscale-go").click()
            expect(page.locator("#blk-upscale-status")).to_contain_text(re.compile(r"96×80 in \d+ s"), timeout=180_000)
            screenshot(page, "upscale-tab-diffusion")
            # each path keeps its own settings: a look at the other path loses nothing typed
            page.get_by_label("Real-ESRGAN (faithful, to about 8k)").check()
            expect(page.get_by_label("Overlap px")).to_have_value("32")
            expect(page.get_by_label("Scale", exact=True)).to_have_value("4")
            page.get_by_label("Overlap px").fill("24")
            page.get_by_label("Diffusion + texture LoRA (mural sizes)").check()
            expect(page.get_by_label("Overlap px")).to_have_value("16")
            expect(page.get_by_label("Scale", exact=True)).to_have_value("2")
            page.get_by_label("Real-ESRGAN (faithful, to about 8k)").check()
            expect(page.get_by_label("Overlap px")).to_have_value("24")
            # a preset fills the form with the paper's recipe, path included, and says which file is missing
            page.get_by_label("Overlap px").fill("20")  # typed just before: the path left keeps it
            page.locator("#blk-upscale-preset input").click()
            page.get_by_role("option", name="upscale-diffusion-flux").click()
            expect(page.locator("#blk-upscale-preset-note")).to_contain_text(
                "RealESRGAN_x4plus.pth is not in workspace/models/upscalers")
            expect(page.get_by_label("Diffusion + texture LoRA (mural sizes)")).to_be_checked()
            expect(page.get_by_label("Overlap px")).to_have_value("96")
            expect(page.locator("#blk-upscale-tile input")).to_have_value("1024")
            expect(page.get_by_label("Steps (0: the model's default)")).to_have_value("0")
            page.get_by_label("Real-ESRGAN (faithful, to about 8k)").check()  # the preset's settings are kept
            expect(page.get_by_label("Overlap px")).to_have_value("20")
            page.get_by_label("Diffusion + texture LoRA (mural sizes)").check()
            expect(page.get_by_label("Overlap px")).to_have_value("96")
            screenshot(page, "upscale-tab-preset")
    finally:
        app.stop()
    results = sorted(p for p in (workspace / "outputs" / "upscale").rglob("*.*") if not p.name.startswith("."))
    names = [p.name for p in results]
    assert names == ["drawing-diffusion-96x80.png", "drawing-esrgan-192x160.tif"], names
    with tifffile.TiffFile(results[1]) as tif:  # the alpha the file had, not the browser's RGB copy
        enlarged = tif.pages[0].asarray()
    assert enlarged.shape == (160, 192, 4) and enlarged[80, 20, 3] == 255 and enlarged[80, 170, 3] == 0
    parameters = read_parameters(results[0])
    assert parameters["path"] == "diffusion" and parameters["enlarge"] == "RealESRGAN_x4plus_tiny.pth"
