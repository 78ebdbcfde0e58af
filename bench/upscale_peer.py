"""The peer row of `bench/upscale.py`: basicsr's RealESRGANer on one image, run in basicsr's own venv.

    /tmp/basicsr-venv/bin/python bench/upscale_peer.py '{"model": ..., "image": ..., "out": ..., ...}'

Imports nothing from blk (this runs in another venv). Builds basicsr's RRDBNet with the sizes read from
the weights (num_feat, num_block, num_grow_ch, input channels → scale 4/2/1, as Real-ESRGAN's x4plus /
x2plus use it), hands it to RealESRGANer(scale, model_path, model, tile, tile_pad, pre_pad, half),
runs `enhance` once untimed (warm-up) and `repeats` times timed, writes the last output as a PNG
(timed apart, as `write_s`) and prints one JSON line: seconds of each timed `enhance`, output size,
load seconds, peak RSS of this process and, on CUDA, torch's peak allocated memory during the runs.

basicsr 1.4.2 imports `torchvision.transforms.functional_tensor`, which torchvision 0.17 removed
(renamed `_functional_tensor`). If that import fails, the new module is registered under the old
name in `sys.modules` before basicsr is imported; nothing in site-packages is changed.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time


def _shim_functional_tensor() -> bool:
    name = "torchvision.transforms.functional_tensor"
    try:
        importlib.import_module(name)
        return False
    except ModuleNotFoundError:
        sys.modules[name] = importlib.import_module("torchvision.transforms._functional_tensor")
        return True


def _net_sizes(state: dict) -> dict:
    """RRDBNet arguments from Real-ESRGAN key names (conv_first, body.N.rdbK.convJ, conv_up1/2, …)."""
    if "conv_first.weight" not in state:
        raise SystemExit("the peer needs Real-ESRGAN's key names (conv_first, body.N.rdbK.convJ, …); "
                         "old-style ESRGAN keys (model.0.weight, …) are not supported here")
    in_ch = state["conv_first.weight"].shape[1]
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("body.") and ".rdb" in k}
    return {"num_in_ch": 3, "num_out_ch": state["conv_last.weight"].shape[0],
            "scale": {3: 4, 12: 2, 48: 1}[in_ch], "num_feat": state["conv_first.weight"].shape[0],
            "num_block": len(blocks), "num_grow_ch": state["body.0.rdb1.conv1.weight"].shape[0]}


def main(job: dict) -> dict:
    import cv2
    import torch

    shimmed = _shim_functional_tensor()
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from realesrgan import RealESRGANer

    device = torch.device(job["device"])
    if device.type == "cpu":
        torch.set_num_threads(job.get("threads") or os.cpu_count() or 1)
    img = cv2.imread(job["image"], cv2.IMREAD_UNCHANGED)
    started = time.perf_counter()
    loaded = torch.load(job["model"], map_location="cpu", weights_only=True)
    state = loaded.get("params_ema", loaded.get("params", loaded))
    sizes = _net_sizes(state)
    upsampler = RealESRGANer(scale=sizes["scale"], model_path=job["model"], model=RRDBNet(**sizes),
                             tile=job["tile"], tile_pad=job["tile_pad"], pre_pad=job["pre_pad"],
                             half=job["half"], device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    load_s = time.perf_counter() - started

    upsampler.enhance(img, outscale=sizes["scale"])  # warm-up: kernels, allocator, caches
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(job["repeats"]):
        t = time.perf_counter()
        out, _mode = upsampler.enhance(img, outscale=sizes["scale"])  # ends in .cpu(): synchronised
        seconds.append(time.perf_counter() - t)
    cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    t = time.perf_counter()
    cv2.imwrite(job["out"], out)  # as its inference script saves a result (PNG)
    write_s = time.perf_counter() - t
    return {"seconds": seconds, "write_s": write_s, "width": out.shape[1], "height": out.shape[0], "load_s": load_s,
            "rss_mb": _peak_rss_mb(), "cuda_mb": cuda_mb,
            "tiles": -(-img.shape[1] // job["tile"]) * -(-img.shape[0] // job["tile"]) if job["tile"] else 1,
            "shimmed_functional_tensor": shimmed, "net": sizes,
            "versions": {"torch": torch.__version__, "basicsr": _version("basicsr"),
                         "realesrgan": _version("realesrgan")}}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: not inherited from the parent, unlike ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
