"""Captioning throughput: the vLLM server (concurrent) against transformers (one by one),
with K = 0 and K = 3 few-shot examples, same model, same images, side by side in one run.

    python bench/caption.py [--model tiny-vlm|FOLDER] [--images 16] [--tokens 32]

Run it with the app's environment (`.venv/bin/python bench/caption.py`); it starts its own
vLLM server from the vLLM environment. On a CPU with the tiny model this is a smoke run; on a
GPU with a real model (e.g. Qwen2.5-VL-7B-Instruct) the targets are: vLLM ≥ 10× transformers,
and K = 3 costing ≤ 1.3× K = 0 per image thanks to prefix caching.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline first)


def make_dataset(folder: Path, count: int) -> list[str]:
    import numpy as np
    from PIL import Image

    from blk.data.captions import CaptionStore

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(folder / f"target {i:03d}.png")
    store = CaptionStore(folder)
    examples = []
    for i in range(3):
        name = f"example {i}.png"
        Image.fromarray(rng.integers(0, 255, (512, 384, 3), dtype=np.uint8)).save(folder / name)
        saved = store.save(name, f"an ink study number {i}, fine hatching, soft light", "", source="human")
        store.approve(name, saved.hash)
        examples.append(name)
    return examples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-vlm")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    from blk.caption.backends import ServerBackend, TransformersBackend
    from blk.caption.batch import caption_dataset
    from blk.caption.job import resolve_vlm
    from blk.caption.server import ManagedServer, ServerConfig, find_vllm_python
    from blk.caption.style import CaptionStyle, Example, Sampling
    from blk.models.device import available_devices, describe
    from blk.workspace import Workspace

    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-caption-"))
    workspace = Workspace(scratch / "workspace")
    folder = scratch / "dataset"
    examples = make_dataset(folder, args.images)
    model = resolve_vlm(args.model, workspace)
    device = available_devices()[0]
    gpu = device.startswith("cuda")
    sampling = Sampling(temperature=0.0, max_tokens=args.tokens)
    styles = {k: CaptionStyle(examples=[Example(image=e, caption="an ink study, fine hatching, soft light")
                                        for e in examples[:k]], sampling=sampling) for k in (0, 3)}

    server = ManagedServer(ServerConfig(model=model, python=find_vllm_python(), max_images=4, max_num_seqs=16,
                                        cpu=not gpu), scratch / "server").start()
    rates: dict[tuple[str, int], float] = {}
    try:
        backends = {"vllm": ServerBackend(server.url, max_concurrency=16, ignore_eos=True),
                    "transformers": TransformersBackend(model, device, ignore_eos=True)}
        for name, backend in backends.items():
            for k, style in styles.items():
                caption_dataset(folder, style, backend, mode="selected", selected=["target 000.png"])  # warm up
                result = caption_dataset(folder, style, backend, mode="all")
                assert not result.failed, result.failed
                rates[(name, k)] = result.images_per_second
    finally:
        server.stop()

    print(f"model {args.model} on {describe(device)}; {args.images} images, {args.tokens} tokens each")
    print(f"{'examples':>8} {'vLLM img/s':>11} {'transformers img/s':>19} {'vLLM / transformers':>20}")
    for k in (0, 3):
        v, t = rates[("vllm", k)], rates[("transformers", k)]
        print(f"{k:>8} {v:>11.2f} {t:>19.2f} {v / t:>20.1f}")
    for name in ("vllm", "transformers"):
        cost = rates[(name, 0)] / rates[(name, 3)]
        print(f"cost per image of 3 examples vs none, {name}: {cost:.2f}x (target ≤ 1.3x with vLLM)")


if __name__ == "__main__":
    main()
