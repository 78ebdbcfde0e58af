"""Privacy switches that libraries read once, at import time.

`blk/__init__` calls `enforce()` so that importing anything from the engine first
makes the process offline: Hugging Face, Gradio and friends never phone home and
never download. `python -m blk models fetch` is the one explicit exception; it
turns the hub back on for its own call only (see `blk.models.fetch`).
"""

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    # vLLM finds "its own address" by pointing a UDP socket at 8.8.8.8 unless told: it runs on loopback here
    "VLLM_HOST_IP": "127.0.0.1",
    "BITSANDBYTES_NOWELCOME": "1",
}


# Loggers whose advice would take the studio online: bitsandbytes, imported by diffusers and transformers when
# present, warns on CPUs with AVX-512 BF16 that it could not fetch a kernel and asks for `pip install kernels`,
# a package that downloads kernels from the Hugging Face Hub at run time.
ONLINE_ADVICE_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def enforce() -> None:
    """Set every offline/no-telemetry variable, overriding what the shell had; quiet advice to go online."""
    import logging

    os.environ.update(OFFLINE_ENV)
    for name in ONLINE_ADVICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
