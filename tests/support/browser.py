"""Headless Debian Chromium driven by Playwright (Playwright cannot download a browser here)."""

import contextlib
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@contextlib.contextmanager
def browser_page(width=1300, height=1100):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (python3 studio.py test installs it where it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@contextlib.contextmanager
def app_log_on_failure(output: Path, lines: int = 60):
    """On a failure inside, print the app's last output lines and the busiest processes (pytest shows them with
    the failure): a browser step that timed out says what the app and the machine were doing meanwhile."""
    import subprocess

    try:
        yield
    except BaseException:
        tail = output.read_text(errors="replace").splitlines()[-lines:] if output.exists() else []
        print("---- the app's output, last lines ----", *tail, sep="\n")
        busy = subprocess.run(["ps", "-eo", "pid,pcpu,rss,etimes,args", "--sort=-pcpu"], capture_output=True,
                              text=True).stdout.splitlines()[:10]
        print("---- the busiest processes ----", *(line[:200] for line in busy), sep="\n")
        raise


def edit_grid_cell(grid, cell, text: str, tries: int = 3) -> None:
    """Double-click a cell of a Gradio grid, type `text` and press Enter. Waits for the cell's editor to show: until
    it opens, the grid's first input is its hidden CSV upload, and on a busy machine the editor took over a minute
    once (a CI run filled the upload instead)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    editor = grid.locator("textarea, input:not([type=file])").filter(visible=True).first
    for attempt in range(tries):
        cell.dblclick()
        try:
            editor.wait_for(state="visible", timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
    editor.fill(text)
    editor.press("Enter")
    from playwright.sync_api import expect

    expect(cell).to_contain_text(text)  # committed to the grid before a Save reads it
