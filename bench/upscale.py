"""Upscale (Real-ESRGAN path) throughput and memory, side by side in one run.

    python bench/upscale.py                       (CPU: a tiny random RRDBNet, small sizes)
    python bench/upscale.py --model RealESRGAN_x4plus.pth --tiles 256 512 --sizes 4096 16384   (GPU)
    python bench/upscale.py --peer-python /tmp/basicsr-venv/bin/python [--compare-only]   (+ basicsr's RealESRGANer)

Prints, through `blk.upscale.esrgan.run` (the whole job: read, tiles, canvas, TIFF write):
- output megapixels/s at two tile sizes, with batch 1 and batch 4 (same image, same weights);
- on a GPU, fp16 vs fp32 at the larger tile;
- peak RSS of a fresh process for two output sizes (each job in its own child process, so one
  peak does not hide the other): memory should stay flat as the output grows, because tiles
  stream into a canvas on disk.
- a comparison with basicsr's RealESRGANer (tile 512, tile_pad 10, pre_pad 0, half on a GPU) on the
  same `.pth` file and the same image: ours at the tile and batch it chooses and at tile 512, each in
  a fresh process, the peer in its own venv through `upscale_peer.py` (`--peer-python`; without it the
  peer row is skipped with a note). Per row: output MP/s (median of `--repeats` timed runs after one
  untimed warm-up, model load excluded), peak RSS (and torch's peak CUDA allocation on a GPU), and the
  largest and mean difference (8-bit levels) against the peer's output and against the untiled network
  output (one forward pass over the whole image, fp32), which shows what tiling and blending change.
Without --model, a random-weight RRDBNet with Real-ESRGAN's key names (16 features, 1 block, ×4)
stands in for the real one; the card (or "CPU") is printed beside every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.process_memory import peak_rss_mb  # noqa: E402

import blk  # noqa: E402,F401  (offline environment first)


def tiny_rrdb(path: Path, nf: int = 16, nb: int = 1, gc: int = 32) -> Path:
    import torch

    g = torch.Generator().manual_seed(0)
    state = {}

    def conv(name, cin, cout, gain=1.0):
        state[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (gain / (cin * 9) ** 0.5)
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.01

    conv("conv_first", 3, nf)
    for b in range(nb):
        for r in (1, 2, 3):
            for j in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{j}", nf + (j - 1) * gc, gc if j < 5 else nf)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", nf, 3, gain=0.5)
    state["conv_last.bias"] = torch.full((3,), 0.5)  # outputs around mid-grey, rarely clipped (as in the tests)
    torch.save({"params_ema": state}, path)
    return path


def make_input(path: Path, side: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = (rng.random((side // 8 + 1, side // 8 + 1, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(path)
    return path


def one_job(model: str, image: str, out: str, tile: int, batch: int, precision: str, device: str,
            streamed: bool = True) -> dict:
    """Run one job in this process; return seconds, output pixels and this process's peak RSS.
    `streamed`: the TIFF is written while the last pass runs (the studio's default), else after the tiles."""
    import torch

    from blk.upscale import esrgan
    from blk.upscale.esrgan import EsrganJob, run

    esrgan.STREAM_RESULT = streamed

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    job = EsrganJob(Path(image), Path(out), Path(model), tile=tile, overlap=16, batch=batch, device=device,
                    precision=precision)
    result = run(job)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    Path(out).unlink(missing_ok=True)
    return {"seconds": result.seconds, "pixels": result.width * result.height, "tile": result.tile,
            "phases": result.phases,
            "rss_mb": peak_rss_mb()}


def in_child(**job) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- against basicsr's RealESRGANer ---------------------------------------------------------------

PEER_TILE, PEER_TILE_PAD, PEER_PRE_PAD = 512, 10, 0


def compare_job(model: str, image: str, out: str, tile: int | None, device: str, repeats: int,
                threads: int, compiled: bool = False, streamed: bool = True) -> dict:
    """Our whole job (`esrgan.run`: read, tiles, canvas, TIFF write) with the EsrganJob defaults
    except `tile` and `compiled`: one warm-up (timed apart: with `compiled` it pays the compiler), then
    `repeats` timed runs. The model load inside `run` is timed by wrapping `load_upscaler` and taken off
    each run, as the peer's load is not in its figure."""
    import torch

    from blk.upscale import esrgan, models
    from blk.upscale.esrgan import EsrganJob, run

    esrgan.STREAM_RESULT = streamed
    if device == "cpu":
        torch.set_num_threads(threads)
    loads = []
    real_load = models.load_upscaler

    def timed_load(*a, **k):
        t = time.perf_counter()
        up = real_load(*a, **k)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        loads.append(time.perf_counter() - t)
        return up

    models.load_upscaler = timed_load
    job = EsrganJob(Path(image), Path(out), Path(model), tile=tile, device=device, compile=compiled)
    first = run(job).seconds - sum(loads)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        Path(out).unlink(missing_ok=True)
        loads.clear()
        result = run(job)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        seconds.append(result.seconds - sum(loads))
    phases = result.phases | {"prepare": result.phases["prepare"] - sum(loads)}
    return {"seconds": seconds, "phases": phases, "width": result.width, "height": result.height, "tile": result.tile,
            "tiles": result.tiles, "batch": job.batch, "overlap": job.overlap, "load_s": sum(loads),
            "first_s": first, "compiled": result.parameters.get("compile", False),
            "precision": result.parameters["precision"],
            "rss_mb": peak_rss_mb(),
            "cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None}


def untiled(model: Path, image: Path, device: str):
    """The network on the whole image in one pass, fp32, as 8-bit RGB: what tiling should reproduce."""
    import numpy as np
    import torch
    from PIL import Image

    from blk.upscale.models import load_upscaler

    up = load_upscaler(model, device)
    x = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0
    y = up.descriptor(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(device))  # spandrel: clamps
    y = y[0].float().cpu().numpy().transpose(1, 2, 0)
    del up
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return np.rint(y * 255.0).astype(np.uint8)


def read_rgb(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def difference(a, b) -> str:
    """Largest and mean absolute difference in 8-bit levels, as "max/mean"."""
    import numpy as np

    if a is None or b is None:
        return "–"
    if a.shape != b.shape:
        return f"shape {a.shape[1]}×{a.shape[0]} vs {b.shape[1]}×{b.shape[0]}"
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return f"{int(d.max())}/{d.mean():.3f}"


def work(side: int, r: dict, peer: bool) -> float:
    """Pixels the network is fed per input pixel (1.0: none computed twice), from each tiler's layout:
    ours, the fewest tiles per side, of one length, spread evenly (`blk.upscale.tiler.spans`; `multiple_of`
    1, as for an RRDBNet ×4);
    RealESRGANer's, a grid of `tile` cut from the image, each padded by `tile_pad` inside the image."""
    if peer:
        cuts = [(a, min(a + PEER_TILE, side)) for a in range(0, side, PEER_TILE)]
        per_axis = sum(min(b + PEER_TILE_PAD, side) - max(a - PEER_TILE_PAD, 0) for a, b in cuts)
    else:
        from blk.upscale.tiler import spans

        per_axis = sum(sp.length for sp in spans(side, r["tile"], r["overlap"]))
    return per_axis ** 2 / side ** 2


def run_peer(python: str, job: dict) -> dict:
    done = subprocess.run([python, str(Path(__file__).with_name("upscale_peer.py")), json.dumps(job)],
                          check=False, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the peer failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args, model: Path, scratch: Path, device: str, card: str) -> None:
    gpu = device.startswith("cuda")
    side = args.compare_input or (1024 if gpu else 128)
    image = make_input(scratch / f"cmp{side}.png", side)
    threads = args.threads or os.cpu_count() or 1
    print(f"\nours vs basicsr's RealESRGANer: {model.name}, input {side}×{side} → ×4, median of {args.repeats} "
          f"run{'s' if args.repeats > 1 else ''} after a warm-up, model load excluded; {card}" + ("" if gpu else f", {threads} threads"))

    rows = []  # (label, result, output path)
    ours = [("ours, tile auto", None, False, True), (f"ours, tile {PEER_TILE}", PEER_TILE, False, True),
            ("ours, tile auto, TIFF after the tiles", None, False, False)]
    if args.compiled:
        ours.append(("ours, tile auto, compiled", None, True, True))
    for label, tile, compiled, streamed in ours:
        out = scratch / f"ours_{tile or 'auto'}{'_compiled' if compiled else ''}{'' if streamed else '_after'}.tif"
        job = {"model": str(model), "image": str(image), "out": str(out), "tile": tile, "device": device,
               "repeats": args.repeats, "threads": threads, "compiled": compiled, "streamed": streamed}
        done = subprocess.run([sys.executable, __file__, "--child-compare", json.dumps(job)],
                              check=False, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["label"] = f"{label} (batch {r['batch']}, overlap {r['overlap']})"
        rows.append((r, out))

    peer = None
    peer_python = args.peer_python
    if not peer_python or not Path(peer_python).exists():
        print(f"  (peer row skipped: {'no --peer-python given' if not peer_python else peer_python + ' not found'}; "
              "see bench/README.md for its venv)")
    else:
        out = scratch / "peer.png"
        peer = run_peer(peer_python, {"model": str(model), "image": str(image), "out": str(out),
                                      "tile": PEER_TILE, "tile_pad": PEER_TILE_PAD, "pre_pad": PEER_PRE_PAD,
                                      "half": gpu, "device": device, "repeats": args.repeats,
                                      "threads": threads})
        peer |= {"label": f"basicsr RealESRGANer (tile {PEER_TILE}, pad {PEER_TILE_PAD})",
                 "tile": PEER_TILE, "precision": "float16" if gpu else "float32"}
        rows.append((peer, out))

    reference = untiled(model, image, device) if side * side <= args.reference_max ** 2 else None
    peer_out = read_rgb(rows[-1][1]) if peer else None
    print(f"\n{'row':<60} {'tile':>5} {'tiles':>5} {'prec':>8} {'work':>5} {'MP/s':>8} {'med s':>7} {'load s':>6} "
          f"{'peak RSS MB':>11} {'CUDA MB':>8} {'Δ peer max/mean':>16} {'Δ untiled max/mean':>19}")
    speed = {}
    for r, out in rows:
        med = statistics.median(r["seconds"])
        speed[r["label"]] = r["width"] * r["height"] / 1e6 / med
        pixels = read_rgb(out)
        cuda = f"{r['cuda_mb']:.0f}" if r.get("cuda_mb") is not None else "–"
        vs_peer = "–" if r is peer else difference(pixels, peer_out)
        print(f"{r['label']:<60} {r['tile']:>5} {r['tiles']:>5} {r['precision'].removeprefix('torch.'):>8} "
              f"{work(side, r, r is peer):>5.2f} {speed[r['label']]:>8.2f} {med:>7.3f} {r['load_s']:>6.2f} "
              f"{r['rss_mb']:>11.0f} {cuda:>8} {vs_peer:>16} {difference(pixels, reference):>19}")
    for r, _ in rows:
        if r.get("phases"):
            print(f"  {r['label'].split(' (')[0]}, last run: " +
                  ", ".join(f"{name} {seconds:.3f} s" for name, seconds in r["phases"].items()) + " (load excluded)"
                  + (f"; first run {r['first_s']:.1f} s (compiling)" if r.get("compiled") else ""))
        if r is not peer and "compiled" in r["label"] and not r.get("compiled"):
            print(f"  {r['label'].split(' (')[0]}: compile failed, the row ran uncompiled")
    if peer and peer.get("write_s") is not None:
        with_write = statistics.median(peer["seconds"]) + peer["write_s"]
        speed["peer+write"] = peer["width"] * peer["height"] / 1e6 / with_write
        print(f"  the peer with its PNG write (cv2.imwrite, {peer['write_s']:.3f} s), as its script saves a file: "
              f"{speed['peer+write']:.2f} MP/s; ours (file to file, TIFF) / that: "
              + ", ".join(f"{r['label'].split(' (')[0]}: {speed[r['label']] / speed['peer+write']:.2f}×"
                          for r, _ in rows if r is not peer))
    if peer:
        ratios = ", ".join(f"{r['label'].split(' (')[0]}: {speed[r['label']] / speed[peer['label']]:.2f}×"
                           for r, _ in rows if r is not peer)
        print(f"ours/peer MP/s — {ratios}   (target on a GPU: ≥ 1.5×; {card})")
        print(f"peer: basicsr {peer['versions']['basicsr']}, realesrgan {peer['versions']['realesrgan']}, "
              f"torch {peer['versions']['torch']}; RRDBNet {peer['net']}"
              + ("; torchvision.transforms.functional_tensor shimmed" if peer["shimmed_functional_tensor"] else ""))
    if reference is None:
        print(f"  (untiled reference skipped: input above {args.reference_max}² px, --reference-max)")


def layouts(model: Path, device: str, card: str, repeats: int, compiled: bool = False) -> None:
    """The network alone (no tiler, no files), fp16 on a GPU: NCHW vs channels-last, cuDNN's
    autotuner off vs on — what `blk.upscale.esrgan.CHANNELS_LAST` and `_model` choose between; with
    `compiled`, channels-last compiled too (`blk.upscale.compiled_network`)."""
    import torch

    from blk.upscale.models import load_upscaler

    up = load_upscaler(model, device)
    up.descriptor.to(torch.float16)
    print(f"\nthe network alone, fp16, median of {repeats} after a warm-up ({card})")
    print(f"{'input':>12} {'layout':>14} {'autotune':>8} {'ms':>8} {'output MP/s':>11}")
    for batch, side in ((1, 1024), (4, 512)):
        x = torch.rand(batch, 3, side, side, device=device, dtype=torch.float16)
        for layout in (torch.contiguous_format, torch.channels_last):
            up.descriptor.model.to(memory_format=layout)
            for autotune in (False, True):
                torch.backends.cudnn.benchmark = autotune
                times = []
                for i in range(repeats + 1):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    up.descriptor(x.contiguous(memory_format=layout))
                    torch.cuda.synchronize()
                    if i:
                        times.append(time.perf_counter() - t)
                ms = statistics.median(times) * 1000
                name = "channels_last" if layout is torch.channels_last else "NCHW"
                print(f"{batch}×{side}² {name:>14} {str(autotune):>8} {ms:>8.1f} "
                      f"{batch * (side * up.scale) ** 2 / 1e6 / (ms / 1000):>11.1f}")
    torch.backends.cudnn.benchmark = False
    if compiled:  # channels-last, compiled for any shape (the studio's) and per shape
        import torch._dynamo

        from blk.upscale.compiled_network import compile_network, uncompile

        up.descriptor.model.to(memory_format=torch.channels_last)
        for dynamic in (True, False):
            torch._dynamo.reset()
            blocks = compile_network(up.descriptor.model, dynamic=dynamic)
            for batch, side in ((1, 1024), (4, 512)):
                x = torch.rand(batch, 3, side, side, device=device, dtype=torch.float16)
                x = x.contiguous(memory_format=torch.channels_last)
                times = []
                for i in range(repeats + 1):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    up.descriptor(x)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
                ms = statistics.median(times[1:]) * 1000
                name = "compiled, any" if dynamic else "compiled, one"
                print(f"{batch}×{side}² {name:>14} {'–':>8} {ms:>8.1f} "
                      f"{batch * (side * up.scale) ** 2 / 1e6 / (ms / 1000):>11.1f}   (first call {times[0]:.1f} s; "
                      f"{blocks or 'whole network'} {'blocks' if blocks else ''}; "
                      f"{'any shape' if dynamic else 'graph per shape'})")
            uncompile(up.descriptor.model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="an upscaler file (default: a tiny random RRDBNet)")
    parser.add_argument("--input", type=int, default=None, help="input side for the speed rows (px)")
    parser.add_argument("--tiles", type=int, nargs=2, default=None, help="two tile sizes (input px)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="output sides for peak RSS")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peer-python", default=None,
                        help="python of a venv with basicsr + realesrgan (default: skip the peer row)")
    parser.add_argument("--compare-input", type=int, default=None,
                        help="input side for the comparison (default 128 on a CPU, 1024 on a GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per comparison row (median shown)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the comparison (default: all)")
    parser.add_argument("--reference-max", type=int, default=1024,
                        help="largest input side for the untiled reference in the comparison")
    parser.add_argument("--compare-only", action="store_true", help="only the comparison with the peer")
    parser.add_argument("--layouts", action="store_true",
                        help="first, the network alone in NCHW vs channels-last, cuDNN autotune off/on (GPU)")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-RSS rows (--sizes)")
    parser.add_argument("--write-after-tiles", action="store_true",
                        help="the speed and memory rows write their TIFF after the tiles, as before streaming")
    parser.add_argument("--compiled", action="store_true",
                        help="also our job with the network compiled (EsrganJob.compile), and with --layouts the "
                             "network alone compiled")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-compare", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_job(**json.loads(args.child))))
        return
    if args.child_compare:
        print(json.dumps(compare_job(**json.loads(args.child_compare))))
        return

    from blk.models.device import pick_device

    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    if gpu:
        import torch

        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({os.cpu_count()} cores)"
    scratch = Path(tempfile.mkdtemp(prefix="blk-bench-upscale-"))
    model = Path(args.model) if args.model else tiny_rrdb(scratch / "tiny_rrdb_x4.pth")
    tiles = args.tiles or ([256, 512] if gpu else [64, 128])
    side = args.input or (1024 if gpu else 256)
    if args.layouts and gpu:
        layouts(model, device, card, args.repeats, args.compiled)
    if args.compare_only:
        print(f"device: {card}; model: {model.name}")
        compare(args, model, scratch, device, card)
        return
    image = make_input(scratch / f"in{side}.png", side)
    out = str(scratch / "out.tif")
    base = {"model": str(model), "image": str(image), "out": out, "device": device,
            "streamed": not args.write_after_tiles}
    print(f"device: {card}; model: {model.name}; input {side}×{side} → ×4; overlap 16")

    if not args.memory_only:
        one_job(**base, tile=tiles[0], batch=1, precision="fp32")  # untimed warm-up: imports, file cache, kernels
        print(f"\n{'tile':>5} {'batch':>5} {'precision':>9} {'MP/s':>8} {'s':>7}   ({card})")
        rows = [(t, b, "fp32") for t in tiles for b in (1, 4)]
        if gpu:
            rows += [(tiles[1], 4, "fp16")]
        for tile, batch, precision in rows:
            r = one_job(**base, tile=tile, batch=batch, precision=precision)
            print(f"{tile:>5} {batch:>5} {precision:>9} {r['pixels'] / 1e6 / r['seconds']:>8.2f} {r['seconds']:>7.2f}")

    written = "TIFF written after the tiles" if args.write_after_tiles else "TIFF written while the last pass runs"
    print(f"\n{'output':>11} {'MP':>7} {'peak RSS MB':>12} {'s':>7}   (fresh process each; tile {tiles[1]}, batch 4; "
          f"{written}; {card})")
    for size in args.sizes:
        big = make_input(scratch / f"in{size // 4}.png", size // 4)
        r = in_child(**(base | {"image": str(big)}), tile=tiles[1], batch=4, precision="auto" if gpu else "fp32")
        print(f"{size:>5}×{size:<5} {r['pixels'] / 1e6:>7.1f} {r['rss_mb']:>12.0f} {r['seconds']:>7.2f}   "
              + ", ".join(f"{name} {seconds:.1f}" for name, seconds in r["phases"].items()))
    if args.memory_only:
        return
    compare(args, model, scratch, device, card)


if __name__ == "__main__":
    main()
