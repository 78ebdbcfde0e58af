"""Diffusion upscale: feathered paste of tile outputs against Mixture of Diffusers, side by side (issue #7).

    python bench/upscale_blend.py --threads 1                       # CPU, tiny random-weight Flux, 2–6 min
    python bench/upscale_blend.py --model flux-dev --workspace W --input-size 1024 --tile 1024 --overlap 128
                                                                    # GPU, real weights (the check that decides)

RANDOM WEIGHTS. On the default `tiny-flux` (random transformer, random VAE) the "refined" image is noise
on a VAE-mangled picture: this measures seams and cost, not texture quality. The choice it points to
must be confirmed with real weights (FLUX.1-dev + a texture LoRA) on a GPU.

One input (scikit-image's astronaut, Lanczos-resized to `--input-size`), enlarged ×2 with the studio's
own Lanczos (`blk.upscale.esrgan.resample`), then refined by img2img at each `--denoise` with one seed,
the model's default guidance and `--steps` (diffusers runs int(steps × denoise) of them), four ways:

- full frame: `blk.upscale.diffusion.tile_processor` on the whole image, one pipeline call (what the
  diffusion path's full-frame pass runs): the reference.
- feathered: the diffusion path's pass as it runs in the studio: `tile_processor` (one img2img call per
  tile, same seed for every tile) through `blk.upscale.tiler.run_tiles` (batch 1, full-size tiles,
  raised-cosine weights, 16-bit disk canvas).
- feathered, shared noise (diagnostic): the same tiles and paste, but each tile starts from its window of
  one whole-image noisy latent (the one the reference and MoD start from) instead of its own seeded noise,
  so it differs from MoD only in what is blended (outputs, not predictions).
- MoD: our loop after Mixture of Diffusers. The whole image is VAE-encoded once and noised for the first
  timestep exactly as `FluxImg2ImgPipeline.prepare_latents` does (same generator sequence, so the same
  noise as the reference); timesteps, sigmas and the shift `mu` are the pipeline's for one tile's token
  count (as the tiles of the feathered path get). At every step the transformer runs on each tile's
  latent window (same tile size, so the same packed position ids as a tile call), the velocities are
  blended with the tiler's raised-cosine weights (`tiler.weights` per pixel, averaged over each 8×8 block
  into latent pixels), and one scheduler step is taken on the whole latent; one VAE decode at the end.
  A check runs the same loop with one window covering the image at the image's own `mu` and compares it
  with the reference pipeline call (it should be 0–1 levels: the loop mirrors the pipeline).

Every method runs in a fresh child process (its peak memory is its own) after an untimed one-tile
warm-up, then `--repeats` (3) times; the time is the refine alone (prompt encoding included, model load
excluded). Columns: wall seconds and process CPU seconds (medians; on a shared CPU other work can slow
one row many times over: `--threads 1` and the CPU column are the steadier figures); peak RSS during
the refine (VmHWM after resetting it through /proc/self/clear_refs) and its growth over the RSS at the
start; on a GPU, torch's peak allocation; mean / max absolute difference in 8-bit levels
from the full-frame reference over the whole image; `seam Δ`: the mean difference from the reference in
a ±4 px band around the blend lines (the middle of every overlap, where a hard paste would cut) divided
by the same away from them (more than half an overlap from every line); `seam ∂`: a reference-free
check, the mean step between neighbouring pixels across those lines in the same band divided by the same
away from them (the reference's own figure is the picture's baseline). Near 1 means no seam. A line
under each denoise gives MoD / feathered (the studio's) for every column, and one MoD / feathered with
shared noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline environment first)

METHODS = ("full", "feathered", "feathered-shared", "mod")
LABELS = {"full": "full frame (reference)", "feathered": "feathered (studio)",
          "feathered-shared": "feathered, shared noise", "mod": "MoD"}
BAND = 4  # px either side of a blend line


# -- input -------------------------------------------------------------------------------------------

def make_input(side: int):
    """The astronaut (or, without scikit-image, a smooth picture with hard edges) at `side`², uint8 RGB."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        picture = Image.fromarray(data.astronaut())
    except ImportError:
        yy, xx = np.mgrid[0:512, 0:512] / 512
        disc = ((xx - 0.45) ** 2 + (yy - 0.55) ** 2 < 0.08).astype(float)
        rgb = np.stack([xx, yy, 0.5 + 0.4 * disc], -1) * (1 - 0.5 * (xx > 0.7))
        picture = Image.fromarray((rgb * 255).astype(np.uint8))
    return np.asarray(picture.resize((side, side), Image.Resampling.LANCZOS), dtype=np.uint8)


