"""BLK Studio's Gradio interface: one module per tab, plus the theme.

The UI builds components and wires them to the engine (`blk`). It holds no
model logic: every computation is a call into `blk`, which the CLI shares.
Importing this package first makes `import gradio` about 3 s faster (see
`ui.gradio_import`).
"""

from ui import gradio_import as _gradio_import

_gradio_import.install()
