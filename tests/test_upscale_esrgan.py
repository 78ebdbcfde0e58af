"""Real-ESRGAN path: spandrel loading (and refusing code), seamless tiles, any size, alpha, 16 bits,
BigTIFF/PNG metadata, region reading past Pillow's limit, OOM halving, cancel, disk full, CLI.

No real weights exist offline: `rrdb_file` writes an RRDBNet with Real-ESRGAN's exact key names
(`params_ema` → conv_first, body.N.rdbK.convJ, conv_body, conv_up1/2, conv_hr, conv_last) and
random weights, and every test loads it through spandrel like a downloaded file. spandrel's
RRDB has a fixed growth width of 32 (`gc`), so only num_feat and num_block are small here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from blk.atomic import TEMP_PREFIX
from blk.data.images import MAX_PIXELS
from blk.errors import BadImage, UserError
from blk.upscale.canvas import Canvas
from blk.upscale.esrgan import EsrganJob, estimate, pass_inputs, plan_passes, processor, run
from blk.upscale.models import load_upscaler
from blk.upscale.source import ArraySource, open_input
from blk.upscale.tiler import Cancelled, choose_tile, count_tiles, run_tiles, spans, weights
from tests.conftest import run_blk


# -- a Real-ESRGAN-shaped model file ------------------------------------------------------------

def rrdb_state(in_ch: int = 3, nf: int = 16, nb: int = 1, gc: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, cin, cout, gain=1.0):
        state[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (gain / (cin * 9) ** 0.5)
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.01

    conv("conv_first", in_ch, nf)
    for b in range(nb):
        for r in (1, 2, 3):
            for j in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{j}", nf + (j - 1) * gc, gc if j < 5 else nf)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", nf, 3, gain=0.5)
    state["conv_last.bias"] = torch.full((3,), 0.5)  # outputs spread around mid-grey, rarely clipped
    return {"params_ema": state}


def rrdb_file(path: Path, in_ch: int = 3) -> Path:
    torch.save(rrdb_state(in_ch), path)
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"x4": rrdb_file(root / "RealESRGAN_x4plus_tiny.pth"),
            "x2": rrdb_file(root / "RealESRGAN_x2plus_tiny.pth", in_ch=12)}  # pixel-unshuffle input


@pytest.fixture(scope="module")
def x4(models):
    return load_upscaler(models["x4"])


def reference(upscaler, pixels: np.ndarray) -> np.ndarray:
    """The model run on the whole image at once (no tiles), float32 HxWx3."""
    x = torch.from_numpy(np.ascontiguousarray(pixels[..., :3].transpose(2, 0, 1)))[None]
    return upscaler.descriptor(x)[0].numpy().transpose(1, 2, 0)


def noise(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth-ish random image (a model sees structure, not only pixel noise)."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 4 + 2, w // 4 + 2, channels))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC))
    return np.clip(big / 255.0 + rng.normal(0, 0.05, big.shape), 0, 1).astype(np.float32)


def save_16bit_tiff(path: Path, pixels: np.ndarray, **kwargs) -> np.ndarray:
    data = np.rint(pixels * 65535).astype(np.uint16)
    tifffile.imwrite(path, data, photometric="rgb", **kwargs)
    return data.astype(np.float32) / 65535


def read_tiff(path: Path) -> np.ndarray:
    data = tifffile.imread(path)
    return data.astype(np.float32) / (65535.0 if data.dtype == np.uint16 else 255.0)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


# -- loading --------------------------------------------------------------------------------------

def test_spandrel_detects_real_esrgan_x4_and_x2(models):
    x4 = load_upscaler(models["x4"])
    assert (x4.architecture, x4.scale, x4.tags) == ("ESRGAN", 4, ("16nf", "1nb"))
    assert x4.dtypes("cpu") == ("float32",)
    assert x4.dtypes("cuda:0") == ("float32", "float16", "bfloat16")  # spandrel: ESRGAN supports both
    x2 = load_upscaler(models["x2"])  # 12 input channels = 3 × 2² after pixel-unshuffle: RealESRGAN_x2plus
    assert (x2.architecture, x2.scale, x2.multiple_of) == ("ESRGAN", 2, 4) and "unshuffle" in x2.tags
    out = x2.descriptor(torch.rand(1, 3, 10, 14))  # sides not multiples of 4: spandrel pads and crops
    assert tuple(out.shape) == (1, 3, 20, 28)
    assert "RealESRGAN_x4plus_tiny.pth: ESRGAN ×4" in x4.describe()


class Payload:
    """Unpickling this creates `marker` (by calling `open`): proof that a file ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_half_precision_casts_the_weights_too(models):
    """On a GPU the tiles run in fp16/bf16 and the weights must follow, not only the inputs (found on an
    H200: "Input type (c10::Half) and bias type (float) should be the same"). bf16 runs on a CPU too."""
    upscaler = load_upscaler(models["x4"])  # its own: the module's `x4` stays float32
    tiles = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    full = processor(load_upscaler(models["x4"]), "cpu", torch.float32)(tiles)
    half = processor(upscaler, "cpu", torch.bfloat16)(tiles)
    assert next(upscaler.descriptor.model.parameters()).dtype == torch.bfloat16
    assert half.dtype == torch.bfloat16 and half.shape == full.shape == (2, 64, 64, 3)
    assert 0 < (half.float() - full).abs().max() < 0.05


def test_malicious_pickles_never_run(tmp_path):
    control = tmp_path / "control-ran"
    pickle.loads(pickle.dumps(Payload(control)))  # the payload is live: plain pickle runs it
    assert control.exists()

    marker = tmp_path / "pwned"
    evil = {"params_ema": {"conv_first.weight": torch.zeros(1), "x": Payload(marker)}}
    files = {"zip.pth": lambda p: torch.save(evil, p),
             "legacy.pth": lambda p: torch.save(evil, p, _use_new_zipfile_serialization=False),
             "raw.pth": lambda p: p.write_bytes(pickle.dumps(evil)),
             "zip.ckpt": lambda p: torch.save(evil, p),
             "zip.pt": lambda p: torch.save(evil, p)}
    for name, write in files.items():
        write(tmp_path / name)
        with pytest.raises(UserError) as caught:
            load_upscaler(tmp_path / name)
        message = str(caught.value)
        assert "not loaded" in message and "\n" not in message and message.count(". ") == 0, (name, message)
        assert not marker.exists(), f"{name} ran code while loading"


def test_torchscript_and_broken_files_are_one_sentence(tmp_path, models):
    scripted = tmp_path / "scripted.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)  # torch.load would jit-load it
    cases = {scripted: "TorchScript archive",
             tmp_path / "missing.pth": "does not exist",
             tmp_path / "notes.txt": "not a model file",
             tmp_path / "junk.pth": "damaged or not a model file",
             tmp_path / "cut.pth": "damaged or not a model file",
             tmp_path / "other.pth": "not an upscaling model that spandrel recognises"}
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "junk.pth").write_bytes(os.urandom(512))
    (tmp_path / "cut.pth").write_bytes(models["x4"].read_bytes()[:4000])
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    for path, words in cases.items():
        with pytest.raises(UserError, match=words) as caught:
            load_upscaler(path)
        assert "\n" not in str(caught.value) and str(caught.value).endswith(".")


def community_model(architecture: str, path: Path) -> Path:
    """A small random-weight model of a spandrel architecture, saved as a plain state_dict `.pth`
    (what community upscalers ship), so that spandrel has to detect it from the keys alone."""
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    build = {"Compact": lambda: Compact(num_feat=8, num_conv=2, upscale=4),
             "SwinIR": lambda: SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                                      mlp_ratio=2.0, upscale=2, upsampler="pixelshuffledirect"),
             "SPAN": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2)}
    torch.save(build[architecture]().state_dict(), path)
    return path


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # SwinIR's own code, inside spandrel
@pytest.mark.parametrize("architecture, name, scale", [("Compact", "RealESRGAN Compact", 4),
                                                       ("SwinIR", "SwinIR", 2), ("SPAN", "SPAN", 2)])
def test_community_architectures_load_and_upscale_in_tiles(architecture, name, scale, tmp_path):
    """Artists use community upscalers: a SRVGGNetCompact, a SwinIR and a SPAN file load through our
    loader (spandrel's detection, restricted unpickler) and run a whole tiled job to an image of the
    right size that is not one flat colour."""
    upscaler = load_upscaler(community_model(architecture, tmp_path / f"{architecture}.pth"))
    assert (upscaler.architecture, upscaler.scale) == (name, scale)
    pixels = noise(40, 52, seed=5)
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    result = run(EsrganJob(tmp_path / "in.png", tmp_path / "out.tif", tmp_path / f"{architecture}.pth",
                           scale=scale, tile=24, overlap=4))
    out = tifffile.imread(result.path).astype(np.float64)
    assert out.shape == (40 * scale, 52 * scale, 3) and result.tiles > 1
    assert out.std() > 2 and np.ptp(out) > 20  # levels that vary across the image
    assert leftovers(tmp_path) == []


# -- tiling ---------------------------------------------------------------------------------------

def test_layout_weights_sum_to_one_and_edges_are_not_faded():
    for length, tile, overlap in [(100, 48, 16), (97, 32, 8), (40, 64, 16), (129, 64, 32)]:
        total = np.zeros(length * 2)
        layout = spans(length, tile, overlap)
        assert layout[0].start == 0 and layout[-1].end == length
        assert len({s.length for s in layout}) == 1  # every tile the same size
        for span in layout:
            w, _ = weights(span, overlap, 2)
            total[span.start * 2:span.end * 2] += w
        assert np.abs(total - 1).max() < 1e-6, (length, tile, overlap)
        first, _ = weights(layout[0], overlap, 2)
        last, _ = weights(layout[-1], overlap, 2)
        assert first[0] == 1.0 and last[-1] == 1.0  # image edges keep full weight


