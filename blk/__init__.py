"""BLK Studio engine: everything that computes. Never imports gradio.

Importing this package makes the process offline before any library can read
its settings (see `blk.offline`). Keep this file free of heavy imports: the app
must start in seconds, and torch/diffusers load only when a job needs them.
"""

from blk import offline as _offline

_offline.enforce()

__version__ = "0.1.0"
