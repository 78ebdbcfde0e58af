"""Matting: cut a generated subject off its flat background with BiRefNet (through rembg).

rembg downloads its weights on first use, which this studio never does, so
matting runs only when both are staged by hand: the `rembg` package (with
`onnxruntime`) in the app's environment, and `birefnet-general.onnx` in
`workspace/models/matting/`. We point rembg there (`U2NET_HOME`) and only
ever open a file that is already present.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

from blk.commands import pip_install
from blk.errors import UserError
from blk.workspace import Workspace

MODEL_FILE = "birefnet-general.onnx"
MODEL_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/BiRefNet-general-epoch_244.onnx"


def matting_folder(workspace: Workspace) -> Path:
    return workspace.models / "matting"


def unavailable_reason(workspace: Workspace) -> str | None:
    """None when matting can run; otherwise one sentence saying how to stage it."""
    from blk.models.device import cuda_device_count

    missing_package = importlib.util.find_spec("rembg") is None or importlib.util.find_spec("onnxruntime") is None
    model = matting_folder(workspace) / MODEL_FILE
    runtime = "onnxruntime-gpu" if cuda_device_count() else "onnxruntime"  # the plain one runs on the CPU only
    if missing_package and not model.is_file():
        return (f"Matting needs the rembg and onnxruntime packages in the app's environment "
                f"(`{pip_install('rembg', runtime)}`) and BiRefNet's weights at {model} "
                f"(download {MODEL_URL} on a connected machine and rename it).")
    if missing_package:
        return f"Matting needs the rembg and onnxruntime packages: `{pip_install('rembg', runtime)}`."
    if not model.is_file():
        return f"Matting needs BiRefNet's weights at {model} (download {MODEL_URL} on a connected machine)."
    return None


def matte(workspace: Workspace, image):
    """The image with its background made transparent (RGBA, straight alpha)."""
    reason = unavailable_reason(workspace)
    if reason:
        raise UserError(reason)
    from rembg import remove

    return remove(image.convert("RGB"), session=_session(matting_folder(workspace)))


_sessions: dict[tuple, object] = {}
_sessions_lock = threading.Lock()


def release_sessions() -> None:
    """Close BiRefNet's session (with onnxruntime-gpu it holds GPU memory); the next cut-out opens it again."""
    with _sessions_lock:
        _sessions.clear()


def _session(folder: Path):
    """BiRefNet's ONNX session, opened once per weights file (it is about 1 GB: opening it for every image
    made a batch of cut-outs mostly loading)."""
    model = folder / MODEL_FILE
    key = (str(model), model.stat().st_mtime_ns)
    with _sessions_lock:
        if key not in _sessions:
            os.environ["U2NET_HOME"] = str(folder)  # rembg reads it; the file is already there
            os.environ.setdefault("MODEL_CHECKSUM_DISABLED", "1")  # no download, so nothing to verify against
            from rembg import new_session

            _sessions.clear()
            _sessions[key] = new_session("birefnet-general")
        return _sessions[key]