def test_layout_computes_little_twice():
    """Equal tiles spread evenly, not full tiles with the last one moved back: a side a little larger
    than a tile costs about its own length, not up to twice it (basicsr's RealESRGANer: about 1.06×)."""
    assert [(s.start, s.length) for s in spans(640, 512, 32)] == [(0, 336), (304, 336)]
    assert sum(s.length for s in spans(640, 512, 32)) <= 1.1 * 640  # was 512 + 512: 1.6×
    assert sum(s.length for s in spans(1024, 900, 32)) <= 1.1 * 1024  # was 900 + 900: 1.76×
    for length, tile, overlap, multiple_of in [(1024, 512, 32, 1), (1100, 1024, 96, 16), (4096, 1024, 96, 16),
                                               (3000, 256, 32, 4), (513, 512, 32, 8)]:
        layout = spans(length, tile, overlap, None, multiple_of)
        # the overlaps, plus at most one `multiple_of` of rounding per tile
        most = length + (len(layout) - 1) * overlap + len(layout) * (multiple_of - 1) + len(layout)
        assert sum(s.length for s in layout) <= most, (length, tile, overlap, layout)
    assert count_tiles(640, 640, 512, 32) == 4 and count_tiles(2000, 500, 512, 32) == 5 * 1  # columns, rows


def test_diffusion_layout_keeps_full_size_tiles():
    """The diffusion path's models draw best at the size they were trained at: its tiles stay `tile` px
    (only their positions spread evenly); the Real-ESRGAN path's shrink to cover the side with little waste."""
    assert [(s.start, s.length) for s in spans(1100, 1024, 64, None, 16, full_size=True)] == [(0, 1024), (76, 1024)]
    assert [(s.start, s.length) for s in spans(1100, 1024, 64, None, 16)] == [(0, 592), (508, 592)]
    assert [s.start for s in spans(3000, 1024, 64, None, 16, full_size=True)] == [0, 658, 1317, 1976]
    assert count_tiles(1100, 900, 1024, 64, 16, full_size=True) == 2


