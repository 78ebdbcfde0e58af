"""Dataset layer: image files, sidecar captions with history, thumbnails, checks.

- `images`: safe opening of any image a scan may meet (orientation, modes, bit depth, bombs).
- `scan`: walk a dataset folder into records.
- `captions`: the caption store (atomic, conflict-checked, append-only history).
- `thumbnails`: small previews cached by content hash.
- `check`: the `dataset check` report.
"""
