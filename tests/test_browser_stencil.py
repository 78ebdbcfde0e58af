"""In a real browser: a tiny RGBA asset, an ink scan made transparent, and both composed into an .ora."""

import re
import shutil
import zipfile

import numpy as np
from PIL import Image

from blk.generate.metadata import read_parameters
from blk.stencil.ora import read_ora
from tests.support.browser import browser_page, screenshot
from tests.support.running_app import RunningApp


def ink_scan(path, paper=(242, 236, 220)):
    """Paper with a dark diagonal stroke."""
    pixels = np.empty((64, 96, 3), np.uint8)
    pixels[:] = paper
    for i in range(60):
        pixels[i, 10 + i:14 + i] = (30, 28, 40)
    Image.fromarray(pixels).save(path)
    return path


def test_stencil_tab_generate_alpha_compose(tmp_path, shared_workspace):
    from playwright.sync_api import expect

    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models", ignore=shutil.ignore_patterns("layerdiffuse"))
    scan = ink_scan(tmp_path / "scan.png")
    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        with browser_page() as page:
            page.goto(app.url)
            page.get_by_role("tab", name="Stencil").click()
            page.get_by_text("Start from a transparent image (image to image)").click()
            page.get_by_role("button", name="Start from the chosen asset").click()  # none yet: a sentence
            expect(page.locator("#blk-stencil-status")).to_contain_text("Click an asset in the gallery first")
            page.get_by_label("Descriptor").fill("an octahedron, thin line")
            page.get_by_label("Width (multiple of 64; not used with a starting image)").fill("64")
            page.get_by_label("Height (multiple of 64; not used with a starting image)").fill("64")
            page.locator("#blk-stencil-steps input").fill("2")
            page.get_by_label("Test-time augmentation (8 decoder views; cleaner edges)").uncheck()
            page.locator("#blk-stencil-generate").click()
            expect(page.locator("#blk-stencil-status")).to_contain_text(re.compile(r"1 asset, seed \d+, 64×64 RGBA"),
                                                                        timeout=180_000)
            expect(page.locator("#blk-stencil-preview img")).to_be_visible()  # the new asset, without a click
            expect(page.locator("#blk-stencil-chosen")).to_contain_text(re.compile(r"Chosen: .*-s\d+ ?\.png"))
            page.locator("#blk-stencil-gallery img").first.click()
            screenshot(page, "stencil-tab-generate")
            page.locator("#blk-stencil-to-compose").click()  # the asset goes to Compose, which opens
            expect(page.locator("#blk-compose-status")).to_contain_text("as layer 1 (top)")
            expect(page.locator("#blk-compose-layers")).to_contain_text(re.compile(r"-s\d+ ?\.png"))
            page.get_by_role("tab", name="Generate (LayerDiffuse)").click()

            # the chosen asset becomes the start of an image-to-image run that keeps its transparency
            page.get_by_role("button", name="Start from the chosen asset").click()
            expect(page.locator("#blk-stencil-start img")).to_be_visible()
            first_preview = page.locator("#blk-stencil-preview img").get_attribute("src")
            page.locator("#blk-stencil-generate").click()
            for _ in range(360):  # the second asset's file, written when the run finishes
                if len(list((workspace / "outputs" / "stencil").glob("*/*-s[0-9]*.png"))) == 2:
                    break
                page.wait_for_timeout(500)
            expect(page.locator("#blk-stencil-status")).to_contain_text("64×64 RGBA", timeout=60_000)
            expect(page.locator("#blk-stencil-preview img")).not_to_have_attribute("src", first_preview)
            page.locator("#blk-stencil-to-upscale").click()  # the newest asset opens in Upscale, its alpha kept
            expect(page.locator("#blk-upscale-input-note")).to_contain_text("64×64, 8-bit, with transparency",
                                                                            timeout=60_000)
            page.get_by_role("tab", name="Stencil").click()

            page.get_by_role("tab", name="Ink to alpha").click()
            page.locator("#blk-alpha-files input[type=file]").set_input_files(str(scan))
            page.locator("#blk-alpha-convert").click()
            expect(page.locator("#blk-alpha-status")).to_contain_text("1 converted", timeout=60_000)
            screenshot(page, "stencil-tab-alpha")
            with page.expect_download() as download:
                page.locator("#blk-alpha-download a").first.click()
            downloaded = tmp_path / "downloaded.png"
            download.value.save_as(downloaded)

            asset = next(path for path in (workspace / "outputs" / "stencil").glob("*/*-s[0-9]*.png")
                         if not read_parameters(path).get("source_image"))
            alpha = next((workspace / "outputs" / "stencil" / "alpha").rglob("*.png"))
            page.get_by_role("tab", name="Compose").click()
            # layer 1 is the asset added from Generate; the upload adds the ink as layer 2
            page.locator("#blk-compose-layers input[type=file]").set_input_files(str(alpha))
            expect(page.locator("#blk-compose-layers")).to_contain_text(alpha.name)
            page.locator("#blk-compose-positions textarea").fill("16,0\n0,0")
            page.locator("#blk-compose-order textarea").fill("2,1")  # the ink under the asset
            layer_list = page.locator("#blk-compose-layer-list")  # numbered as Order counts, bottom first
            expect(layer_list).to_contain_text(f"layer 2: {alpha.name} — bottom")
            expect(layer_list).to_contain_text(f"layer 1: {asset.name} — top")
            page.locator("#blk-compose-to-upscale").click()  # nothing exported yet: a sentence, no tab change
            expect(page.locator("#blk-compose-status")).to_contain_text("Export first")
            page.locator("#blk-compose-export").click()
            expect(page.locator("#blk-compose-status")).to_contain_text("Exported", timeout=60_000)
            screenshot(page, "stencil-tab-compose")
            expect(page.locator("#blk-compose-flat img")).to_have_count(1)
            page.locator("#blk-compose-order textarea").fill("1,2")  # restacked: the view showed the old stack
            expect(page.locator("#blk-compose-flat img")).to_have_count(0)
            page.locator("#blk-compose-to-upscale").click()  # the saved collage opens in Upscale, alpha and all
            expect(page.locator("#blk-upscale-input-note")).to_contain_text("96×64, 8-bit", timeout=60_000)
            expect(page.locator("#blk-upscale-input")).to_contain_text("collage-")
    finally:
        app.stop()

    assert Image.open(asset).mode == "RGBA" and read_parameters(asset)["prompt"] == "an octahedron, thin line, FG"
    assets = sorted((workspace / "outputs" / "stencil").glob("*/*-s[0-9]*.png"))
    refined = [read_parameters(path) for path in assets if read_parameters(path).get("source_image")]
    assert len(refined) == 1 and refined[0]["strength"] == 0.6 and refined[0]["width"] == 64
    assert downloaded.read_bytes() == alpha.read_bytes()  # the download is the RGBA file itself
    converted = np.asarray(Image.open(alpha)).astype(np.float64)
    original = np.asarray(Image.open(scan)).astype(np.float64)
    paper = original[0, -1]
    rebuilt = converted[..., :3] * converted[..., 3:] / 255 + paper * (1 - converted[..., 3:] / 255)
    assert np.abs(rebuilt - original).max() <= 1.5  # over its paper, the RGBA gives the scan back
    ora = next((workspace / "outputs" / "stencil" / "compose").rglob("*.ora"))
    with zipfile.ZipFile(ora) as archive:
        assert archive.namelist()[0] == "mimetype" and "stack.xml" in archive.namelist()
        layers = [n for n in archive.namelist() if n.startswith("data/")]
    assert len(layers) == 3  # background + two layers
    stacked = read_ora(ora).layers
    assert [layer.name for layer in stacked][-2:] == [alpha.stem, asset.stem]  # bottom → top, as ordered
    assert (stacked[-1].x, stacked[-2].x) == (16, 0)  # each layer kept its own position line
    flat = Image.open(ora.with_suffix(".png"))
    assert flat.size == (96, 64)
