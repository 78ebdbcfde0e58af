"""Theme with system fonts only: no web font is fetched from anywhere."""

import gradio as gr

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]

CSS = """
.blk-banner { padding: 0.5em 1em; border-radius: 6px; background: var(--block-background-fill); }
.blk-soon { opacity: 0.85; }
/* transparent assets over a checkerboard: the PNGs themselves stay untouched */
.blk-checker img { background-color: #fff;
  background-image: linear-gradient(45deg, #ccc 25%, transparent 25%), linear-gradient(-45deg, #ccc 25%, transparent 25%),
    linear-gradient(45deg, transparent 75%, #ccc 75%), linear-gradient(-45deg, transparent 75%, #ccc 75%);
  background-size: 16px 16px; background-position: 0 0, 0 8px, 8px -8px, -8px 0; }
/* the picture's own box, so that the checkerboard is behind its pixels only: in a box fitted to the frame, the
   margins around a wide opaque image showed the checkerboard and read as transparency */
.blk-checker .image-frame img { width: auto !important; height: auto !important; max-width: 100%; max-height: 100%;
  object-fit: contain; margin: auto; }
/* galleries of training samples keep their columns: Gradio gives fewer images fewer, wider columns, which blew
   a single 64 px sample up to the gallery's full width */
.blk-thumbs .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important;
  grid-auto-rows: auto !important; }
.blk-thumbs .gallery-item { aspect-ratio: 1; }
#blk-samples .grid-wrap { min-height: 0 !important; }
/* a row of checkboxes: each as wide as its label, and the row wraps rather than squeezing (or clipping) them */
.blk-switches, .blk-switches > .form { flex-wrap: wrap; }
.blk-switches .form > .block { flex: 1 0 auto !important; width: max-content !important; min-width: 0 !important; }
.blk-switches .checkbox-container { width: max-content; }
/* rows of fields that wrap in a narrow window instead of squeezing each field (labels vanished, sliders were cut) */
.blk-wrap, .blk-wrap > .form { flex-wrap: wrap !important; }
.blk-wrap .form > .block:has(.checkbox-container) { min-width: max-content !important; }
.blk-wrap > .form { background: var(--block-background-fill) !important; }
/* the captions grid: headers break between words only ("sta/tus" read as two), and its narrow columns give
   the lock marks of read-only columns' room to their names */
#blk-caption-grid th .header { word-break: normal !important; overflow-wrap: normal !important; }
#blk-caption-grid th .header-icons [aria-label="Static column"] { display: none; }
/* the models table in the text font (Gradio sets tables in monospace, which broke "RealESRGAN_x4plus.pth" mid-name
   in a narrow window); paths and commands still wrap where they must */
#blk-models .text { font-family: var(--font) !important; }
#blk-models th .header { word-break: normal !important; overflow-wrap: normal !important; }
/* a run's name, cut at its start rather than its end when the field is narrow: the time it ends with is what
   tells a dataset's runs apart ("…inkcats-20261126-192105", not "conceptor-flux-dev-inkcats-2…") */
.blk-run-name input { direction: rtl; text-align: left; text-overflow: ellipsis; padding-right: 28px !important; }
.blk-run-name input:focus { direction: ltr; }
/* training samples: three columns in a narrow window, so that their captions ("step 60: …") stay readable */
@media (max-width: 1100px) { .blk-thumbs .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; } }
/* result galleries: the whole of each picture, not the top of it: Gradio kept the gallery at a fixed height
   while a single result grew as wide as the gallery, so a square sketch showed cut to a wide strip */
.blk-whole .grid-wrap.fixed-height { height: auto !important; max-height: 80vh; }
/* Blind A/B: both pictures as wide as their half (a small pair was judged at its own few pixels), never taller
   than the window */
.blk-judge .image-frame { width: 100% !important; height: auto !important; }
.blk-judge img { width: 100% !important; height: auto !important; max-height: 75vh; object-fit: contain; }
"""


def screen_reader_words() -> gr.I18n:
    """Words Gradio 6.31 announces to screen readers but lacks in its English strings: a finished action
    was read out as "common.complete". Other languages fall back to these."""
    return gr.I18n(en={"common.complete": "Done", "common.error": "Error"})


def studio_theme() -> gr.themes.Base:
    return gr.themes.Default(primary_hue="slate", neutral_hue="zinc", font=SYSTEM_FONTS, font_mono=MONO_FONTS)


# Keyboard: Alt+← / Alt+→ step through images in the Caption tab's large view.
HEAD = """
<script>
document.addEventListener('keydown', (event) => {
  if (!event.altKey) return;
  const id = {ArrowRight: 'blk-next', ArrowLeft: 'blk-prev'}[event.key];
  const button = id && document.getElementById(id);
  if (button) { event.preventDefault(); button.click(); }
});
</script>
"""
