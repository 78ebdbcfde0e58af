"""In a real browser: a run that appears after the page loaded (trained in the same session) is chosen when the
Review tab is opened, with its form filled (Side by side's Prompt too); a run the artist chose stays chosen."""

import shutil

from tests.conftest import copy_trained_run
from tests.support.browser import browser_page
from tests.support.running_app import RunningApp


def test_review_chooses_a_run_trained_after_the_page_loaded(tmp_path, shared_workspace, trained_run):
    from playwright.sync_api import expect

    workspace = tmp_path / "workspace"
    shutil.copytree(shared_workspace.models, workspace / "models")
    app = RunningApp(workspace, tmp_path / "net.jsonl")
    try:
        with browser_page() as page:
            page.goto(app.url)
            page.get_by_role("tab", name="Review", exact=True).click()
            run = page.locator("#blk-review-run input")
            expect(run).to_have_value("")  # no run yet
            copy_trained_run(trained_run, workspace / "runs" / "new-run")  # as if Train just finished it
            page.get_by_role("tab", name="Train", exact=True).click()
            page.get_by_role("tab", name="Review", exact=True).click()
            expect(run).to_have_value("new-run", timeout=30_000)
            expect(page.locator("#blk-review-checkpoints").get_by_label("step 12")).to_be_checked()
            page.get_by_role("tab", name="Side by side").click()
            expect(page.get_by_label("Prompt", exact=True).last).to_have_value("a cube")

            copy_trained_run(trained_run, workspace / "runs" / "newer-run")
            page.get_by_role("tab", name="Train", exact=True).click()
            page.get_by_role("tab", name="Review", exact=True).click()
            run.click()
            expect(page.get_by_role("option", name="newer-run")).to_be_visible()  # the list is fresh…
            page.keyboard.press("Escape")
            expect(run).to_have_value("new-run")  # …and the chosen run stays
    finally:
        app.stop()