def enlarge(image, scale: int, folder: Path):
    """×`scale` with the studio's Lanczos (`esrgan.resample`, libvips), as float32 in [0, 1]."""
    import numpy as np

    from blk.upscale.canvas import Canvas
    from blk.upscale.esrgan import resample

    h, w = image.shape[:2]
    small = Canvas(folder / "input.canvas", w, h, 3)
    small.write_raw(0, 0, image.astype(np.uint16) * 257)
    big = resample(small, w * scale, h * scale, folder / "enlarged.canvas")
    out = big.read(0, 0, big.width, big.height)
    small.remove(), big.remove()
    return out


# -- memory --------------------------------------------------------------------------------------------

def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- the methods (in a child process) ----------------------------------------------------------------

def layout(width: int, height: int, tile: int, overlap: int, multiple: int):
    """The diffusion path's tile layout: (row spans, column spans), image px."""
    from blk.upscale.tiler import spans

    return (spans(height, tile, overlap, None, multiple, full_size=True),
            spans(width, tile, overlap, None, multiple, full_size=True))


def schedule(pipe, steps: int, denoise: float, tile_h: int, tile_w: int, device):
    """Timesteps as FluxImg2ImgPipeline.__call__ sets them for an image of tile_h × tile_w px (its `mu`)."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux_img2img import calculate_shift, retrieve_timesteps

    sigmas = np.linspace(1.0, 1 / steps, steps)
    tokens = (tile_h // pipe.vae_scale_factor // 2) * (tile_w // pipe.vae_scale_factor // 2)
    config = pipe.scheduler.config
    mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    _, n = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, mu=mu)
    timesteps, _ = pipe.get_timesteps(n, denoise, device)
    return timesteps


def noisy_latent(pipe, image, timesteps, seed: int, dtype, device):
    """The whole image encoded and noised for the first timestep, unpacked (1, C, H/8, W/8): the
    generator is drawn in the pipeline's order (VAE sample, then noise), so the noise equals that of
    one pipeline call over the whole image with this seed."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    h, w = image.shape[:2]
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    init = pipe.image_processor.preprocess(tensor, height=h, width=w).to(device=device, dtype=dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = pipe._encode_vae_image(image=init, generator=generator)
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
    return pipe.scheduler.scale_noise(latents, timesteps[:1], noise)


def latent_weights(span, overlap: int, factor: int):
    """The tiler's raised-cosine weights of one span, averaged over each `factor` px into latent px."""
    from blk.upscale.tiler import weights

    w, _ = weights(span, overlap, 1)
    return w.reshape(-1, factor).mean(axis=1)


def mixture_of_diffusers(loaded, image, prompt: str, denoise: float, steps: int, guidance: float, seed: int,
                         rows, cols, overlap: int):
    """Blend every tile's predicted velocity at every step, one scheduler step on the whole latent."""
    import numpy as np
    import torch

    pipe, f = loaded.pipe, loaded.pipe.vae_scale_factor
    device = pipe._execution_device
    h, w = image.shape[:2]
    th, tw = rows[0].length, cols[0].length
    if any(s.start % f or s.length != th for s in rows) or any(s.start % f or s.length != tw for s in cols):
        raise SystemExit(f"MoD needs tiles of one size on the latent grid ({f} px); choose another size.")
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                      num_images_per_prompt=1, max_sequence_length=512)
        dtype = embeds.dtype
        timesteps = schedule(pipe, steps, denoise, th, tw, device)
        latents = noisy_latent(pipe, image, timesteps, seed, dtype, device)
        channels = latents.shape[1]
        ids = pipe._prepare_latent_image_ids(1, th // f // 2, tw // f // 2, device, dtype)
        cond = torch.full([1], guidance, device=device, dtype=torch.float32) \
            if pipe.transformer.config.guidance_embeds else None
        windows = []
        total = torch.zeros(1, 1, h // f, w // f)
        for r in rows:
            for c in cols:
                wy, wx = latent_weights(r, overlap, f), latent_weights(c, overlap, f)
                weight = torch.from_numpy(np.outer(wy, wx))[None, None]
                windows.append((r.start // f, c.start // f, weight.to(device)))
                total[..., r.start // f:r.end // f, c.start // f:c.end // f] += weight
        if total.min() <= 0:
            raise SystemExit("MoD weights leave latent pixels uncovered.")
        total = total.to(device)
        for t in timesteps:
            velocity = torch.zeros(latents.shape, device=device, dtype=torch.float32)
            for y, x, weight in windows:
                window = latents[:, :, y:y + th // f, x:x + tw // f]
                packed = pipe._pack_latents(window, 1, channels, th // f, tw // f)
                pred = pipe.transformer(hidden_states=packed, timestep=t.expand(1).to(dtype) / 1000,
                                        guidance=cond, pooled_projections=pooled, encoder_hidden_states=embeds,
                                        txt_ids=text_ids, img_ids=ids, joint_attention_kwargs={},
                                        return_dict=False)[0]
                pred = pipe._unpack_latents(pred, th, tw, f).float()
                velocity[:, :, y:y + th // f, x:x + tw // f] += pred * weight
            velocity = (velocity / total).to(dtype)
            latents = pipe.scheduler.step(velocity, t, latents, return_dict=False)[0]
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        decoded = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="np")[0].astype(np.float32)


def shared_noise_processor(loaded, image, prompt: str, denoise: float, steps: int, guidance: float, seed: int,
                           rows, cols):
    """`tile_processor`'s pipeline call, each tile starting from its window of the whole-image noisy latent
    (`latents=`; the pipeline then skips its own encode and noise). Tiles come in the tiler's order."""
    import numpy as np
    import torch

    pipe, f = loaded.pipe, loaded.pipe.vae_scale_factor
    device = pipe._execution_device
    th, tw = rows[0].length, cols[0].length
    dtype = next(pipe.transformer.parameters()).dtype
    with torch.no_grad():
        latents = noisy_latent(pipe, image, schedule(pipe, steps, denoise, th, tw, device), seed, dtype, device)
    order = iter([(r, c) for r in rows for c in cols])

    def process(tiles):
        outs = []
        for tile in tiles:
            r, c = next(order)
            assert np.array_equal(tile, image[r.start:r.end, c.start:c.end]), "tiles out of order"
            window = latents[:, :, r.start // f:r.end // f, c.start // f:c.end // f]
            packed = pipe._pack_latents(window, 1, window.shape[1], th // f, tw // f)
            tensor = torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))[None].float()
            out = pipe(prompt=prompt, image=tensor, strength=denoise, num_inference_steps=steps,
                       guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed),
                       output_type="np", width=tw, height=th, latents=packed).images[0]
            outs.append(np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0))
        return np.stack(outs)

    return process


def child(args) -> None:
    """Run one method at one denoise in this process; save the image, print one JSON line."""
    import numpy as np
    import torch

    from blk.generate.sizes import SIZE_MULTIPLE
    from blk.generate.sketch import generation_defaults
    from blk.models.pipelines import PipelineCache
    from blk.models.registry import resolve
    from blk.upscale.canvas import Canvas
    from blk.upscale.diffusion import effective_steps, tile_processor
    from blk.upscale.source import ArraySource
    from blk.upscale.tiler import run_tiles
    from blk.workspace import Workspace

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    image = np.load(folder / "enlarged.npy")
    h, w = image.shape[:2]
    model = resolve(args.model, Workspace(Path(args.workspace)))
    _, guidance = generation_defaults(model)
    loaded = PipelineCache().get(model, task="img2img", device=args.device)
    multiple = SIZE_MULTIPLE[model.family]
    steps, _ = effective_steps(args.steps, args.denoise)
    rows, cols = layout(w, h, args.tile, args.overlap, multiple)
    tile_processor(loaded, args.prompt, args.denoise, steps, guidance, args.seed)(
        image[None, :rows[0].length, :cols[0].length])  # warm-up, untimed
    cuda = loaded.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start_rss, reset = _status("VmRSS"), reset_peak()
    times, cpu, out, peak = [], [], None, None
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        if args.method == "full":
            made = tile_processor(loaded, args.prompt, args.denoise, steps, guidance, args.seed)(image[None])[0]
        elif args.method in ("feathered", "feathered-shared"):
            process = tile_processor(loaded, args.prompt, args.denoise, steps, guidance, args.seed) \
                if args.method == "feathered" else \
                shared_noise_processor(loaded, image, args.prompt, args.denoise, steps, guidance, args.seed, rows,
                                       cols)
            canvas = Canvas(folder / f"{args.method}-{args.denoise}.canvas", w, h, 3)
            run_tiles(ArraySource(image), canvas, process, scale=1, tile=args.tile, overlap=args.overlap, batch=1,
                      multiple_of=multiple, full_size=True)
            made = canvas.read(0, 0, w, h)
            canvas.remove()
        else:
            made = mixture_of_diffusers(loaded, image, args.prompt, args.denoise, steps, guidance, args.seed, rows,
                                        cols, args.overlap)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        if out is None:  # the first run's peak; later runs only time (the result is the same)
            out, peak = made, _status("VmHWM")
    result = {"seconds": statistics.median(times), "cpu_s": statistics.median(cpu), "peak_mb": peak,
              "grew_mb": peak - start_rss, "peak_reset": reset,
              "cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
              "tiles": len(rows) * len(cols), "tile": [rows[0].length, cols[0].length],
              "device": torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"}
    np.save(folder / f"{args.method}-{args.denoise}.npy", out)
    if args.method == "mod":  # the loop with one window over the image must give the pipeline's own result
        one = layout(w, h, max(w, h), 0, multiple)
        check = mixture_of_diffusers(loaded, image, args.prompt, args.denoise, steps, guidance, args.seed, *one, 0)
        np.save(folder / f"mod-check-{args.denoise}.npy", check)
    print(json.dumps(result))


# -- measures ------------------------------------------------------------------------------------------

def levels(image):
    import numpy as np

    return np.clip(np.rint(image[..., :3] * 255.0), 0, 255).astype(np.int16)


def blend_lines(spans_, overlap: int) -> list[int]:
    """The middle of each overlap's fade band: `overlap / 2` before the end of every tile but the last."""
    return [s.end - overlap // 2 for s in spans_[:-1]]


def distance(at, lines: list[int]):
    """Distance of each position in `at` from the nearest line (a line lies between pixels line-1 and line)."""
    import numpy as np

    return np.abs(np.asarray(at, dtype=float)[:, None] - np.asarray(lines or [10**9])[None, :]).min(axis=1)


def measures(out, reference, rows, cols, overlap: int) -> dict:
    """Differences from the reference (8-bit levels) and the two seam ratios (module docstring)."""
    import numpy as np

    a, b = levels(out), levels(reference)
    diff = np.abs(a - b).mean(axis=2)
    lines_y, lines_x = blend_lines(rows, overlap), blend_lines(cols, overlap)
    dy = distance(np.arange(diff.shape[0]) + 0.5, lines_y)  # pixel centres
    dx = distance(np.arange(diff.shape[1]) + 0.5, lines_x)
    band = (dy[:, None] <= BAND) | (dx[None, :] <= BAND)
    away = (dy[:, None] > overlap / 2) & (dx[None, :] > overlap / 2)
    # steps between neighbours: across vertical lines (along x) and across horizontal ones (along y)
    step_x = np.abs(np.diff(a, axis=1)).mean(axis=2)  # between columns j and j+1: the line at j+1
    step_y = np.abs(np.diff(a, axis=0)).mean(axis=2)
    sx, sy = distance(np.arange(1, diff.shape[1]), lines_x), distance(np.arange(1, diff.shape[0]), lines_y)
    across = (np.concatenate([step_x[:, sx <= BAND].ravel(), step_y[sy <= BAND, :].ravel()]).mean()
              / np.concatenate([step_x[:, sx > overlap / 2].ravel(), step_y[sy > overlap / 2, :].ravel()]).mean())
    return {"mean": float(diff.mean()), "max": int(np.abs(a - b).max()),
            "seam": float(diff[band].mean() / max(diff[away].mean(), 1e-9)), "step": float(across)}


# -- the run -------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--workspace", help="where the model is (default: a temporary one for tiny-flux)")
    parser.add_argument("--input-size", type=int, default=256, help="input side (px); refined at twice this")
    parser.add_argument("--tile", type=int, default=128, help="px of the enlarged image")
    parser.add_argument("--overlap", type=int, default=32, help="px of the enlarged image")
    parser.add_argument("--steps", type=int, default=28, help="as asked of img2img (FLUX.1-dev's default)")
    parser.add_argument("--denoise", type=float, nargs="+", default=[0.3, 0.15])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (the median is shown)")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); "
                        "1 gives steadier figures on a busy machine")
    parser.add_argument("--child", dest="method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        args.denoise = args.denoise[0]
        return child(args)

    import numpy as np

    from blk.generate.sizes import SIZE_MULTIPLE
    from blk.models.registry import resolve
    from blk.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="blk-blend-") as tmp:
        folder = Path(tmp)
        workspace = args.workspace or str(folder / "workspace")
        model = resolve(args.model, Workspace(Path(workspace)))  # builds tiny-flux once, for every child
        image = enlarge(make_input(args.input_size), 2, folder)
        np.save(folder / "enlarged.npy", image)
        h, w = image.shape[:2]
        rows, cols = layout(w, h, args.tile, args.overlap, SIZE_MULTIPLE[model.family])
        random = " (RANDOM WEIGHTS: seams and cost only, not texture)" if "tiny" in args.model else ""
        print(f"{args.model}{random}; astronaut {args.input_size}² → Lanczos ×2 → {w}×{h}; "
              f"tiles {args.tile} px, overlap {args.overlap} px ({len(rows)}×{len(cols)} tiles); "
              f"steps {args.steps}, seed {args.seed}", flush=True)
        results = {}
        for denoise in args.denoise:
            for method in METHODS:
                command = [sys.executable, __file__, "--child", method, "--folder", tmp, "--workspace", workspace,
                           "--model", args.model, "--tile", str(args.tile), "--overlap", str(args.overlap),
                           "--steps", str(args.steps), "--denoise", str(denoise), "--seed", str(args.seed),
                           "--repeats", str(args.repeats), "--threads", str(args.threads),
                           "--prompt", args.prompt, "--device", args.device]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{method} at denoise {denoise} failed:\n{done.stderr[-3000:]}")
                results[method, denoise] = r = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"  {LABELS[method]}, denoise {denoise}: {r['seconds']:.1f} s", flush=True)
        print(f"\ndevice: {results[METHODS[0], args.denoise[0]]['device']}; peak RSS reset per refine: "
              f"{all(r['peak_reset'] for r in results.values())}")
        report(results, args, folder, rows, cols)


COLUMNS = (("s", "seconds", 7, ".2f"), ("CPU s", "cpu_s", 7, ".2f"), ("peak MB", "peak_mb", 9, ".0f"),
           ("+MB", "grew_mb", 7, ".0f"), ("cuda MB", "cuda_mb", 9, ".0f"), ("mean Δ", "mean", 8, ".2f"),
           ("max Δ", "max", 7, "d"), ("seam Δ", "seam", 8, ".2f"), ("seam ∂", "step", 8, ".2f"))


def report(results: dict, args, folder: Path, rows, cols) -> None:
    """The table: one row per method and denoise, then MoD's ratios to both feathered rows."""
    import numpy as np

    cuda = any(r["cuda_mb"] is not None for r in results.values())
    columns = [c for c in COLUMNS if cuda or c[1] != "cuda_mb"]
    head = f"{'denoise':>7}  {'method':<26}" + "".join(f"{name:>{width}}" for name, _, width, _ in columns)
    print(head)
    print("-" * len(head))
    for denoise in args.denoise:
        reference = np.load(folder / f"full-{denoise}.npy")
        row = {}
        for method in METHODS:
            out = np.load(folder / f"{method}-{denoise}.npy")
            m = row[method] = {**results[method, denoise], **measures(out, reference, rows, cols, args.overlap)}
            print(f"{denoise:>7}  {LABELS[method]:<26}"
                  + "".join(f"{m[key] or 0:>{width}{fmt}}" for _, key, width, fmt in columns))
        for other in ("feathered", "feathered-shared"):
            ratios = [row["mod"][key] / row[other][key] if row[other][key] else float("nan")
                      for _, key, _, _ in columns]
            print(f"{'':>7}  {'MoD / ' + ('feathered' if other == 'feathered' else 'shared noise'):<26}"
                  + "".join(f"{v:>{width - 1}.2f}×" for v, (_, _, width, _) in zip(ratios, columns)))
        check = np.abs(levels(np.load(folder / f"mod-check-{denoise}.npy")) - levels(reference))
        print(f"{'':>7}  check: MoD loop, one whole-image window vs the pipeline call: max Δ {check.max()} "
              f"levels, mean {check.mean():.3f}")


if __name__ == "__main__":
    main()
