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
    missing_package = importlib.util.find_spec("rembg") is None or importlib.util.find_spec("onnxruntime") is None
    model = matting_folder(workspace) / MODEL_FILE
    if missing_package and not model.is_file():
        return (f"Matting needs the rembg and onnxruntime packages in the app's environment "
                f"(`{pip_install('rembg', 'onnxruntime')}`) and BiRefNet's weights at {model} "
                f"(download {MODEL_URL} on a connected machine and rename it).")
    if missing_package:
        return f"Matting needs the rembg and onnxruntime packages: `{pip_install('rembg', 'onnxruntime')}`."
    if not model.is_file():
        return f"Matting needs BiRefNet's weights at {model} (download {MODEL_URL} on a connected machine)."
    return None


def matte(workspace: Workspace, image):
    """The image with its background made transparent (RGBA, straight alpha)."""
    reason = unavailable_reason(workspace)
    if reason:
        raise UserError(reason)
    os.environ["U2NET_HOME"] = str(matting_folder(workspace))  # rembg reads it; the file is already there
    os.environ.setdefault("MODEL_CHECKSUM_DISABLED", "1")  # no download, so nothing to verify against
    from rembg import new_session, remove

    return remove(image.convert("RGB"), session=new_session("birefnet-general"))
