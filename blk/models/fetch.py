"""`python -m blk models fetch NAME`: the one command that uses the network.

It downloads a known model's diffusers folders into the local Hugging Face
cache (where `registry.resolve` finds them), using the user's own token for
gated repositories (FLUX.1-dev). The rest of the process stays offline: the hub
is switched on only for the duration of this call, and telemetry stays off.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from blk.errors import UserError
from blk.models.registry import KNOWN_MODELS

# Diffusers-format files only: skip the duplicate single-file checkpoints at the
# repo root, fp16/onnx/openvino/flax variants and pickles.
ALLOW = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.txt", "*/*.model", "*/*.tiktoken"]
IGNORE = ["*.fp16.safetensors", "*onnx*", "*openvino*", "*.msgpack", "*.bin", "*.ckpt"]


@contextlib.contextmanager
def _hub_online():
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def login_token(explicit: str | None) -> str | None:
    """The token this one networked call sends: `--token`, else the user's own login (`hf auth login`'s saved
    token, or HF_TOKEN). The rest of the process never sends one (`offline`: HF_HUB_DISABLE_IMPLICIT_TOKEN),
    so the login is read here, explicitly: without it a gated model could not be fetched after logging in."""
    from huggingface_hub import get_token

    return explicit or get_token()


def fetch(name: str, token: str | None = None) -> Path:
    known = KNOWN_MODELS.get(name)
    if known is None or known.tiny:
        choices = ", ".join(n for n, m in KNOWN_MODELS.items() if not m.tiny)
        raise UserError(f"Nothing to fetch for {name!r}; fetchable models: {choices}.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    with _hub_online():
        try:
            return Path(snapshot_download(known.repo_id, allow_patterns=ALLOW, ignore_patterns=IGNORE,
                                          token=login_token(token)))
        except GatedRepoError:
            raise UserError(
                f"{known.repo_id} is gated: accept its licence on the Hugging Face website, then log in "
                "with `hf auth login` (or set HF_TOKEN) and fetch again."
            ) from None
        except (HfHubHTTPError, OSError) as exc:
            raise UserError(f"Could not download {known.repo_id}: {str(exc).splitlines()[0]}") from None
