"""In a real browser: edit a caption in the grid, save, reload, and see the new text and status; the Words panel
counts the captions and a click on a term filters the grid; a dataset made meanwhile appears when the tab is
opened, and choosing it leaves nothing of the previous one in the editor or the word filter."""

import shutil

from PIL import Image

from blk.data.captions import CaptionStore
from tests.support.browser import browser_page, edit_grid_cell, screenshot
from tests.support.running_app import RunningApp


def open_grid(page, url):
    page.goto(url)
    page.locator("#blk-caption-dataset input").click()
    page.get_by_role("option", name="inks", exact=True).click()  # not inks-alpha
    page.get_by_role("button", name="Show", exact=True).click()
    page.get_by_text("Page 1 of 1").wait_for()


def test_edit_a_caption_in_the_grid_and_see_it_after_reload(tmp_path, shared_workspace):
    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models")
    folder = workspace / "datasets" / "inks"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (48, 32), (40 * i, 40, 90)).save(folder / f"ink {i}.png")
    (folder / "ink 1.txt").write_text("a machine caption")
    CaptionStore(folder).save("ink 2.png", "model words", "", source="model")

    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        with browser_page() as page:
            open_grid(page, app.url)
            grid = page.locator("#blk-caption-grid")
            cell = grid.get_by_test_id("cell-2-1")  # ink 2.png's caption (rows sorted by name)
            from playwright.sync_api import expect

            expect(cell).to_contain_text("model words")
            edit_grid_cell(grid, cell, "a careful human caption, thin ink lines")
            page.get_by_role("button", name="Save edits").click()
            page.get_by_text("Saved 1 caption(s).").wait_for()
            screenshot(page, "caption-grid-saved")

            page.reload()
            open_grid(page, app.url)
            expect(grid.get_by_test_id("cell-2-0")).to_contain_text("ink 2.png")  # rows sorted by name
            expect(grid.get_by_test_id("cell-2-1")).to_contain_text("a careful human caption, thin ink lines")
            expect(grid.get_by_test_id("cell-2-2")).to_contain_text("edited")
            screenshot(page, "caption-grid-after-reload")

            grid.get_by_test_id("cell-0-0").click()  # select a row: the large view follows
            expect(page.get_by_text("ink 0.png — none")).to_be_visible()
            page.keyboard.press("Alt+ArrowRight")
            expect(page.get_by_text("ink 1.png — edited")).to_be_visible()
            expect(page.locator("#blk-large-caption textarea")).to_have_value("a machine caption")
            thumbnails = page.locator("#blk-caption-thumbs img")
            expect(thumbnails).to_have_count(3)  # the page's images, in the grid's order
            thumbnails.nth(2).click()  # a thumbnail opens its image large too
            expect(page.get_by_text("ink 2.png — edited")).to_be_visible()

            page.get_by_text("Words: how the captions use words and tags").click()  # counted when opened
            expect(page.locator("#blk-words-summary")).to_contain_text("2 caption(s): 0 read as tags, 2 as prose")
            expect(page.locator("#blk-words-top").get_by_test_id("cell-0-0")).to_contain_text("caption")
            expect(page.locator("#blk-words-top").get_by_test_id("cell-0-3")).to_contain_text("100%")
            page.locator("#blk-words-rare").get_by_text("machine", exact=True).click()  # one term: its captions
            expect(page.get_by_text("Page 1 of 1 — 1 matching with “machine”")).to_be_visible()
            expect(grid.get_by_test_id("cell-0-0")).to_contain_text("ink 1.png")
            expect(page.locator("#blk-words-term input")).to_have_value("machine")
            screenshot(page, "caption-words-filter")

            alpha = workspace / "datasets" / "inks-alpha"  # made elsewhere (Stencil's ink to alpha) meanwhile
            alpha.mkdir()
            Image.new("RGBA", (48, 32), (0, 0, 0, 128)).save(alpha / "ink 0.png")
            page.get_by_role("tab", name="Train").click()
            page.get_by_role("tab", name="Caption").click()  # opening the tab lists it
            page.locator("#blk-caption-dataset input").click()
            page.get_by_role("option", name="inks-alpha").click()
            # shown on choosing, no word filter (a CI run on a busy machine took over 5 s)
            expect(page.get_by_text("Page 1 of 1 — 1 matching.")).to_be_visible(timeout=30_000)
            expect(page.locator("#blk-large-caption textarea")).to_have_value("")  # nothing left of inks
            expect(page.get_by_text("ink 1.png — edited")).to_have_count(0)
            page.locator("#blk-large-caption textarea").fill("typed with no image clicked")
            page.get_by_role("button", name="Save", exact=True).click()
            expect(page.get_by_text("Click an image in the grid first.")).to_be_visible()

            page.reload()
            expect(page.locator("#blk-caption-dataset input")).to_have_value("")  # nothing preselected
    finally:
        app.stop()
    store = CaptionStore(folder)
    assert (folder / "ink 2.txt").read_text() == "a careful human caption, thin ink lines"
    assert store.status("ink 2.png") == "edited"
    assert [v["source"] for v in store.versions("ink 2.png")] == ["model", "human"]
    assert [v["source"] for v in store.versions("ink 1.png")] == []  # the text typed after the switch went nowhere
    assert not (alpha / "ink 0.txt").exists()
