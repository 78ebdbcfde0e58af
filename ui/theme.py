"""Theme with system fonts only: no web font is fetched from anywhere."""

import gradio as gr

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]

CSS = """
.blk-banner { padding: 0.5em 1em; border-radius: 6px; background: var(--block-background-fill); }
.blk-soon { opacity: 0.85; }
"""


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
