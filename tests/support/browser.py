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
