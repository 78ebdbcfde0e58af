"""In a real browser at 900 and 1300 px: the Caption tab's filter row keeps its checkboxes' labels (they vanished
at 900 px) and its grid's headers break between words only ("sta/tus"); Upscale's sliders stay inside their
column (Pass C's end was cut off); a long run name shows its end (the time that tells runs apart) and the
training samples keep readable captions; the models table's names, families and statuses are whole words
("RealESRGAN_x4plus.p/th", "upscal/er" were cut). And a screen reader hears "Done" when an action finishes, not Gradio's
missing "common.complete"."""

from playwright.sync_api import expect

from tests.support.browser import browser_page, screenshot
from tests.support.running_app import RunningApp

HEADERS = """() => [...document.querySelectorAll('#blk-caption-grid th .header')].map(span => {
  const lines = span.getBoundingClientRect().height / parseFloat(getComputedStyle(span).lineHeight);
  return [span.textContent.trim(), Math.round(lines)]; })"""
LABELS = """names => names.map(name => {
  const label = [...document.querySelectorAll('label.checkbox-container')].find(l => l.textContent.trim() === name);
  const text = label.querySelector('span'), block = label.closest('.block');
  const t = text.getBoundingClientRect(), b = block.getBoundingClientRect();
  return [name, t.width > 20 && t.left >= b.left - 0.5 && t.right <= b.right + 0.5]; })"""
SLIDERS = """() => [...document.querySelectorAll('input[type=range]')].filter(r => r.offsetParent).map(range => {
  const block = range.closest('.block'), b = block.getBoundingClientRect();
  const parts = [...block.querySelectorAll('input, button, .min_value, .max_value')].map(e => e.getBoundingClientRect());
  let e = block, shown = b;  // what the enclosing boxes leave visible of the block
  while ((e = e.parentElement)) { if (getComputedStyle(e).overflowX !== 'visible') {
    const r = e.getBoundingClientRect(); shown = {left: Math.max(shown.left, r.left), right: Math.min(shown.right, r.right)}; } }
  const whole = parts.every(r => r.width === 0 || (r.left >= shown.left - 0.5 && r.right <= shown.right + 0.5));
  return [block.querySelector('label, span')?.textContent.trim(), whole]; })"""


RUN_NAME = "conceptor-flux-dev-inkcats-20261126-192105"
RUN_INPUT = """() => { const input = [...document.querySelectorAll('.blk-run-name input')].find(e => e.offsetParent);
  return [input.value, getComputedStyle(input).direction, input.scrollWidth > input.clientWidth]; }"""
THUMB_COLUMNS = """() => { const items = [...document.querySelectorAll('#blk-samples .thumbnail-item, #blk-samples button')]
  .filter(e => e.querySelector('img')).map(e => Math.round(e.getBoundingClientRect().top));
  return items.filter(top => top === items[0]).length; }"""
MODEL_CELLS = """() => [...document.querySelectorAll('#blk-models .virtual-row')].map(row =>
  [...row.querySelectorAll('.body-cell .text')].slice(0, 3).map(span => [span.textContent.trim(),
    Math.round(span.getBoundingClientRect().height / parseFloat(getComputedStyle(span).lineHeight))]))"""


def test_caption_and_upscale_read_at_900_and_1300_px(tmp_path):
    from tests.test_browser_train import finished_demo_run

    finished_demo_run(tmp_path / "workspace")
    run = tmp_path / "workspace" / "runs" / "demo-run"
    for step in range(1, 6):  # five samples: more than a row
        (run / "samples" / f"step-00000{step}-0.png").write_bytes((run / "samples" / "step-000006-0.png").read_bytes())
    with open(run / "events.jsonl", "a") as events:
        events.writelines(f'{{"t": 1100.0, "step": {step}, "kind": "sample", "paths": '
                          f'["samples/step-00000{step}-0.png"], "prompts": ["a cube"]}}\n' for step in range(1, 6))
    run.rename(run.with_name(RUN_NAME))
    app = RunningApp(tmp_path / "workspace", tmp_path / "net.jsonl")
    try:
        for width in (900, 1300):
            with browser_page(width=width, height=1000) as page:
                page.goto(app.url)
                expect(page.locator("#blk-caption-grid th").first).to_be_visible(timeout=30_000)
                headers = dict(page.evaluate(HEADERS))
                assert headers["image"] == headers["status"] == headers["tokens"] == 1, (width, headers)
                assert headers["over budget"] <= 2, (width, headers)  # two words: one break at most
                labels = dict(page.evaluate(LABELS, ["Regex", "Descending"]))
                assert all(labels.values()), (width, labels)
                screenshot(page, f"caption-tab-{width}")

                page.get_by_role("tab", name="Upscale").click()
                expect(page.get_by_text("Pass C denoise")).to_be_visible(timeout=30_000)
                sliders = page.evaluate(SLIDERS)
                assert len(sliders) >= 6 and all(inside for _, inside in sliders), (width, sliders)
                screenshot(page, f"upscale-tab-{width}")

                page.get_by_role("tab", name="Train").click()
                expect(page.locator("#blk-samples img").first).to_be_visible(timeout=30_000)
                value, direction, cut = page.evaluate(RUN_INPUT)
                assert value == RUN_NAME and direction == "rtl"  # when cut, cut at the start
                assert cut == (width == 900), (width, cut)
                assert page.evaluate(THUMB_COLUMNS) == (3 if width == 900 else 4), width

                page.get_by_role("tab", name="Models & Settings").click()
                expect(page.locator("#blk-models .virtual-row").first).to_be_visible(timeout=30_000)
                cells = [cell for row in page.evaluate(MODEL_CELLS) for cell in row]
                names = [text for text, _ in cells]
                assert "RealESRGAN_x4plus.pth" in names and "upscaler" in names and "missing" in names, cells
                assert all(lines == 1 for text, lines in cells if "/" not in text), (width, cells)  # whole names
    finally:
        app.stop()


ANNOUNCED = """() => { window.blkAnnounced = [];
  new MutationObserver(() => document.querySelectorAll('[aria-live]').forEach(e => {
    const text = e.textContent.trim(); if (text) window.blkAnnounced.push(text); }))
  .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""


def test_a_finished_action_is_announced_in_words(tmp_path):
    app = RunningApp(tmp_path / "workspace", tmp_path / "net.jsonl")
    try:
        with browser_page() as page:
            page.goto(app.url)
            expect(page.locator("#blk-caption-grid th").first).to_be_visible(timeout=30_000)
            page.evaluate(ANNOUNCED)
            page.get_by_role("button", name="Show", exact=True).click()
            # Gradio spaces its announcements 5 s apart
            page.wait_for_function("() => window.blkAnnounced.some(t => t !== 'Loading')", timeout=20_000)
            announced = page.evaluate("() => window.blkAnnounced")
            assert "Done" in announced and not [t for t in announced if "common." in t], announced
    finally:
        app.stop()
