"""Speed options of a loaded denoiser: regional compilation and the attention kernel.

Both are options of a load (`MemoryOptions.compile`, `MemoryOptions.attention`), never silent (compile
is switched on and off in place, on the loaded weights: `PipelineCache`), and both keep the images: the
same seed gives the same image as without them, within the rounding of the dtype.

*Compile* is diffusers' regional compilation (`ModelMixin.compile_repeated_blocks`): `torch.compile`
on each of the denoiser's repeated blocks (Flux's `FluxTransformerBlock` and
`FluxSingleTransformerBlock`, SDXL's `BasicTransformerBlock`); every block of a kind shares one
compiled graph, so compiling costs two block graphs, not the whole model. LoRAs stay peft adapters on
top and stay correct under compile: TorchDynamo guards every Python value a graph was traced with
(which adapters exist and are active, their modules), so adding, removing or switching LoRAs
compiles again (the first image after such a change is slower) and never reuses a stale graph.
Strengths do not compile again: after every change the adapters' scalings become tensors (as peft's
own hot-swap does, `peft.utils.hotswap`), which a graph reads as inputs instead of baking them in.
Past TorchDynamo's recompile limit (8 compiled variants per block kind in one process: LoRA stacks,
image sizes) further variants run uncompiled: slower, same images.

Not used: QKV fusion (`fuse_qkv_projections`). It adds a fused copy of every attention's q/k/v
weights (2.1 G parameters for FLUX.1-dev: about 4 GB more in bf16), cannot fuse int8 (quanto)
weights, and the fused projection bypasses any LoRA on to_q/to_k/to_v — the studio's LoRAs are
exactly there. `bench/generate.py` measures it on the plain pipeline only, for reference.

*Attention* picks diffusers' attention backend (`ModelMixin.set_attention_backend`, Flux only: SDXL's
UNet attention does not dispatch through it). Only backends that need no download are offered, and a
choice is tried on a small input on the device before it is used.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

# diffusers' attention backends that run from local packages alone, in the order a benchmark tries them;
# "native" is torch's scaled_dot_product_attention with torch's own kernel choice (diffusers' default).
# Any other local backend of diffusers (e.g. "_native_math") is accepted by name too. The *_hub
# backends download kernels at run time: never accepted.
ATTENTION_BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3",
                      "sage", "xformers")


def compile_problem(device: str) -> str | None:
    """Why compile cannot run on this device here, as one sentence; None when it can.

    Inductor writes C++ for the CPU and Triton kernels for NVIDIA GPUs; Triton builds a small C launcher
    at run time, so both need a C compiler on the machine.
    """
    import importlib.util
    import os
    import shutil

    import torch

    try:
        torch._dynamo.is_dynamo_supported()
    except RuntimeError as exc:
        return f"Compile is not available with this Python and PyTorch ({str(exc).splitlines()[0]}); turn it off."
    if device == "cpu":
        from torch._inductor import cpp_builder, exc as inductor_exc

        try:
            cpp_builder.get_cpp_compiler()
        except (inductor_exc.InvalidCxxCompiler, RuntimeError):
            return ("Compile needs a C++ compiler on this machine and none was found (install g++ or clang++, "
                    "e.g. `sudo apt install g++`), or turn compile off.")
    elif device.startswith("cuda"):
        if importlib.util.find_spec("triton") is None:
            return "Compile on an NVIDIA GPU needs Triton (part of PyTorch's CUDA packages), which is missing; " \
                   "turn compile off."
        if not (os.environ.get("CC") or any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))):
            return ("Compile on an NVIDIA GPU needs a C compiler for Triton and none was found (install gcc, "
                    "e.g. `sudo apt install gcc`), or turn compile off.")
    return None


# What `torch.compile` gets for each repeated block: Inductor's defaults. `bench/generate.py --only tuned`
# measures the alternatives below on a GPU; the default changes only when a measurement there says so.
COMPILE_SETTINGS: dict = {}

# Alternatives the bench tries. "tuned": the Inductor flags of PyTorch's flux-fast recipe (coordinate-descent
# tuning of the generated kernels; no epilogue fusion, so matmuls stay cuBLAS calls). "autotune": the same
# plus benchmarking Triton matmul templates against cuBLAS at compile time (minutes more on the first
# image): mode "max-autotune-no-cudagraphs" with the flags. No CUDA graphs: a graph would pin the LoRA
# scalings' addresses.
TUNED_INDUCTOR = {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True,
                  "epilogue_fusion": False}
COMPILE_ALTERNATIVES = {
    "tuned": {"options": TUNED_INDUCTOR},
    "autotune": {"options": {**TUNED_INDUCTOR, "max_autotune": True}},  # torch.compile takes mode or options
}


def compile_denoiser(denoiser, settings: dict | None = None) -> None:
    """Regional compilation of the denoiser's repeated blocks; compiling happens at the first call.

    Inference only: the weights stop requiring gradients, so that loading a LoRA (peft freezes the base
    weights) does not by itself force a new graph. `settings` are `torch.compile` keywords (`mode`,
    `options`); `COMPILE_SETTINGS` when not given.
    """
    denoiser.requires_grad_(False)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found" on a CPU
    settings = COMPILE_SETTINGS if settings is None else settings
    # copies: torch.compile keeps the options dict it is given
    denoiser.compile_repeated_blocks(**{key: dict(value) if isinstance(value, dict) else value
                                        for key, value in settings.items()})


def is_compiled(denoiser) -> bool:
    return any(getattr(module, "_compiled_call_impl", None) is not None for module in denoiser.modules())


def drop_compiled_calls(model) -> None:
    """Every module of `model` back to eager execution (`nn.Module.compile` keeps the compiled call in
    `_compiled_call_impl`); also for networks without LoRAs (`blk.upscale.compiled_network`)."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


