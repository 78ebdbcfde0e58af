"""The resample between and after model passes (and the diffusion path's plain enlargement): Lanczos to the
exact size, centre-aligned, in bounded memory; and the exact size a fractional scale asks for."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from blk.upscale import esrgan
from blk.upscale.canvas import Canvas
from blk.upscale.esrgan import resample, target_size

_names = itertools.count()


def resampled(levels: np.ndarray, width: int, height: int, folder) -> np.ndarray:
    """uint16 (h, w, c) levels through `esrgan.resample`, as float levels."""
    k = next(_names)
    canvas = Canvas(folder / f"{k}.in.canvas", levels.shape[1], levels.shape[0], levels.shape[2])
    canvas.write_raw(0, 0, levels)
    out = resample(canvas, width, height, folder / f"{k}.out.canvas")
    try:
        return out.read_raw(0, 0, width, height).astype(float)
    finally:
        canvas.remove()
        out.remove()


def noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth-ish random 16-bit levels (bilinear-enlarged random cells: Lanczos rings little on them)."""
    cells = np.random.default_rng(seed).random((h // 3 + 2, w // 3 + 2, channels)).astype(np.float32)
    planes = [np.asarray(Image.fromarray(cells[..., c], "F").resize((w, h), Image.Resampling.BILINEAR))
              for c in range(channels)]
    return np.rint(np.stack(planes, axis=2) * 65535).clip(0, 65535).astype(np.uint16)


@pytest.mark.parametrize("size", [(45, 30), (90, 60), (45, 60), (60, 20), (60, 14), (21, 14)])  # ×1.5, ×3, mixed, shrink
def test_a_resample_is_centre_aligned_so_it_commutes_with_a_flip(size, tmp_path):
    """Enlarging went through libvips' resize, which enlarges with a bicubic affine sampling output pixel i at
    i / scale − 0.5: half an output pixel right and down. Flipping the input, resampling and flipping back then
    differed by up to 236 levels (8-bit) from the plain resample; a centre-aligned one gives the same."""
    levels = noise(20, 30)
    width, height = size
    plain = resampled(levels, width, height, tmp_path)
    for axis in (0, 1):
        flipped = resampled(np.ascontiguousarray(np.flip(levels, axis)), width, height, tmp_path)
        assert np.abs(np.flip(flipped, axis) - plain).max() <= 2, axis  # 16-bit levels: rounding only


@pytest.mark.parametrize("width", [45, 90])
def test_an_enlarged_ramp_lands_where_centre_aligned_sampling_puts_it(width, tmp_path):
    """Output pixel i samples the input at (i + 0.5) / scale − 0.5; a ramp of 2000 levels a pixel shows where
    (a linear ramp passes Lanczos unchanged away from the edges). libvips sampled at i / scale − 0.5."""
    ramp = np.tile((np.arange(30) * 2000).astype(np.uint16)[None, :, None], (20, 1, 3))
    row = resampled(ramp, width, 20, tmp_path)[10, :, 0] / 2000  # in input pixels
    centres = (np.arange(width) + 0.5) * 30 / width - 0.5
    inside = slice(3 * width // 30, -3 * width // 30)  # beyond Lanczos' reach of the edges
    # Lanczos bends a ramp by 0.02 px at most (its weights' first moment); the old offset was 1/3 or 1/6 px
    assert np.abs(row[inside] - centres[inside]).max() < 0.03


def test_an_enlargement_in_bands_gives_the_pixels_of_one_whole_lanczos(tmp_path, monkeypatch):
    """The enlargement reads a band of rows at a time (memory bounded whatever the size), each with the rows the
    kernel reaches beyond it: the same pixels as Pillow's Lanczos of the whole image, for bands of any height."""
    levels = noise(37, 53, seed=4)
    for width, height in ((80, 56), (159, 111), (318, 222), (80, 30)):
        whole = np.stack([np.asarray(Image.fromarray(levels[..., c].astype(np.float32), "F").resize(
            (width, height), Image.Resampling.LANCZOS)) for c in range(3)], axis=2)
        whole = np.clip(np.rint(whole), 0, 65535)
        for rows in (1, 3, 7, 1000):
            monkeypatch.setattr(esrgan, "RESAMPLE_BAND_BYTES", rows * width * 3 * 4)
            assert np.abs(resampled(levels, width, height, tmp_path) - whole).max() <= 1, (width, height, rows)


def test_cancel_stops_an_enlargement_between_bands_and_leaves_no_file(tmp_path, monkeypatch):
    """A Lanczos enlargement (the diffusion path's, without an upscaler: minutes for a mural) ran to its end
    after Cancel; it now stops at the next band of rows, its half-written canvas removed."""
    import threading

    from blk.upscale.tiler import Cancelled

    class CancelledAfter(threading.Event):
        """Set from the `checks`-th look on, as a Cancel clicked while the bands run."""
        def __init__(self, checks: int):
            super().__init__()
            self.checks = checks

        def is_set(self) -> bool:
            self.checks -= 1
            return self.checks < 0 or super().is_set()

    levels = noise(20, 30)
    canvas = Canvas(tmp_path / "in.canvas", 30, 20, 3)
    canvas.write_raw(0, 0, levels)
    monkeypatch.setattr(esrgan, "RESAMPLE_BAND_BYTES", 4 * 90 * 3 * 4)  # 4 rows a band: 15 bands of 60
    cancel = CancelledAfter(3)
    with pytest.raises(Cancelled):
        resample(canvas, 90, 60, tmp_path / "out.canvas", cancel)
    assert cancel.checks == -1  # stopped at the fourth band, not after the fifteenth
    assert not (tmp_path / "out.canvas").exists()
    done = resample(canvas, 90, 60, tmp_path / "out.canvas", threading.Event())  # not cancelled: all of it
    assert np.abs(done.read_raw(0, 0, 90, 60).astype(float) - resampled(levels, 90, 60, tmp_path)).max() == 0


def test_an_enlargement_with_alpha_is_premultiplied(tmp_path):
    """Colour stored under alpha 0 (here a saturated green) never reaches the visible pixels, a solid colour
    stays that colour up to its soft new edge (its alpha's overshoot is clipped after the division), and solid
    areas beyond the kernel's reach stay solid."""
    rgba = np.zeros((20, 30, 4), np.uint16)
    rgba[..., 1] = 65535  # green under the transparent half
    rgba[:, 15:] = (60000, 10000, 5000, 65535)  # an opaque orange half
    out = resampled(rgba, 45, 30, tmp_path)
    visible = out[..., 3] > 0
    assert (out[..., :3][visible] - [60000, 10000, 5000]).__abs__().max() <= 1  # no green crept in
    # output pixel j is centred on input (j + 0.5) / 1.5 − 0.5; Lanczos-3 reaches 3 input px either side
    assert (out[:, :18, 3] == 0).all() and (out[:, 26:, 3] == 65535).all()


def test_a_fractional_scale_rounds_halves_up():
    """47×33 at ×1.5 is 70.5×49.5: 71×50 (Python's round() gave 70×50, halves to even)."""
    assert target_size(47, 33, 1.5, None) == (71, 50)
    assert target_size(45, 31, 1.5, None) == (68, 47)  # 67.5 → 68, 46.5 → 47