def test_every_layout_covers_once_with_equal_tiles_and_weights_summing_to_one():
    """Many (length, tile, overlap, multiple_of), each also continued after an out-of-memory halving
    at every row: the layouts cover the axis exactly with equal tiles of at most `tile` px (a multiple
    of `multiple_of` where the tile allows), neighbours overlap by `overlap` or more, and the weights of
    every output pixel sum to 1, with nothing before a tile's first weighted pixel."""
    def check(layout, kept, length, tile, overlap, multiple_of):
        assert layout[-1].end == length and len({s.length for s in layout}) == 1 and layout[0].length <= tile
        if len(layout) > 1 and tile // multiple_of * multiple_of >= max(2 * overlap, 1):
            assert layout[0].length % multiple_of == 0
        everything = kept + layout
        assert everything[0].start == 0
        assert all(a.end - b.start >= overlap for a, b in zip(everything, everything[1:]))
        total = np.zeros(length * 2)
        for span in everything:
            w, first = weights(span, overlap, 2)
            assert not w[:first].any()
            total[span.start * 2:span.end * 2] += w
        assert np.abs(total - 1).max() < 1e-6

    layouts = 0
    for multiple_of in (1, 4, 16):
        for overlap in (0, 1, 3, 5, 8, 13, 32):
            for tile in {max(2 * overlap, 6), 2 * overlap + 3, 4 * overlap + 5, 100}:
                for length, full_size in itertools.product([*range(1, 130, 4), 333], (False, True)):
                    layout = spans(length, tile, overlap, None, multiple_of, full_size)
                    check(layout, [], length, tile, overlap, multiple_of)
                    smaller = max(tile // 2 // multiple_of * multiple_of, 2 * overlap, 1)
                    for k in range(1, len(layout), max(1, len(layout) // 3)):  # out of memory at row k
                        check(spans(length, smaller, overlap, layout[k].fade_in_end, multiple_of, full_size),
                              layout[:k], length, smaller, overlap, multiple_of)
                    layouts += 1
    assert layouts > 4000


def run_array(upscaler, pixels, tmp_path, *, tile, overlap, blend="sine", process=None, batch=2, name="c"):
    """The tiler into a real canvas; returns the result in [0, 1] and the stats."""
    canvas = Canvas(tmp_path / f"{name}.canvas", pixels.shape[1] * upscaler.scale, pixels.shape[0] * upscaler.scale, 3)
    try:
        stats = run_tiles(ArraySource(pixels), canvas, process or processor(upscaler, "cpu", torch.float32),
                          scale=upscaler.scale, tile=tile, overlap=overlap, batch=batch, blend=blend)
        return canvas.read(0, 0, canvas.width, canvas.height), stats
    finally:
        canvas.remove()


def test_tiled_equals_untiled(x4, tmp_path):
    """The tiled result against the model run on the whole image: exact far from every cut, and at the
    borders the blended error (overlap 16, half-sine weights) is small and thousands of times smaller
    than with hard pasting — tiles laid side by side without overlap and pasted as they come (overlap 0:
    no blending, and no context past a tile's edge, so every cut shows the network's edge error)."""
    pixels = noise(72, 100)
    whole = reference(x4, pixels)
    errors = {}
    for overlap, blend in ((16, "sine"), (16, "hard"), (8, "sine"), (0, "sine")):
        out, stats = run_array(x4, pixels, tmp_path, tile=40, overlap=overlap, blend=blend)
        assert stats.tiles == len(spans(100, 40, overlap)) * len(spans(72, 40, overlap)) >= 6
        errors[overlap, blend] = np.abs(out - whole)
    # far from every cut (inside the first tile, 37×35 px, ≥ 20 input px — the net's reach — from its cut
    # edges) the tiled result is the untiled one, to the canvas's 16-bit step
    assert errors[16, "sine"][:4 * 15, :4 * 17].max() <= 2 / 65535
    # at the cuts: measured max error 4.1e-5 (overlap 16), 5.1e-3 (8); plain tiling without overlap 0.26
    assert errors[16, "sine"].max() < 1e-4 < 1e-2 > errors[8, "sine"].max()
    assert errors[16, "sine"].max() * 1000 < errors[0, "sine"].max()

    # the borders: output px within 4 input px of a line where one tile hands over to the next, in either layout
    border = np.zeros(whole.shape[:2], bool)
    for overlap in (16, 0):
        for axis, length in ((1, 100), (0, 72)):
            for span in spans(length, 40, overlap):
                if span.fade_in_end is not None:
                    cut = slice(4 * (span.fade_in_end - 4), 4 * (span.fade_in_end + 4))
                    border[(slice(None), cut) if axis else (cut, slice(None))] = True
    blended, naive = errors[16, "sine"][border], errors[0, "sine"][border]
    # measured: max 4.1e-5 against 0.26 (6300×), mean 7.5e-6 against 0.034 (4500×)
    assert blended.max() < 1e-4 and naive.max() > 0.1
    assert blended.max() * 2000 < naive.max() and blended.mean() * 2000 < naive.mean()

    # a hard cut in the middle of the same 16 px overlap (blend="hard": the same context, no blending) is
    # closer still (1.5e-5; the blend gives some weight to pixels nearer a cut: 2.7× that): for one network,
    # context removes the error and the blend costs little; it is for tiles that disagree (next test)
    assert errors[16, "sine"].max() < 4 * errors[16, "hard"].max()


class Disagreeing(torch.nn.Module):
    """Our test model: the real network, plus a brightness that changes from call to call — tiles that
    disagree, as diffusion tiles do. Batch 1: one tile per call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x) + 0.04 * (self.calls % 3)


def test_a_pass_reuses_a_few_levels_buffers_whatever_its_rows(x4, tmp_path):
    """Each tile's 16-bit levels go through a buffer that a pass allocates a few times, not per row or tile
    (tens of MB each at real sizes: freed and allocated again, glibc kept them and resident memory crept up
    with the rows); both modes of the tile loop give the same pixels (the untiled comparison: the test above)."""
    pixels = noise(150, 70, seed=3)
    batch = 2
    whole, stats = run_array(x4, pixels, tmp_path, tile=24, overlap=8, batch=batch)
    rows, cols = len(spans(150, 24, 8)), len(spans(70, 24, 8))
    assert rows >= 8 and stats.tiles == rows * cols
    assert 1 <= stats.buffers <= 2 * batch + 1 < rows
    canvas = Canvas(tmp_path / "p.canvas", 70 * 4, 150 * 4, 3)
    try:
        piped = run_tiles(ArraySource(pixels), canvas, processor(x4, "cpu", torch.float32), scale=4, tile=24,
                          overlap=8, batch=batch, pipelined=True)
        assert np.array_equal(canvas.read(0, 0, canvas.width, canvas.height), whole)
        assert piped.buffers <= 2 * batch + 1
    finally:
        canvas.remove()


def test_blend_hides_seams_between_disagreeing_tiles(x4, tmp_path):
    pixels = noise(64, 96, seed=2)
    whole = reference(x4, pixels)
    jumps = {}
    for blend in ("sine", "hard"):
        process = processor(dataclasses.replace(x4, descriptor=Disagreeing(x4.descriptor)), "cpu", torch.float32)
        out, _ = run_array(x4, pixels * 0.8, tmp_path, tile=48, overlap=24, blend=blend, process=process, batch=1)
        error = out - reference(x4, pixels * 0.8)
        jumps[blend] = max(np.abs(np.diff(error, axis=0)).max(), np.abs(np.diff(error, axis=1)).max())
    # hard paste: the whole brightness difference in one pixel step (0.08); the blend spreads it over
    # the middle 12 input px of the overlap (measured 0.0027)
    assert jumps["hard"] > 0.07 and jumps["sine"] * 10 < jumps["hard"]
    assert whole.shape == (256, 384, 3)


def test_no_seam_between_different_tile_sizes(x4, tmp_path):
    pixels = noise(64, 96, seed=3)
    small, _ = run_array(x4, pixels, tmp_path, tile=32, overlap=16, name="a")
    large, _ = run_array(x4, pixels, tmp_path, tile=56, overlap=16, name="b")
    assert np.abs(small - large).max() < 1e-4


class OutOfMemoryAbove(torch.nn.Module):
    """Our test model: the real network, but it runs out of memory on tiles wider than `limit`
    once `grace` calls have succeeded (as a GPU does when memory fragments mid-image)."""

    def __init__(self, inner, limit: int, grace: int = 0):
        super().__init__()
        self.inner, self.limit, self.grace, self.calls, self.sides = inner, limit, grace, 0, []

    def forward(self, x):
        self.calls += 1
        if self.calls > self.grace and max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test budget)")
        self.sides.append(max(x.shape[-2:]))
        return self.inner(x)


def test_out_of_memory_halves_the_tile_and_resumes_at_the_current_row(x4, tmp_path):
    pixels = noise(100, 88, seed=5)
    whole = reference(x4, pixels)
    wrapped = OutOfMemoryAbove(x4.descriptor, limit=32, grace=1)  # row 1 of 64 px tiles finishes, row 2 fails
    process = processor(dataclasses.replace(x4, descriptor=wrapped), "cpu", torch.float32)
    out, stats = run_array(x4, pixels, tmp_path, tile=64, overlap=16, batch=2, process=process)
    assert (stats.tile, stats.oom_retries) == (32, 1)
    # tile 64: 2 rows of 58 px, 2 columns of 52; then tiles of at most 32 px from row 2 on
    assert wrapped.sides[0] == 58 and max(wrapped.sides[1:]) <= 32  # the first row was kept, not redone
    assert np.abs(out - whole).max() < 1e-4  # the failed row's band was restored (else errors ~0.5)

    always = OutOfMemoryAbove(x4.descriptor, limit=0)
    with pytest.raises(UserError, match="Out of memory even with 16 px tiles"):
        run_array(x4, pixels, tmp_path, tile=64, overlap=8,
                  process=processor(dataclasses.replace(x4, descriptor=always), "cpu", torch.float32))


class FailingDisk:
    """A test double for a disk that fails mid-row: the real canvas, but the `fail_at`-th write
    (counting write_raw and accumulate, as the tiler's writer thread issues them) raises EIO."""

    def __init__(self, canvas: Canvas, fail_at: int):
        self.canvas, self.fail_at, self.writes = canvas, fail_at, 0

    def _count(self):
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError(5, "Input/output error (test disk)")

    def write_raw(self, x, y, values):
        self._count()
        self.canvas.write_raw(x, y, values)

    def accumulate(self, x, y, values):
        self._count()
        self.canvas.accumulate(x, y, values)

    def __getattr__(self, name):  # snapshot, restore, clear: the canvas's own
        return getattr(self.canvas, name)


def test_a_write_failing_on_the_writer_thread_puts_the_band_back(x4, tmp_path):
    """Tiles are written on a background thread while the next batch computes; an error there
    reaches the caller, and the row's band is restored only after every write has stopped."""
    pixels = noise(72, 100, seed=8)
    canvas = Canvas(tmp_path / "c.canvas", 400, 288, 3)
    after_first_row = []
    try:
        disk = FailingDisk(canvas, fail_at=9)  # row 1: 3 tiles of 3 writes at most; the failure lands in row 2
        with pytest.raises(OSError, match="test disk"):
            run_tiles(ArraySource(pixels), disk, processor(x4, "cpu", torch.float32), scale=4, tile=40,
                      overlap=16, batch=2, on_row_done=lambda done: after_first_row.append(
                          canvas.read_raw(0, 0, canvas.width, canvas.height).copy()))
        assert len(after_first_row) == 1 and after_first_row[0].any()
        assert np.array_equal(canvas.read_raw(0, 0, canvas.width, canvas.height), after_first_row[0])
    finally:
        canvas.remove()


def test_16_bit_levels_become_the_nearest_8_bit_level():
    from blk.upscale.canvas import TO_8_BITS

    levels = np.arange(65536)
    assert np.array_equal(TO_8_BITS, np.rint(levels / 257.0).astype(np.uint8))


def test_writers_read_bands_ahead_in_order_and_stop_on_cancel(tmp_path):
    from blk.upscale.canvas import bands

    canvas = Canvas(tmp_path / "b.canvas", 37, 600, 3)
    try:
        values = np.random.default_rng(3).integers(0, 65536, (600, 37, 3), dtype=np.uint16)
        canvas.write_raw(0, 0, values)
        got = list(bands(canvas, 256, lambda band: band // 2))
        assert [len(b) for b in got] == [256, 256, 88]
        assert np.array_equal(np.concatenate(got), values // 2)
        cancel = threading.Event()
        reader = bands(canvas, 256, lambda band: band, cancel)
        next(reader)
        cancel.set()
        with pytest.raises(Cancelled):
            next(reader)
    finally:
        canvas.remove()


def test_a_strided_write_reaches_the_canvas_without_a_copy_of_the_whole(tmp_path):
    """A tile's part right of its overlap is a strided view: the canvas writes it row by row (each row is
    contiguous) instead of copying it whole first — the same bytes, a row's memory instead of the tile's."""
    import tracemalloc

    canvas = Canvas(tmp_path / "s.canvas", 1200, 700, 3)
    try:
        levels = np.random.default_rng(6).integers(0, 65536, (600, 1100, 3), dtype=np.uint16)
        right = levels[:, 100:]  # rows of 1000 px, 1100 apart
        assert not right.flags.c_contiguous
        tracemalloc.start()
        try:
            canvas.write_raw(150, 40, right)
            canvas.write_raw(0, 650, levels[:50, :600])  # partial width, rows contiguous
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < right.nbytes / 20  # measured: a row's worth; a copy of the whole was 3.6 MB
        assert np.array_equal(canvas.read_raw(150, 40, 1000, 600), right)
        assert np.array_equal(canvas.read_raw(0, 650, 600, 50), levels[:50, :600])
        assert not canvas.read_raw(0, 0, 150, 40).any()  # nothing written outside
    finally:
        canvas.remove()


def test_writers_read_the_canvas_in_chunks_so_their_memory_does_not_grow_with_the_width(tmp_path):
    """Chunks come row-major (tifffile's tile order) and the TIFF writers hold a few of them at a time:
    a full-width band of a 16384 px canvas would be 25 MB of levels, twice over with the read-ahead."""
    import tracemalloc

    from blk.upscale.canvas import READ_AHEAD, TO_8_BITS, WRITE_COLUMNS, bands, write_print_tiff, write_tiff

    small = Canvas(tmp_path / "c.canvas", 600, 300, 3)
    try:
        values = np.random.default_rng(4).integers(0, 65536, (300, 600, 3), dtype=np.uint16)
        small.write_raw(0, 0, values)
        got = list(bands(small, 256, lambda chunk: chunk, columns=256))
        assert [c.shape[:2] for c in got] == [(256, 256), (256, 256), (256, 88), (44, 256), (44, 256), (44, 88)]
        rows = [np.concatenate(got[i:i + 3], axis=1) for i in (0, 3)]
        assert np.array_equal(np.concatenate(rows), values)
    finally:
        small.remove()

    def traced_peaks(width: int) -> list[int]:
        """Peak bytes traced (numpy and Python buffers) while each TIFF writer writes a `width` × 256 canvas."""
        canvas = Canvas(tmp_path / f"{width}.canvas", width, 256, 4)
        try:
            ramp = (np.arange(width, dtype=np.uint32) * 2 % 65536).astype(np.uint16)
            canvas.write_raw(0, 0, np.broadcast_to(ramp[None, :, None], (256, width, 4)).copy())
            peaks = []
            for write in (lambda: write_tiff(canvas, tmp_path / "w.tif", bits=8, icc=None, dpi=None,
                                             description="", software=""),
                          lambda: write_print_tiff(canvas, tmp_path / "p.tif", dpi=300, icc=None)):
                tracemalloc.start()
                write()
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
            assert np.array_equal(tifffile.imread(tmp_path / "w.tif")[100, :, 0], np.take(TO_8_BITS, ramp))
            assert tifffile.imread(tmp_path / "p.tif").shape == (256, width, 3)
            return peaks
        finally:
            canvas.remove()

    # once the width holds what is in flight (the read-ahead threads' chunks, tifffile's round of tiles), a
    # wider canvas costs no more: measured (2 cores, READ_AHEAD 2) 37.7 and 108.2 MB from 7 chunks wide on,
    # the same at 15; full-width bands took 352 and 384 MB at 32768 px. The threads' timing moves a peak by
    # ~10 % (the first writer at 7 chunks: 33.9 or 37.7 MB in runs of the same code), hence the 1.25
    chunks = 2 * READ_AHEAD + 3
    narrow, wide = traced_peaks(chunks * WRITE_COLUMNS), traced_peaks((2 * chunks + 1) * WRITE_COLUMNS)
    for small, large in zip(narrow, wide):
        assert large < 1.25 * small, f"{small / 2**20:.1f} MB at {chunks} chunks, {large / 2**20:.1f} MB at {2 * chunks + 1}"


def test_tile_size_follows_the_memory_budget():
    assert choose_tile(100 * 2**30) == 1024  # the cap
    one, four = choose_tile(2 * 2**30), choose_tile(2 * 2**30, batch=4)
    assert (one, four) == (288, 128)  # 24 KB per input pixel (x4plus, fp32, with headroom)
    assert choose_tile(2 * 2**30, batch=4, dtype_bytes=2) == 192  # half precision: bigger tiles
    assert choose_tile(2**20) == 64 and choose_tile(10 * 2**30, multiple_of=3) % 96 == 0
    assert plan_passes(4, 4) == 1 and plan_passes(4, 3) == 1 and plan_passes(4, 6) == 1
    assert plan_passes(4, 8) == 2 and plan_passes(2, 5) == 2 and plan_passes(1, 3) == 1


def test_a_large_overlap_widens_tiles_only_as_far_as_memory_allows():
    """An automatic tile was made four overlaps wide whatever the memory: an overlap of 300 px on a CPU with
    2 GB to spare asked for 1200 px tiles (33 GB), and the system killed the job."""
    from blk.upscale.tiler import tile_for_overlap

    two_gb = 2 * 2**30
    assert tile_for_overlap(two_gb, 32) == choose_tile(two_gb) == 288  # room for four overlaps: as before
    assert tile_for_overlap(100 * 2**30, 300) == 1184  # memory to spare: four overlaps (rounded to 32 px)
    assert tile_for_overlap(two_gb, 100) == 288 and 288 >= 2 * 100  # under four overlaps, over the two it needs
    with pytest.raises(UserError, match=r"^An overlap of 300 px needs tiles of at least 600 px, more than free "
                                        r"memory allows for this model; lower the overlap \(to 144 px or less\)"):
        tile_for_overlap(two_gb, 300)


# -- whole jobs -----------------------------------------------------------------------------------

def test_exact_sizes_any_scale(models, x4, tmp_path):
    pixels = noise(29, 37, seed=7)
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    source = tmp_path / "in.png"
    x4_out = run(EsrganJob(source, tmp_path / "x4.tif", models["x4"], tile=32, overlap=8))
    three = run(EsrganJob(source, tmp_path / "x3.tif", models["x4"], scale=3, tile=32, overlap=8))
    sized = run(EsrganJob(source, tmp_path / "sized.png", models["x2"], scale=None, size=(100, 47), tile=32, overlap=8))
    seven = run(EsrganJob(source, tmp_path / "x7.tif", models["x4"], scale=7, tile=32, overlap=8))
    assert (three.width, three.height, three.passes) == (111, 87, 1)
    assert tifffile.imread(tmp_path / "x3.tif").shape == (87, 111, 3)
    assert Image.open(tmp_path / "sized.png").size == (100, 47) and sized.passes == 1  # ×2, then Lanczos ×1.35
    assert (seven.width, seven.height, seven.passes) == (259, 203, 2) and seven.tiles > x4_out.tiles
    assert tifffile.imread(tmp_path / "x7.tif").shape == (203, 259, 3)
    # ×3 is the ×4 result resampled with Lanczos (libvips here, Pillow for the check)
    big = Image.fromarray(tifffile.imread(tmp_path / "x4.tif"))
    expected = np.asarray(big.resize((111, 87), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(tifffile.imread(tmp_path / "x3.tif") - expected).mean() < 1.5
    assert leftovers(tmp_path) == []


def lanczos(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's Lanczos on float channels (an independent resampler for the checks)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c]), "F").resize(
        (width, height), Image.Resampling.LANCZOS)) for c in range(pixels.shape[2])], axis=2).clip(0, 1)


def test_the_last_pass_starts_from_just_what_reaches_the_target(models, x4, tmp_path):
    """×7 or ×8 with a ×4 model: the second pass runs on the input ×1.75 or ×2 (the ×4 result shrunk
    with Lanczos), not on the ×4 result — which made ×16 only to shrink it — and the result is the
    exact size, with the pixels of that recipe run on whole images."""
    assert pass_inputs(37, 29, 4, (296, 232)) == [(37, 29), (74, 58)]
    assert pass_inputs(37, 29, 4, (259, 203)) == [(37, 29), (65, 51)]
    assert pass_inputs(10, 12, 4, (160, 192)) == [(10, 12), (40, 48)]  # ×16: nothing to shrink
    assert pass_inputs(37, 29, 4, (111, 87)) == [(37, 29)]  # one pass: never shrunk before the model
    assert pass_inputs(100, 100, 4, (1000, 100)) == [(100, 100), (250, 100)]  # stretched: no axis below the input
    pixels = noise(29, 37, seed=7)
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    pixels = np.asarray(Image.open(tmp_path / "in.png"), dtype=np.float32) / 255
    first = count_tiles(37, 29, 32, 8)
    for scale, size, second in ((8, (296, 232), (74, 58)), (7, (259, 203), (65, 51))):
        result = run(EsrganJob(tmp_path / "in.png", tmp_path / f"x{scale}.tif", models["x4"], scale=scale,
                               tile=32, overlap=8))
        assert (result.width, result.height, result.passes) == (*size, 2)
        assert tifffile.imread(result.path).shape == (size[1], size[0], 3)
        # ×8: 2 + 9 tiles, ×7: 2 + 6, where a second pass on the ×4 result took 2 + 30
        assert result.tiles == first + count_tiles(*second, 32, 8) < first + count_tiles(148, 116, 32, 8)
    expected = reference(x4, lanczos(reference(x4, pixels), 74, 58)) * 255
    difference = np.abs(tifffile.imread(tmp_path / "x8.tif") - expected)
    assert difference.mean() < 0.75 and difference.max() < 2  # measured 0.25 and 0.92 levels (8-bit)
    assert leftovers(tmp_path) == []


def test_the_estimate_is_the_plan_the_job_runs(models, tmp_path):
    """The UI's Estimate (`esrgan.estimate`) counts the tiles of every model pass with the tile the job
    will use — automatic from free memory when not given — and `run` follows that same plan."""
    Image.fromarray((noise(29, 37, seed=8) * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    for tile in (32, None):
        job = EsrganJob(tmp_path / "in.png", tmp_path / "x7.tif", models["x4"], scale=7, tile=tile, overlap=8)
        plan = estimate(job)
        seen = []
        result = run(job, on_plan=seen.append)
        assert seen == [plan] and (plan.width, plan.height) == (result.width, result.height) == (259, 203)
        assert (plan.passes, plan.tile, sum(plan.tiles)) == (result.passes, result.tile, result.tiles)
        if tile:
            assert plan.tiles == (count_tiles(37, 29, 32, 8), count_tiles(65, 51, 32, 8)) == (2, 6)
            assert plan.sentence() == "8 tiles (2 + 6) of up to 32 px in 2 model passes of ×4."
        else:  # on a CPU: up to 512 px, from a quarter of the free memory
            assert 64 <= plan.tile <= 512 and plan.tiles == (1, 1)
    assert leftovers(tmp_path) == []


def count_file_loads(monkeypatch) -> list[str]:
    """Names of the files spandrel's loader reads, from a wrapper on its method (spandrel's, not ours)."""
    import spandrel

    original, loads = spandrel.ModelLoader.load_from_file, []

    def counting(self, path):
        loads.append(Path(path).name)
        return original(self, path)

    monkeypatch.setattr(spandrel.ModelLoader, "load_from_file", counting)
    return loads


def test_estimate_loads_a_model_file_once_until_it_changes(tmp_path, monkeypatch):
    """The Estimate button reads the model's scale from `models.FACTS`, keyed by path, mtime and size:
    a second estimate (or one after a job loaded the file) loads nothing; a file replaced in place is read again."""
    from blk.upscale.models import FACTS

    Image.fromarray((noise(29, 37, seed=8) * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    model = rrdb_file(tmp_path / "tiny.pth")
    job = EsrganJob(tmp_path / "in.png", tmp_path / "out.tif", model, scale=4, tile=32, overlap=8)
    loads = count_file_loads(monkeypatch)
    first = estimate(job)
    assert loads == ["tiny.pth"] and estimate(job) == first and loads == ["tiny.pth"]
    assert FACTS.get(FACTS.key(model)).scale == 4 and first.model_scale == 4
    rrdb_file(model, in_ch=12)  # replaced by a ×2 model (pixel-unshuffle input): another size and mtime
    assert estimate(job).model_scale == 2 and loads == ["tiny.pth"] * 2
    rrdb_file(model)
    seen = []
    result = run(job, on_plan=seen.append)  # the job loads it anyway; the next estimate need not
    assert loads == ["tiny.pth"] * 3 and estimate(job) == seen[0] and loads == ["tiny.pth"] * 3
    assert result.passes == 1 and seen[0].model_scale == 4 and leftovers(tmp_path) == []
    damaged = tmp_path / "damaged.pth"  # a file that is no model: read once, its sentence kept (the Models tab)
    damaged.write_bytes(b"not a model" * 100)
    broken = EsrganJob(tmp_path / "in.png", tmp_path / "out2.tif", damaged, scale=4)
    with pytest.raises(UserError, match="damaged.pth is damaged or not a model file") as first_error:
        estimate(broken)
    with pytest.raises(UserError) as second_error:
        estimate(broken)
    assert str(second_error.value) == str(first_error.value) and loads.count("damaged.pth") == 1


def test_rgba_alpha_kept_and_colour_not_darkened(x4, models, tmp_path):
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 <= 20 ** 2
    rgba = np.zeros((64, 64, 4), np.uint8)  # straight alpha, black under the transparent part
    rgba[disk] = (230, 40, 20, 255)
    ring = disk & ((yy - 32) ** 2 + (xx - 32) ** 2 > 18 ** 2)
    rgba[ring, 3] = 128  # a soft edge
    Image.fromarray(rgba, "RGBA").save(tmp_path / "sticker.png")
    opaque = np.zeros((64, 64), bool)
    clear = np.zeros((64, 64), bool)
    a = np.pad(rgba[..., 3], 1, mode="edge")
    windows = [a[dy:dy + 64, dx:dx + 64] for dy in range(3) for dx in range(3)]
    opaque[np.minimum.reduce(windows) == 255] = True
    clear[np.maximum.reduce(windows) == 0] = True
    up = lambda m: m.repeat(4, 0).repeat(4, 1)  # noqa: E731

    inside = up(disk & ((yy - 32) ** 2 + (xx - 32) ** 2 <= 17 ** 2))  # opaque, near the soft edge
    core = up((yy - 32) ** 2 + (xx - 32) ** 2 <= 6 ** 2)
    for mode in ("model", "lanczos"):
        result = run(EsrganJob(tmp_path / "sticker.png", tmp_path / f"{mode}.png", models["x4"],
                               tile=40, overlap=12, alpha=mode))
        out = np.asarray(Image.open(result.path))
        assert out.shape == (256, 256, 4)
        assert (out[..., 3][up(opaque)] == 255).all() and (out[..., 3][up(clear)] == 0).all()
        soft = out[..., 3][up(ring & ~opaque & ~clear)]
        assert 0 < soft.mean() < 255
        colour = out[..., :3].astype(float)
        # a constant red in → the model's constant answer out: near the edge as in the middle
        assert np.abs(colour[inside] - colour[core].mean(0)).max() <= 1  # measured: 0
    # ×3: ×4 then Lanczos, premultiplied; solid areas stay solid
    three = np.asarray(Image.open(run(EsrganJob(tmp_path / "sticker.png", tmp_path / "x3.png", models["x4"],
                                                 scale=3, tile=40, overlap=12)).path))
    assert three.shape == (192, 192, 4)
    yy3, xx3 = (np.mgrid[:192, :192] + 0.5) / 3 - 0.5  # output pixel centres in input pixel units
    r3 = (yy3 - 32) ** 2 + (xx3 - 32) ** 2
    # (1 input px inside the ×4 result's snapped area: Lanczos reaches that far into the random edge)
    assert (three[..., 3][r3 <= 15 ** 2] == 255).all() and (three[..., 3][r3 >= 23 ** 2] == 0).all()
    assert np.abs(three[..., :3][r3 <= 15 ** 2].astype(float) - colour[core].mean(0)).max() <= 1
    # without the fill, the black under alpha 0 reaches the visible edge through the model
    naive = reference(x4, rgba[..., :3].astype(np.float32) / 255) * 255
    assert np.abs(naive[inside] - naive[core].mean(0)).max() > 5  # measured: 8.4 levels


def test_16bit_in_16bit_out(x4, models, tmp_path):
    pixels = save_16bit_tiff(tmp_path / "in16.tif", noise(40, 48, seed=9))
    fine = run(EsrganJob(tmp_path / "in16.tif", tmp_path / "out16.tif", models["x4"], tile=32, overlap=16,
                         keep_16bit=True))
    data = tifffile.imread(fine.path)
    assert fine.bits == 16 and data.dtype == np.uint16 and data.shape == (160, 192, 3)
    assert (data % 257 != 0).mean() > 0.9  # real 16-bit values, not 8-bit ones scaled up
    assert np.abs(data / 65535 - reference(x4, pixels)).max() < 1e-4
    plain = run(EsrganJob(tmp_path / "in16.tif", tmp_path / "out8.tif", models["x4"], tile=32, overlap=8))
    assert plain.bits == 8 and tifffile.imread(plain.path).dtype == np.uint8
    # a 16-bit RGB PNG: Pillow would decode it to 8 bits, so it is read with pyvips
    import pyvips

    png16 = np.rint(pixels * 65535).astype(np.uint16)
    pyvips.Image.new_from_array(png16, interpretation="rgb16").pngsave(str(tmp_path / "in16.png"))
    assert open_input(tmp_path / "in16.png").bit_depth == 16
    via_png = run(EsrganJob(tmp_path / "in16.png", tmp_path / "png16.tif", models["x4"], tile=32, overlap=16,
                            keep_16bit=True))
    assert np.array_equal(tifffile.imread(via_png.path), data)
    with pytest.raises(UserError, match="16-bit results are written as TIFF"):
        run(EsrganJob(tmp_path / "in16.tif", tmp_path / "out16.png", models["x4"], keep_16bit=True))


def srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_a_result_is_a_bigtiff_only_when_it_may_pass_4_gb():
    """A 32×32 result was a BigTIFF, which macOS Preview and many print RIPs cannot open; now only sizes that may
    pass classic TIFF's 4 GB (edge tiles padded, before compression) are."""
    from blk.upscale.canvas import needs_bigtiff

    assert not needs_bigtiff(32, 32, 3, 1) and not needs_bigtiff(30_000, 30_000, 3, 1)  # 2.7 GB
    assert needs_bigtiff(40_000, 40_000, 3, 1)  # 4.8 GB
    assert needs_bigtiff(30_000, 30_000, 4, 2)  # 16-bit RGBA: 7.2 GB
    assert not needs_bigtiff(35_840, 35_840, 3, 1) and needs_bigtiff(35_841, 35_841, 3, 1)  # padded: 36_096


def test_tiled_deflate_predictor_dpi_icc_and_parameters(models, tmp_path):
    icc = srgb_icc()
    pixels = noise(30, 44, seed=11)
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "art.png", dpi=(300, 300),
                                                                  icc_profile=icc)
    result = run(EsrganJob(tmp_path / "art.png", tmp_path / "art.tif", models["x4"], tile=32, overlap=8))
    with tifffile.TiffFile(result.path) as tif:
        page = tif.pages[0]
        assert not tif.is_bigtiff and page.is_tiled and page.tilewidth == 256  # classic: every viewer opens it
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.predictor == tifffile.PREDICTOR.HORIZONTAL
        assert page.shape == (120, 176, 3) and page.dtype == np.uint8
        assert page.tags["InterColorProfile"].value == icc
        x, y = page.tags["XResolution"].value
        assert abs(x / y - 300) < 0.01 and page.tags["ResolutionUnit"].value == 2  # inch
        parameters = json.loads(page.description)
    assert parameters["model"] == "RealESRGAN_x4plus_tiny.pth" and parameters["width"] == 176
    assert parameters["architecture"] == "ESRGAN" and len(parameters["model_sha256"]) == 64
    # the user's DPI wins; PNG carries ICC, pHYs and the parameters as blk.generate.metadata writes them
    from blk.generate.metadata import read_parameters

    png = run(EsrganJob(tmp_path / "art.png", tmp_path / "art-big.png", models["x4"], tile=32, overlap=8, dpi=150))
    with Image.open(png.path) as im:
        assert im.info["icc_profile"] == icc and abs(im.info["dpi"][0] - 150) < 0.02  # pHYs stores whole pixels per metre
        assert np.array_equal(np.asarray(im), tifffile.imread(result.path))
    assert read_parameters(png.path)["height"] == 120
    assert leftovers(tmp_path) == []


def test_large_inputs_are_read_by_region(models, tmp_path):
    # a real file over Pillow's limit: a 13440² tiled TIFF (180.6 MP), mostly empty tiles
    side, tile = 13440, 1024
    pattern = (np.arange(tile * tile).reshape(tile, tile) % 251).astype(np.uint8)
    blank = np.zeros((tile, tile), np.uint8)
    n = -(-side // tile)
    tiles = (pattern if (ty, tx) == (n - 1, n - 1) else blank for ty in range(n) for tx in range(n))
    tifffile.imwrite(tmp_path / "huge.tif", tiles, shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     bigtiff=True, photometric="minisblack", compression="zlib", compressionargs={"level": 1})
    assert side * side > MAX_PIXELS
    with pytest.raises(BadImage, match="too many pixels"):
        from blk.data.images import read_info

        read_info(tmp_path / "huge.tif")  # Pillow's path refuses it…
    huge = open_input(tmp_path / "huge.tif")  # …the Upscale path reads it by region
    assert (huge.width, huge.height, huge.channels, huge.by_region) == (side, side, 3, True)
    x0 = (n - 1) * tile
    region = huge.source.read(side - 100, side - 80, 64, 48)
    expected = pattern[side - 80 - x0:side - 32 - x0, side - 100 - x0:side - 36 - x0] / 255
    assert np.abs(region - expected[..., None]).max() < 1e-6
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's limit was never raised
    # a BMP that large has no reader by region: the sentence says what to do (it sent the artist to this very tab)
    import struct

    row = (side * 3 + 3) // 4 * 4
    (tmp_path / "huge.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 54 + row * side, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, side, side, 1, 24, 0, row * side, 2835, 2835, 0, 0) + bytes(1000))
    with pytest.raises(BadImage, match="^huge.bmp is too large to decode whole and its format cannot be read by "
                                       "region; save it as a TIFF"):
        open_input(tmp_path / "huge.bmp")

    # a whole job through the region reader gives the same pixels as through memory
    pixels = noise(36, 52, seed=13)
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "small.png")
    memory = run(EsrganJob(tmp_path / "small.png", tmp_path / "memory.tif", models["x4"], tile=32, overlap=8))
    region_job = run(EsrganJob(tmp_path / "small.png", tmp_path / "region.tif", models["x4"], tile=32, overlap=8,
                               max_pixels=1000))
    assert open_input(tmp_path / "small.png", max_pixels=1000).by_region
    assert np.array_equal(tifffile.imread(memory.path), tifffile.imread(region_job.path))


def test_a_large_turned_jpeg_decoded_whole_to_a_full_temporary_disk_is_refused_before_any_tile(models, tmp_path,
                                                                                             monkeypatch):
    """libvips reads a JPEG turned by its EXIF (or an interlaced PNG) by region only after decoding it whole to a
    temporary file: 6 GB under /tmp for a 2 GP image, counted nowhere, and its failure said the artwork was
    "damaged". (Other PNG, JPEG and WebP files are streamed and need no room there: test_upscale_row_stream.)"""
    from tests.test_faults import tmpfs

    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    Image.fromarray((noise(120, 160, seed=14) * 255).round().astype(np.uint8)).save(tmp_path / "wall.jpg", exif=exif)
    Image.fromarray((noise(120, 160, seed=14) * 255).round().astype(np.uint8)).save(tmp_path / "wall.png")
    tifffile.imwrite(tmp_path / "wall.tif", np.zeros((120, 160, 3), np.uint8))
    assert open_input(tmp_path / "wall.jpg", max_pixels=1000).spill_bytes == 160 * 120 * 3
    assert open_input(tmp_path / "wall.tif", max_pixels=1000).spill_bytes == 0  # a TIFF reads by region itself
    assert open_input(tmp_path / "wall.png", max_pixels=1000).spill_bytes == 0  # streamed
    assert open_input(tmp_path / "wall.jpg").spill_bytes == 0  # held whole: nothing goes to libvips
    with tmpfs(tmp_path / "small-tmp", "32k") as small:
        monkeypatch.setenv("TMPDIR", str(small))
        ticks = []
        with pytest.raises(UserError, match=r"The disk holding .*small-tmp has \d+ KB free and reading this input "
                                            r"needs about \d+ KB there \(a JPEG turned by its EXIF or an interlaced"):
            run(EsrganJob(tmp_path / "wall.jpg", tmp_path / "out.tif", models["x4"], tile=32, overlap=8,
                          max_pixels=1000), progress=lambda *a: ticks.append(a))
        assert ticks == [] and leftovers(tmp_path) == []
        # a TIFF or a streamed PNG needs no room there
        for name in ("wall.tif", "wall.png"):
            run(EsrganJob(tmp_path / name, tmp_path / f"out-{name}.tif", models["x4"], tile=64, overlap=8,
                          max_pixels=1000))


def test_an_input_held_whole_keeps_its_levels_and_tiles_read_as_the_float_decoder_gives(tmp_path):
    """An input within `max_pixels` is held as the file's 8- or 16-bit levels and converted tile by tile: a
    quarter (8-bit) of what holding it as float32 took — a 32 MP RGBA input 128 MB, not 512 — with the same
    floats, bit for bit, as decoding it whole (`read_pixels`)."""
    import tracemalloc

    from blk.data.images import read_pixels

    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (40, 60, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (40, 60), dtype=np.uint16)).save(tmp_path / "grey16.png")
    held = {"rgb.png": (np.uint8, 3), "rgba.png": (np.uint8, 4), "grey16.png": (np.uint16, 3)}  # 16-bit TIFFs: libvips
    for name, (dtype, channels) in held.items():
        image = open_input(tmp_path / name)
        whole = read_pixels(tmp_path / name)
        assert not image.by_region and image.source.array.dtype == dtype and whole.shape == (40, 60, channels)
        tile = image.source.read(7, 5, 30, 20)
        assert tile.dtype == np.float32 and np.array_equal(tile, whole[5:25, 7:37]), name
        assert np.array_equal(image.source.read(0, 0, 60, 40), whole), name
        assert 0.0 <= tile.min() and tile.max() <= 1.0

    Image.fromarray(rng.integers(0, 256, (1000, 1500, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    stored = 1000 * 1500 * 3
    tracemalloc.start()
    try:
        image = open_input(tmp_path / "big.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.source.array.nbytes == stored
    assert peak < 2.5 * stored  # float32 would hold 4× the levels, and the division a second 4× while it ran


def test_16_bit_tiffs_of_any_layout_open_upright_with_their_16_bits(tmp_path):
    """tifffile's raw samples ignored a TIFF's rotation tag (a scan came out sideways, then stretched to the
    asked size), read CMYK's K as alpha, and refused grey + alpha; 16-bit TIFFs now open through libvips like
    large inputs: upright, CMYK converted, grey + alpha kept, 16 bits kept."""
    from blk.data.images import read_pixels

    rng = np.random.default_rng(9)
    stored = rng.integers(0, 65536, (20, 40, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rot.tif", stored, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    grey_alpha = rng.integers(0, 65536, (30, 30, 2), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "la.tif", grey_alpha, photometric="minisblack", extrasamples=["unassalpha"])
    planes = rng.integers(0, 65536, (3, 24, 36), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "cmyk.tif", np.zeros((16, 16, 4), np.uint16), photometric="separated")  # white

    rot = open_input(tmp_path / "rot.tif")
    upright = np.rot90(stored, k=-1) / 65535  # orientation 6: the stored rows turned clockwise
    assert (rot.width, rot.height, rot.bit_depth) == (20, 40, 16)
    assert np.abs(rot.source.read(0, 0, 20, 40) - upright).max() < 1e-6
    assert read_pixels(tmp_path / "rot.tif").shape == (40, 20, 3)  # the shared reader: upright too (Pillow's)
    la = open_input(tmp_path / "la.tif")
    assert (la.channels, la.grey, la.bit_depth) == (4, True, 16)
    pixels = la.source.read(0, 0, 30, 30)
    assert np.abs(pixels[..., 3] - grey_alpha[..., 1] / 65535).max() < 1e-6
    assert np.abs(pixels[..., 0] - grey_alpha[..., 0] / 65535).max() < 1e-6
    planar = open_input(tmp_path / "planar.tif")
    assert np.abs(planar.source.read(0, 0, 36, 24) - planes.transpose(1, 2, 0) / 65535).max() < 1e-6
    cmyk = open_input(tmp_path / "cmyk.tif")
    assert (cmyk.channels, cmyk.bit_depth, cmyk.icc) == (3, 16, None)
    assert cmyk.source.read(0, 0, 16, 16).min() > 0.9  # no ink: white, not a transparent black


def test_a_file_rewritten_under_the_same_name_is_read_again(tmp_path):
    """libvips caches a load by the file's name: an artist who re-exported a drawing under the same name and
    upscaled it again in the same session got the first version's pixels (and a canvas made again, the old
    canvas's). Its cache is off (`blk.vips`)."""
    for name, max_pixels in (("re.tif", 1 << 30), ("re.png", 100)):  # a 16-bit TIFF, a large (by region) PNG
        for value in (40, 200):
            path = tmp_path / name
            path.unlink(missing_ok=True)
            if name.endswith(".tif"):
                tifffile.imwrite(path, np.full((12, 16, 3), value * 257, np.uint16), photometric="rgb")
            else:
                Image.fromarray(np.full((12, 16, 3), value, np.uint8)).save(path)
            image = open_input(path, max_pixels=max_pixels)
            assert image.by_region and np.allclose(image.source.read(0, 0, 16, 12), value / 255), (name, value)


def test_region_reads_keep_only_the_resolution_and_profile_the_file_stores(models, tmp_path):
    """Read by region (libvips) or whole (Pillow), an input has the same DPI and ICC: the file's, or
    None — never libvips' default for a file that says nothing (71.98 dpi for a PNG without pHYs,
    25.4 for a TIFF without resolution tags), which the result would then carry as if it were set."""
    icc = srgb_icc()
    pixels = (noise(30, 44, seed=31) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    Image.fromarray(pixels).save(tmp_path / "marked.png", dpi=(300, 300), icc_profile=icc)
    tifffile.imwrite(tmp_path / "plain.tif", pixels, photometric="rgb")
    tifffile.imwrite(tmp_path / "marked.tif", pixels, photometric="rgb", resolution=(118.11, 118.11),
                     resolutionunit="CENTIMETER", iccprofile=icc)  # 300 dpi in pixels per centimetre
    expected = {"plain.png": (None, None), "marked.png": (300.0, icc), "plain.tif": (None, None),
                "marked.tif": (300.0, icc)}
    for name, (dpi, profile) in expected.items():
        whole, region = open_input(tmp_path / name), open_input(tmp_path / name, max_pixels=1000)
        assert (whole.by_region, region.by_region) == (False, True)
        assert (region.dpi, region.icc) == (whole.dpi, whole.icc) == (dpi, profile), name
    # the result records what the file said, and no resolution where it said none
    for name, dpi in (("plain.png", None), ("plain.tif", None), ("marked.tif", 300.0)):
        result = run(EsrganJob(tmp_path / name, tmp_path / f"out-{name}.tif", models["x4"], tile=32, overlap=8,
                               max_pixels=1000))
        assert result.parameters["dpi"] == dpi
        with tifffile.TiffFile(result.path) as tif:
            tags = tif.pages[0].tags
            unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
            assert (unit == 1) == (dpi is None), name  # 1: no unit, so no DPI
            assert ("InterColorProfile" in tags) == (name == "marked.tif")
    assert leftovers(tmp_path) == []


def grey_icc() -> bytes:
    """An sRGB profile relabelled GRAY in its header: all the writers and checks read of a profile."""
    icc = bytearray(srgb_icc())
    icc[16:20] = b"GRAY"
    return bytes(icc)


def test_a_grey_input_gives_a_grey_result_with_its_grey_profile(x4, models, tmp_path):
    """A greyscale scan stays greyscale: one channel (16 bits kept when asked), the luminance of the model's
    RGB result, its GRAY profile kept (on RGB pixels it was invalid); grey + alpha keeps its alpha; the print
    copy is grey; a PNG is L; an RGB profile chosen for a grey result is one sentence."""
    grey = noise(40, 48, seed=21)[..., 0]
    levels = np.rint(grey * 65535).astype(np.uint16)
    profile = grey_icc()  # once: a profile made a second later differs in its creation time
    tifffile.imwrite(tmp_path / "scan.tif", levels, photometric="minisblack", iccprofile=profile)
    assert open_input(tmp_path / "scan.tif").grey and open_input(tmp_path / "scan.tif", max_pixels=100).grey
    result = run(EsrganJob(tmp_path / "scan.tif", tmp_path / "scan-x4.tif", models["x4"], tile=32, overlap=16,
                           keep_16bit=True, print_dpi=300))
    colour = reference(x4, np.repeat(grey[..., None], 3, axis=2).astype(np.float32))  # what the model makes
    luma = colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    with tifffile.TiffFile(result.path) as tif:
        page = tif.pages[0]
        assert page.shape == (160, 192) and page.dtype == np.uint16
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert page.tags["InterColorProfile"].value == profile
        assert np.abs(page.asarray() / 65535 - luma).max() < 2e-4
        assert json.loads(page.description)["grey"] is True
    with tifffile.TiffFile(result.print_path) as tif:
        assert tif.pages[0].shape == (160, 192) and tif.pages[0].dtype == np.uint8
        assert tif.pages[0].tags["InterColorProfile"].value == profile

    Image.fromarray((grey * 255).round().astype(np.uint8), "L").save(tmp_path / "scan.png")
    png = run(EsrganJob(tmp_path / "scan.png", tmp_path / "scan-x4.png", models["x4"], tile=32, overlap=8))
    with Image.open(png.path) as im:
        assert im.mode == "L" and im.size == (192, 160)
    with_alpha = np.stack([(grey * 255).round(), np.full_like(grey, 255)], axis=-1).astype(np.uint8)
    with_alpha[:, :10, 1] = 0
    Image.fromarray(with_alpha, "LA").save(tmp_path / "cut.png")
    cut = run(EsrganJob(tmp_path / "cut.png", tmp_path / "cut-x4.tif", models["x4"], tile=32, overlap=8))
    data = tifffile.imread(cut.path)
    assert data.shape == (160, 192, 2) and data[:, :36, 1].max() == 0 and data[:, 44:, 1].min() == 255

    (tmp_path / "rgb.icc").write_bytes(srgb_icc())
    with pytest.raises(UserError, match=r"^rgb\.icc is an RGB profile, and this result is grey \(as its input\): "
                                        r"choose a GRAY profile\.$"):
        run(EsrganJob(tmp_path / "scan.tif", tmp_path / "x.tif", models["x4"], icc=tmp_path / "rgb.icc"))
    # an RGB input given a grey profile's pixels: the input's grey profile no longer labels RGB pixels
    Image.fromarray((noise(30, 44, seed=3) * 255).round().astype(np.uint8)).save(tmp_path / "rgb.png",
                                                                                 icc_profile=profile)
    coloured = run(EsrganJob(tmp_path / "rgb.png", tmp_path / "rgb-x4.tif", models["x4"], tile=32, overlap=8))
    with tifffile.TiffFile(coloured.path) as tif:
        assert tif.pages[0].shape == (120, 176, 3) and "InterColorProfile" not in tif.pages[0].tags
    assert leftovers(tmp_path) == []


def test_a_profile_the_user_gives_replaces_the_inputs(models, tmp_path):
    """`--icc FILE` / `EsrganJob.icc`: that profile is embedded instead of the input's (also when the
    input is read by region); a file that is not a profile is one sentence, before any work."""
    icc = srgb_icc()
    theirs = bytearray(icc)
    theirs[24:36] = bytes([7, 228, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5])  # another profile: another creation date
    (tmp_path / "lab.icc").write_bytes(bytes(theirs))
    (tmp_path / "notes.icc").write_bytes(b"not a profile" * 20)
    pixels = (noise(30, 44, seed=32) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "art.png", icc_profile=icc)
    for max_pixels in (10**6, 1000):
        result = run(EsrganJob(tmp_path / "art.png", tmp_path / "art.tif", models["x4"], tile=32, overlap=8,
                               icc=tmp_path / "lab.icc", max_pixels=max_pixels))
        with tifffile.TiffFile(result.path) as tif:
            assert tif.pages[0].tags["InterColorProfile"].value == bytes(theirs) != icc
    png = run(EsrganJob(tmp_path / "art.png", tmp_path / "art.png.png", models["x4"], tile=32, overlap=8,
                        icc=tmp_path / "lab.icc"))
    with Image.open(png.path) as im:
        assert im.info["icc_profile"] == bytes(theirs)
    with pytest.raises(UserError, match=r"^notes\.icc is not an ICC profile\.$"):
        run(EsrganJob(tmp_path / "art.png", tmp_path / "bad.tif", models["x4"], icc=tmp_path / "notes.icc"))
    done = run_blk("upscale", str(tmp_path / "art.png"), "--model", str(models["x4"]), "--tile", "32", "--overlap",
                   "8", "--icc", str(tmp_path / "lab.icc"), "--out", str(tmp_path / "cli.tif"),
                   env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    with tifffile.TiffFile(tmp_path / "cli.tif") as tif:
        assert tif.pages[0].tags["InterColorProfile"].value == bytes(theirs)
    assert not (tmp_path / "bad.tif").exists() and leftovers(tmp_path) == []


def test_cancel_leaves_no_partial_output(models, tmp_path):
    Image.fromarray((noise(64, 64) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "out.tif"
    out.write_bytes(b"an earlier result")
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        cancel.set()

    with pytest.raises(Cancelled, match="cancelled"):
        run(EsrganJob(tmp_path / "in.png", out, models["x4"], tile=32, overlap=8, batch=1),
            progress=progress, cancel=cancel)
    assert seen == [1]  # stopped at the first tile boundary after the click
    assert out.read_bytes() == b"an earlier result" and leftovers(tmp_path) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A size-limited tmpfs (needs root and a kernel that lets us mount)."""
    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{size}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(folder)
        return folder

    mounted: list[Path] = []
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")
    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_is_one_sentence_and_leaves_nothing(models, tmp_path, tiny_disk):
    Image.fromarray((noise(72, 100) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    # 64 KB and 720 KB: the canvas (400×288×3×2 = 675 KB) and half the result's 8-bit pixels (173 KB) do not fit:
    # said before any work; 868 KB: they do (844 KB), but the canvas beside the result's TIFF (201 KB) does not
    for size, stage in (("64k", " KB free and this job needs about 844 KB"),  # it said "1 MB free … 1 MB"
                        ("720k", "this job needs about 844 KB (its working canvases and the result)"),
                        ("868k", "is full; free some space")):
        disk = tiny_disk(size)
        with pytest.raises(UserError, match="free some space") as caught:
            run(EsrganJob(tmp_path / "in.png", disk / "out.tif", models["x4"], tile=48, overlap=8))
        assert stage in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
        assert list(disk.iterdir()) == [], size
    # a ×16 job's second pass (1600×1152 px: 11 MB of canvas beside the first's) is said before the first pass
    # runs, not after it (at gigapixel sizes, hours later)
    disk = tiny_disk("8m")
    with pytest.raises(UserError, match="has 8 MB free and this job needs about 14 MB"):
        run(EsrganJob(tmp_path / "in.png", disk / "big.tif", models["x4"], scale=16, tile=48, overlap=8),
            progress=lambda done, total: pytest.fail("a tile ran"))
    assert list(disk.iterdir()) == []


def test_cli_upscale(models, tmp_path, capsys):
    pixels = noise(30, 40, seed=17)
    save_16bit_tiff(tmp_path / "scan.tif", pixels, resolution=(600, 600), resolutionunit="INCH")
    out = tmp_path / "scan-x4.tif"
    done = run_blk("--workspace", str(tmp_path / "ws"), "upscale", str(tmp_path / "scan.tif"), "--path", "esrgan",
                   "--model", str(models["x4"]), "--scale", "4", "--tile", "32", "--overlap", "8", "--16bit",
                   "--dpi", "300", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "160×120, 16-bit" in done.stdout and "tile 2/2" in done.stderr
    # the plan and its time before the first tile, as the app and the diffusion path show them (it showed none)
    plan = done.stderr.splitlines()[0]
    assert plan == ("2 tiles of up to 32 px in 1 model pass of ×4. Time: shown once the first tiles are done (no "
                    "earlier job with these settings)."), done.stderr
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].dtype == np.uint16 and tif.pages[0].shape == (120, 160, 3)
        x, y = tif.pages[0].tags["XResolution"].value
        assert abs(x / y - 300) < 0.01
    # the same entry point in-process (a child process costs seconds of imports on this machine)
    from blk.cli import main

    code = main(["--workspace", str(tmp_path / "ws"), "upscale", str(tmp_path / "scan.tif"),
                 "--model", str(tmp_path / "scan.tif"), "--out", str(tmp_path / "x.tif")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: scan.tif is not a model file") and len(err.splitlines()) == 1
    stretched = ["--workspace", str(tmp_path / "ws"), "upscale", str(tmp_path / "scan.tif"), "--model",
                 str(models["x4"]), "--size", "160x40", "--out", str(tmp_path / "stretched.tif")]
    assert main(stretched) == 2 and not (tmp_path / "stretched.tif").exists()
    assert "160×40 would stretch the 40×30 image; 160x120 or 53x40 keep its shape (--stretch to stretch it anyway)." \
        in capsys.readouterr().err
    assert main(stretched + ["--stretch", "--tile", "32", "--overlap", "8"]) == 0
    assert tifffile.imread(tmp_path / "stretched.tif").shape[:2] == (40, 160)
    # two model passes, the second from a copy shrunk across (never down the stretched axis: 30 px, not 10)
    long = [w if w != "160x40" else "640x40" for w in stretched]
    assert main(long + ["--stretch", "--tile", "32", "--overlap", "8"]) == 0
    assert tifffile.imread(tmp_path / "stretched.tif").shape[:2] == (40, 640)
    # a bare name is the file of that name in workspace/models/upscalers/, where the studio keeps them
    kept = tmp_path / "ws" / "models" / "upscalers" / "my-x4.pth"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(Path(models["x4"]).read_bytes())
    assert main(["--workspace", str(tmp_path / "ws"), "upscale", str(tmp_path / "scan.tif"), "--model", "my-x4.pth",
                 "--tile", "32", "--overlap", "8", "--16bit", "--out", str(tmp_path / "named.tif")]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "named.tif"), tifffile.imread(out))  # the same model
    assert main(["--workspace", str(tmp_path / "ws"), "upscale", str(tmp_path / "scan.tif"), "--model", "gone.pth",
                 "--out", str(tmp_path / "y.tif")]) == 2
    assert "The model file gone.pth does not exist." in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["upscale", "in.png", "--path", "magic", "--model", "m.pth"])  # only esrgan and diffusion exist
    assert refused.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err
    # tile and overlap are checked before the model is looked for (and a gigapixel input hashed)
    assert main(["--workspace", str(tmp_path / "ws"), "upscale", str(tmp_path / "scan.tif"), "--model", "gone.pth",
                 "--tile", "20", "--overlap", "16", "--out", str(tmp_path / "z.tif")]) == 2
    assert "An overlap of 16 px needs tiles of at least 32 px; 20 px was asked for." in capsys.readouterr().err
    # an option of the other path would do nothing: said, not ignored
    for extra, words in ((["--lora", "t.safetensors:0.5", "--denoise", "0.4"],
                          "--lora, --denoise are for the diffusion path and would do nothing with --path esrgan."),
                         (["--path", "diffusion", "--alpha", "lanczos"],
                          "--alpha is for the esrgan path and would do nothing with --path diffusion.")):
        assert main(["--workspace", str(tmp_path / "ws"), "upscale", str(tmp_path / "scan.tif"), "--model", "gone.pth",
                     *extra]) == 2
        assert words in capsys.readouterr().err
    for flag, value, words in (("--tile", "0", "0 is outside the range (16 or more)"),
                               ("--overlap", "-4", "-4 is outside the range (0 or more)")):
        with pytest.raises(SystemExit) as refused:  # 0 no longer means automatic: leaving --tile out does
            main(["upscale", "in.png", "--model", "m.pth", flag, value])
        assert refused.value.code == 2 and words in capsys.readouterr().err


def test_a_result_or_print_copy_that_would_overwrite_the_input_is_one_sentence_before_any_work(tmp_path):
    from blk.upscale.canvas import check_outputs, print_path

    image = tmp_path / "in.tif"
    tifffile.imwrite(image, (noise(16, 16) * 255).astype(np.uint8))
    before = image.read_bytes()
    model = rrdb_file(tmp_path / "x4.pth")
    with pytest.raises(UserError, match="would overwrite the input"):
        run(EsrganJob(image, image, model, scale=2))
    clash = tmp_path / "out.tif"
    with pytest.raises(UserError, match="print copy would overwrite"):
        check_outputs(print_path(clash), clash, 300)
    with pytest.raises(UserError, match="above 0 and at most 100000 dpi"):
        run(EsrganJob(image, clash, model, scale=2, print_dpi=0))
    assert image.read_bytes() == before and not clash.exists() and leftovers(tmp_path) == []
    check_outputs(image, clash, 300)  # distinct names: nothing to say


def test_pixels_that_are_not_square_keep_both_resolutions(models, tmp_path):
    """A scan or fax at 300 × 150 dpi: the result said 300 × 300 (the horizontal value both ways), so it printed
    at half its height. Both readers, both formats, keep the pair; square pixels keep one number."""
    pixels = (noise(30, 44, seed=33) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "fax.png", dpi=(300, 150))
    tifffile.imwrite(tmp_path / "fax.tif", pixels, photometric="rgb", resolution=(300, 150), resolutionunit="INCH")
    for name in ("fax.png", "fax.tif"):
        whole, region = open_input(tmp_path / name), open_input(tmp_path / name, max_pixels=1000)
        assert whole.resolution == region.resolution and [round(v) for v in whole.resolution] == [300, 150], name
    result = run(EsrganJob(tmp_path / "fax.png", tmp_path / "fax-big.tif", models["x4"], tile=32, overlap=8))
    with tifffile.TiffFile(result.path) as tif:
        tags = tif.pages[0].tags
        assert [round(v[0] / v[1]) for v in (tags["XResolution"].value, tags["YResolution"].value)] == [300, 150]
    result = run(EsrganJob(tmp_path / "fax.tif", tmp_path / "fax-big.png", models["x4"], tile=32, overlap=8))
    with Image.open(result.path) as im:
        assert [round(v) for v in im.info["dpi"]] == [300, 150]
    Image.fromarray(pixels).save(tmp_path / "square.png", dpi=(300, 300))
    assert open_input(tmp_path / "square.png").resolution == 300.0
    # the print copy keeps the printed shape: its resolution across is the one asked, down as tall as the pixels
    result = run(EsrganJob(tmp_path / "fax.tif", tmp_path / "print-me.tif", models["x4"], tile=32, overlap=8,
                           print_dpi=600))
    with tifffile.TiffFile(result.print_path) as tif:
        tags = tif.pages[0].tags
        assert [round(v[0] / v[1]) for v in (tags["XResolution"].value, tags["YResolution"].value)] == [600, 300]
    # stored sideways (EXIF orientation 6): turned upright, its resolutions swap as its sides do
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "sideways.jpg", dpi=(300, 150), exif=exif.tobytes())
    for turned in (open_input(tmp_path / "sideways.jpg"), open_input(tmp_path / "sideways.jpg", max_pixels=1000)):
        assert (turned.width, turned.height, turned.resolution) == (30, 44, (150.0, 300.0)), turned.by_region


def test_a_x1_model_asked_to_enlarge_says_that_lanczos_does_it(tmp_path):
    """A ×1 model (a restorer) asked for ×4 ran once and Lanczos made the whole ×4, without a word (elsewhere
    Lanczos enlarges at most 1.5× after a model)."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    torch.save(Compact(num_feat=8, num_conv=2, upscale=1).state_dict(), tmp_path / "1x-Restore.pth")
    Image.fromarray((noise(20, 24, seed=34) * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    notes, plans = [], []
    result = run(EsrganJob(tmp_path / "in.png", tmp_path / "out.tif", tmp_path / "1x-Restore.pth", tile=32,
                           overlap=8), log=notes.append, on_plan=plans.append)
    assert (result.width, result.height) == (96, 80)
    said = "This is a ×1 model: it restores without enlarging, so the 4× enlargement after it is plain Lanczos"
    assert any(n.startswith(said) for n in notes) and said in plans[0].sentence()
    notes.clear()
    run(EsrganJob(tmp_path / "in.png", tmp_path / "same.tif", tmp_path / "1x-Restore.pth", scale=1.25, tile=32,
                  overlap=8), log=notes.append)
    assert not any("×1 model" in n for n in notes)  # a touch of Lanczos, as after any model


def test_tiles_too_small_for_their_overlap_are_refused_before_the_model_loads(tmp_path):
    """From the Upscale tab (the command line checks its flags itself) the tiler said so only after the model
    had loaded and the input had been hashed: minutes for a gigapixel file."""
    Image.fromarray((noise(20, 24, seed=35) * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "broken.pth").write_bytes(b"not a model")  # loading it would be another sentence
    for tile, overlap, said in ((16, 12, "An overlap of 12 px needs tiles of at least 24 px; 16 px was asked for."),
                                (None, -1, "Tile size must be positive and overlap cannot be negative.")):
        with pytest.raises(UserError) as caught:
            run(EsrganJob(tmp_path / "in.png", tmp_path / "out.tif", tmp_path / "broken.pth", tile=tile,
                          overlap=overlap))
        assert str(caught.value) == said
