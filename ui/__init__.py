"""BLK Studio's Gradio interface: one module per tab, plus the theme.

The UI builds components and wires them to the engine (`blk`). It holds no
model logic: every computation is a call into `blk`, which the CLI shares.
"""
