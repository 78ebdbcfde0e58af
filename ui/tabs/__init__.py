"""One module per tab; each exposes `build(context)` to be called inside a gr.Tab."""