def uncompile(denoiser) -> None:
    """Back to eager execution, computing exactly as a fresh load does (`drop_compiled_calls`; the LoRA
    scalings that `after_adapter_change` made tensors become floats)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    drop_compiled_calls(denoiser)
    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer) and isinstance(getattr(module, "scaling", None), dict):
            for name, value in module.scaling.items():
                if not isinstance(value, (int, float)):
                    module.scaling[name] = float(value)


def after_adapter_change(denoiser, device: str) -> None:
    """Under compile, after LoRAs were loaded, removed or rescaled: freeze new adapter weights and turn
    the adapters' scalings into float32 tensors on the device the model runs on (with CPU offload the
    weights wait in RAM), so a strength change reuses the compiled graphs."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    denoiser.requires_grad_(False)
    for module in denoiser.modules():
        if not isinstance(module, BaseTunerLayer) or not isinstance(getattr(module, "scaling", None), dict):
            continue
        for name, value in module.scaling.items():
            if isinstance(value, (int, float)):
                module.scaling[name] = torch.tensor(float(value), dtype=torch.float32, device=device)


def is_compile_error(error: BaseException) -> bool:
    """A failure of TorchDynamo, Inductor or Triton while compiling (not of the model itself)."""
    import torch._dynamo.exc

    if isinstance(error, torch._dynamo.exc.TorchDynamoException):
        return True
    return any(cls.__module__.startswith(("torch._inductor", "triton")) for cls in type(error).__mro__)


def fallback_notice(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    return f"Compile failed on this machine ({first}); the model runs uncompiled (same images, usual speed)."


@contextmanager
def _quiet_diffusers():
    """`set_attention_backend` warns at every call that backends are experimental."""
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def attention_problem(name: str, device: str, dtype) -> str | None:
    """Why attention backend `name` cannot run on this device in this dtype (one sentence); None when it can.

    The backend runs once on a small input (Flux's head size, 128), so a kernel the GPU lacks is found
    here, not in the middle of an image.
    """
    import torch
    from diffusers.models.attention_dispatch import (AttentionBackendName, _check_attention_backend_requirements,
                                                     dispatch_attention_fn)

    known = {backend.value for backend in AttentionBackendName if not backend.value.endswith("_hub")}
    if name not in known:
        return f"Unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_BACKENDS)}."
    backend = AttentionBackendName(name)
    try:
        _check_attention_backend_requirements(backend)
        q = torch.randn(1, 64, 2, 128, device=device, dtype=dtype)
        with torch.no_grad():
            out = dispatch_attention_fn(q, q, q, backend=backend)
        if not bool(torch.isfinite(out).all()):
            return f"Attention backend {name} gives non-finite values on {device}."
    except Exception as exc:  # noqa: BLE001  (whatever the kernel says: not usable here)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return f"Attention backend {name} does not run on {device} in {str(dtype).replace('torch.', '')} ({reason})."
    return None


def usable_attention_backends(device: str, dtype) -> list[str]:
    return [name for name in ATTENTION_BACKENDS if attention_problem(name, device, dtype) is None]


def set_attention(denoiser, name: str) -> None:
    """Make the denoiser's attention use backend `name`, leaving every other model on the default.

    diffusers' `set_attention_backend` also changes its process-wide default backend; it is put back.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    default = _AttentionBackendRegistry._active_backend
    try:
        with _quiet_diffusers():
            denoiser.set_attention_backend(name)
    finally:
        _AttentionBackendRegistry.set_active_backend(default)
