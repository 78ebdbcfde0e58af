"""Device, dtype and memory policy, in one place.

CUDA (bf16) > Apple MPS (fp16) > CPU (fp32). On a multi-GPU workstation the
user picks `cuda:N`. Memory modes trade speed for memory and are options of a
job, never silent: model CPU offload, VAE tiling, int8 weights (optimum-quanto).
Speed options ride along in the same dataclass (`blk.models.speed`): regional
compilation of the denoiser and the attention backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from blk.errors import UserError


@dataclass(frozen=True)
class MemoryOptions:
    cpu_offload: bool = False  # keep weights in RAM, move each model to the GPU only while it runs
    vae_tiling: bool = False  # decode big images in tiles
    int8: bool = False  # quantize the denoiser's weights to int8 (optimum-quanto)
    compile: bool = False  # torch.compile the denoiser's repeated blocks (first image slower, later ones faster)
    attention: str = ""  # diffusers attention backend for Flux ("" = its default; blk.models.speed.ATTENTION_BACKENDS)


def available_devices() -> list[str]:
    """Devices this machine offers, best first, e.g. ['cuda:0', 'cuda:1', 'cpu']."""
    import torch

    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def cuda_device_count() -> int:
    """How many CUDA GPUs this process may use, without importing torch (the app and the UI ask this at
    startup): NVIDIA's management library through ctypes, as torch itself can, honouring
    CUDA_VISIBLE_DEVICES; 0 where there is no NVIDIA driver."""
    import ctypes
    import os

    try:
        nvml = ctypes.CDLL("nvml.dll" if os.name == "nt" else "libnvidia-ml.so.1")
    except OSError:
        return 0
    count = ctypes.c_uint(0)
    try:
        if nvml.nvmlInit_v2() != 0:
            return 0
        try:
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return 0
        finally:
            nvml.nvmlShutdown()
    except AttributeError:  # a library without these functions
        return 0
    visible = visible_gpus()
    return count.value if visible is None else min(len(visible), count.value)


def visible_gpus() -> list[str] | None:
    """The GPUs CUDA_VISIBLE_DEVICES lets this process see, in its order (None when it is not set): cuda:N is
    the N-th of these. CUDA stops reading at the first empty or negative entry."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    listed = []
    for part in visible.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        listed.append(part)
    return listed


def pick_device(preference: str = "auto") -> str:
    """Resolve 'auto' to the best device; check that an explicit choice exists."""
    devices = available_devices()
    if preference in ("", "auto"):
        return devices[0]
    wanted = "cuda:0" if preference == "cuda" else preference
    if wanted not in devices:
        raise UserError(f"Device {preference} is not available here; choose one of {', '.join(devices)}.")
    return wanted


def pick_dtype(device: str):
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if has_native_bf16(device) else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def has_native_bf16(device: str) -> bool:
    """Whether this GPU computes in bfloat16 itself (NVIDIA Ampere and newer: compute capability 8+).
    Not `torch.cuda.is_bf16_supported()`: by default it also says yes when bfloat16 is only emulated
    (Pascal, Volta, Turing: slow), and it asks about the current device, not this one."""
    import torch

    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def training_dtype(device: str):
    """`pick_dtype` for training, refusing a CUDA GPU without bfloat16 (older than Ampere): float16 there would
    train without loss scaling (small gradients vanish) and SDXL's VAE gives NaN latents in float16."""
    import torch

    from blk.errors import UserError

    dtype = pick_dtype(device)
    if device.startswith("cuda") and dtype == torch.float16:
        name = torch.cuda.get_device_name(torch.device(device))
        raise UserError(f"{name} has no bfloat16, which training needs (in float16 small gradients vanish and "
                        "SDXL's VAE gives NaN latents): train on a GPU from NVIDIA's Ampere generation or newer "
                        "(RTX 30xx, A100, H100…), or set device: cpu.")
    return dtype


def avoid_cudnn_attention_backward() -> None:
    """Training only: keep PyTorch's SDPA off the cuDNN kernel, on flash / memory-efficient attention.

    On an H200 with torch 2.11, cuDNN attention's backward at Flux's shapes failed ("mha_graph.execute …
    is_good()") or corrupted memory ("illegal memory access"), in our trainer and in diffusers' own
    LoRA loop alike; with it off, both trained (FLUX.1-dev shapes, 1024 px: 1.42 s/step). Inference
    never runs the backward, so Sketch keeps whichever kernel is fastest. Per process: the trainer
    runs in a process of its own.
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def describe(device: str) -> str:
    """A human label, e.g. 'cuda:0 — NVIDIA RTX A6000, 48 GB'."""
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(int(device.split(":")[1]))
        return f"{device} — {props.name}, {props.total_memory / 2**30:.0f} GB"
    if device == "mps":
        return "mps — Apple GPU"
    return "cpu — slow, but every feature works"


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    text = str(error).lower()
    # CUDA says "out of memory"; the CPU allocator says "can't allocate memory"
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text or \
        "can't allocate memory" in text


def free_device_memory() -> None:
    """Give the memory a failed step held back to the device (call it outside the `except` that caught the
    failure: its traceback pins the tensors). An uninitialised CUDA is left alone (emptying its cache would
    start a context)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
