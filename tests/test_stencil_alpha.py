"""Ink to alpha: GEGL colour-to-alpha values, exact round trip at 8 and 16 bits, paper estimate, batch, CLI."""

import colorsys

import numpy as np
import pytest
import pyvips
from PIL import Image

from blk.errors import UserError
from blk.stencil.alpha import (AlphaSettings, color_to_alpha, color_to_alpha_levels, convert_batch, convert_file,
                               estimate_paper, parse_paper)
from tests.conftest import run_blk

CREAM = np.array([240, 232, 214]) / 255.0


def write_png16(path, levels):
    """A 16-bit PNG written by libvips directly (not by the code under test)."""
    interpretation = "rgb16" if levels.shape[2] >= 3 else "grey16"
    pyvips.Image.new_from_array(np.ascontiguousarray(levels.astype(np.uint16)),
                                interpretation=interpretation).write_to_file(str(path))


def read_levels(path):
    """Decode any PNG at its own depth with libvips (independent of the code under test)."""
    array = pyvips.Image.new_from_file(str(path)).numpy()
    return array if array.ndim == 3 else array[..., None]


def composite_over(levels, paper, peak):
    rgba = levels.astype(np.float64) / peak
    return (rgba[..., 3:] * rgba[..., :3] + (1 - rgba[..., 3:]) * paper) * peak


def test_white_paper_is_the_closed_form():
    x = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    out = color_to_alpha(x, [1, 1, 1])
    alpha = 1 - x.min(axis=2)
    assert np.allclose(out[..., 3], alpha, atol=1e-6)
    expected = 1 - (1 - x) / alpha[..., None]
    assert np.allclose(out[..., :3], expected, atol=1e-5)
    levels = color_to_alpha_levels(x, [1, 1, 1], bits=8)
    assert np.abs(levels[..., 3].astype(int) - np.round(alpha * 255)).max() == 0


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("paper", ["#ffffff", "#f0e8d6", "#3380e6"])
def test_file_round_trip_over_the_paper_within_one_level(tmp_path, bits, paper):
    peak = 255 if bits == 8 else 65535
    rng = np.random.default_rng(bits)
    x = rng.integers(0, peak + 1, (40, 48, 3))
    source = tmp_path / "scan.png"
    if bits == 8:
        Image.fromarray(x.astype(np.uint8)).save(source)
    else:
        write_png16(source, x)

    result = convert_file(source, tmp_path / "out" / "scan.png", AlphaSettings(paper=paper))
    assert result.bits == bits and result.paper == paper
    levels = read_levels(result.output)
    assert levels.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert levels.shape == (40, 48, 4)
    error = np.abs(composite_over(levels, parse_paper(paper), peak) - x)
    assert error.max() <= 1.0
    assert error.mean() < 0.3  # mostly far better than the bound
    if bits == 16:  # the written file really holds 16 bits: not 8-bit values scaled up
        assert np.any(levels[..., 3] % 257 != 0)


def test_16bit_tiff_input_gives_16bit_png(tmp_path):
    import tifffile

    x = np.random.default_rng(3).integers(0, 65536, (16, 20, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "scan.tif", x, photometric="rgb")
    result = convert_file(tmp_path / "scan.tif", tmp_path / "scan.png", AlphaSettings(paper="#ffffff"))
    levels = read_levels(result.output)
    assert result.bits == 16 and levels.dtype == np.uint16
    assert Image.open(result.output).tile[0][3] == "RGBA;16B"
    assert np.abs(composite_over(levels, np.ones(3), 65535) - x).max() <= 1.0


def test_paper_becomes_clear_ink_opaque_and_coloured_ink_keeps_its_hue():
    paper = CREAM
    pixels = np.array([[paper, [0, 0, 0], [0.1, 0.2, 0.8]]], dtype=np.float32)
    out = color_to_alpha(pixels, paper)
    assert out[0, 0, 3] == 0
    assert out[0, 1, 3] == pytest.approx(1.0)
    assert np.allclose(out[0, 1, :3], 0)
    white = color_to_alpha(pixels, [1, 1, 1])
    hue_in = colorsys.rgb_to_hsv(0.1, 0.2, 0.8)[0]
    hue_out = colorsys.rgb_to_hsv(*white[0, 2, :3])[0]
    assert hue_out == pytest.approx(hue_in, abs=1e-3)
    assert white[0, 2, 3] == pytest.approx(0.9)  # 1 − min(R, G, B)


def synthetic_scan(rng, paper_levels, size=(160, 200)):
    """Paper with grain, a few glare specks and dark ink strokes over about a quarter of it."""
    height, width = size
    scan = np.array(paper_levels, float) + rng.normal(0, 1.5, (height, width, 3))
    for row in range(10, height - 10, 12):  # horizontal strokes, 4 px thick
        scan[row:row + 4, 20:width - 20] = [35, 30, 40] + rng.normal(0, 3, (4, width - 40, 3))
    scan[rng.random((height, width)) < 0.002] = 255  # dust and glare brighter than the paper
    return np.clip(np.round(scan), 0, 255)


def test_auto_paper_estimate_is_within_a_few_levels():
    rng = np.random.default_rng(7)
    paper_levels = [238, 229, 207]
    scan = synthetic_scan(rng, paper_levels)
    estimate = estimate_paper((scan / 255).astype(np.float32)) * 255
    assert np.abs(estimate - paper_levels).max() <= 3
    assert np.all(estimate >= np.array(paper_levels) - 0.5)  # at or just above the paper, never below


def test_auto_paper_clears_the_page_and_keeps_the_strokes(tmp_path):
    scan = synthetic_scan(np.random.default_rng(8), [238, 229, 207])
    Image.fromarray(scan.astype(np.uint8)).save(tmp_path / "page.png")
    result = convert_file(tmp_path / "page.png", tmp_path / "out.png", AlphaSettings(paper="auto"))
    alpha = read_levels(result.output)[..., 3].astype(int)
    assert np.median(alpha[0:8]) <= 6  # bare paper: a faint veil at most
    ink = np.array([35, 30, 40])
    expected = np.max((np.array([238, 229, 207]) - ink) / [238, 229, 207]) * 255  # GEGL: max over channels
    assert abs(np.median(alpha[10:14, 40:160]) - expected) <= 4  # ink strokes keep their density
    assert alpha[10:14, 40:160].min() >= 200


def test_transparency_threshold_and_opacity_threshold():
    grey = np.array([[[0.8, 0.8, 0.8], [0.95, 0.95, 0.95], [0.4, 0.4, 0.4]]], dtype=np.float32)
    cleared = color_to_alpha(grey, [1, 1, 1], tt=0.1)
    assert cleared[0, 1, 3] == 0  # within tt of the paper: fully transparent
    assert cleared[0, 0, 3] == pytest.approx((0.2 - 0.1) / (1 - 0.1), abs=1e-6)
    assert np.allclose(cleared[0, 0, :3], 0.0, atol=1e-6)  # GEGL un-mixes from c' = c + (x − c)·tt/d
    opaque = color_to_alpha(grey, [1, 1, 1], ot=0.5)
    assert opaque[0, 2, 3] == 1 and np.allclose(opaque[0, 2, :3], 0.4)  # beyond ot: untouched and opaque
    assert opaque[0, 0, 3] == pytest.approx(0.2 / 0.5)
    assert np.allclose(opaque[0, 0, :3], 0.5, atol=1e-6)
    # ot below 1 still round-trips exactly at tt = 0
    x = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    out = color_to_alpha(x, CREAM, ot=0.3)
    assert np.abs(out[..., 3:] * out[..., :3] + (1 - out[..., 3:]) * CREAM - x).max() < 1e-5
    with pytest.raises(UserError, match="tt < ot"):
        AlphaSettings(tt=0.5, ot=0.4).checked()
    with pytest.raises(UserError, match="#RRGGBB"):
        parse_paper("cream")


def test_existing_alpha_multiplies():
    rng = np.random.default_rng(2)
    rgba = rng.random((8, 8, 4)).astype(np.float32)
    out = color_to_alpha(rgba, [1, 1, 1])
    assert np.allclose(out[..., 3], rgba[..., 3] * (1 - rgba[..., :3].min(axis=2)), atol=1e-6)
    levels = color_to_alpha_levels(rgba, [1, 1, 1], bits=8).astype(float)
    assert np.abs(levels[..., 3] - out[..., 3] * 255).max() <= 0.5 + 1e-3


def make_batch(root):
    rng = np.random.default_rng(5)
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / "sub" / "b.jpg")
    write_png16(root / "sub" / "deeper" / "c16.png", rng.integers(0, 65536, (10, 10, 3)))
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "notes.txt").write_text("not an image")
    whole = (root / "sub" / "deeper" / "c16.png").read_bytes()
    (root / "sub" / "deeper" / "cut16.png").write_bytes(whole[:len(whole) // 2])  # header fine, data cut


def test_batch_reports_the_bad_file_and_writes_the_others(tmp_path):
    make_batch(tmp_path / "scans")
    result = convert_batch(tmp_path / "scans", tmp_path / "out", AlphaSettings(paper="#ffffff"))
    written = sorted(str(item.output.relative_to(tmp_path / "out")) for item in result.written)
    assert written == ["a.png", "sub/b.png", "sub/deeper/c16.png"]
    assert [item.bits for item in sorted(result.written, key=lambda i: str(i.output))][-1] == 16
    assert sorted(source.name for source, _ in result.failed) == ["broken.png", "cut16.png"]
    for source, reason in result.failed:
        assert reason.startswith(source.name) and "\n" not in reason  # one sentence naming the file
    everything = [p.name for p in (tmp_path / "out").rglob("*")]
    assert not any(name.startswith(".blk-tmp-") for name in everything)
    assert "broken.png" not in everything and "cut16.png" not in everything


def test_batch_into_a_subfolder_skips_its_outputs_and_never_overwrites_a_scan(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(scans / "a.png")
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(scans / "a.jpg")
    names = []
    for _ in range(2):
        result = convert_batch(scans, scans / "alpha")
        names.append([(p.source.name, p.output.name) for p in result.written])
    assert names == [[("a.jpg", "a.png"), ("a.png", "a-2.png")], [("a.jpg", "a-3.png"), ("a.png", "a-4.png")]]
    with pytest.raises(UserError, match="other than"):
        convert_batch(scans, scans)
    with pytest.raises(UserError, match="replace the scans"):
        convert_batch(scans / "a.png", scans)


def test_same_named_scans_and_a_second_conversion_never_overwrite_a_result(tmp_path):
    """scan.png and scan.jpg (one batch, or one after another as uploads are) and the same scan converted again
    later each keep their own PNG: scan.png, scan-2.png, scan-3.png, the earlier files byte for byte."""
    ink, grey = tmp_path / "ink", tmp_path / "grey"
    ink.mkdir(), grey.mkdir()
    Image.fromarray(np.full((6, 6, 3), 20, np.uint8)).save(ink / "scan.png")  # nearly black: nearly opaque
    Image.fromarray(np.full((6, 6, 3), 200, np.uint8)).save(grey / "scan.jpg")  # light grey: faint
    out = tmp_path / "out"
    first = convert_batch(ink / "scan.png", out, AlphaSettings(paper="#ffffff")).written[0]
    second = convert_batch(grey / "scan.jpg", out, AlphaSettings(paper="#ffffff")).written[0]
    assert (first.output.name, second.output.name) == ("scan.png", "scan-2.png")
    kept = {path.name: path.read_bytes() for path in out.iterdir()}
    again = convert_batch(ink / "scan.png", out, AlphaSettings(paper="#ffffff")).written[0]
    assert again.output.name == "scan-3.png"
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    alphas = [int(read_levels(out / name)[0, 0, 3]) for name in ("scan.png", "scan-2.png", "scan-3.png")]
    assert alphas[0] == alphas[2] == 235 and alphas[1] == 55  # each PNG holds its own scan


def disc_on_transparency(path, hidden=(0, 255, 0)):
    """A red disc (#c82828) on a fully transparent ground whose hidden colour is green."""
    yy, xx = np.mgrid[:64, :64]
    inside = (yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = hidden
    rgba[inside] = [200, 40, 40, 255]
    Image.fromarray(rgba, "RGBA").save(path)
    return inside


def test_an_image_already_transparent_keeps_its_ink_and_its_transparency(tmp_path):
    """The disc is not paper: it keeps its ink (white paper, as GIMP, and a note says why); the ground stays
    clear. A converted alpha is the input's alpha times the computed one."""
    inside = disc_on_transparency(tmp_path / "disc.png")
    result = convert_file(tmp_path / "disc.png", tmp_path / "out.png", AlphaSettings(paper="auto"))
    assert result.paper == "#ffffff" and "no paper shows" in result.note
    levels = read_levels(result.output).astype(int)
    assert (levels[~inside, 3] == 0).all()  # transparent stays transparent
    assert (levels[inside, 3] == round((1 - 40 / 255) * 255)).all()  # white paper: α = 1 − min(R, G, B)
    assert (levels[inside, 0] > 150).all() and (levels[inside, 1:3] < 10).all()  # still red
    assert np.abs(composite_over(levels[inside][None], np.ones(3), 255) - [200, 40, 40]).max() <= 1


def test_a_scan_with_transparent_corners_still_estimates_its_paper(tmp_path):
    """A deskewed scan saved with transparent corners: the paper comes from the opaque pixels only (not from the
    corners' hidden black), the strokes keep their density and the corners stay clear."""
    rng = np.random.default_rng(9)
    scan = synthetic_scan(rng, [238, 229, 207])
    corner = np.add.outer(np.arange(160), np.arange(200)) < 40
    rgba = np.dstack([scan, np.full((160, 200), 255)]).astype(np.uint8)
    rgba[corner] = [0, 0, 0, 0]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "deskewed.png")
    result = convert_file(tmp_path / "deskewed.png", tmp_path / "out.png", AlphaSettings(paper="auto"))
    assert result.note == ""
    assert np.abs(parse_paper(result.paper) * 255 - [238, 229, 207]).max() <= 3
    alpha = read_levels(result.output)[..., 3].astype(int)
    assert (alpha[corner] == 0).all() and alpha[10:14, 60:160].min() >= 200


@pytest.mark.parametrize("paper", ["auto", "#ffffff"])
def test_a_fully_transparent_image_is_skipped_with_one_sentence(tmp_path, paper):
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(scans / "empty.png")
    disc_on_transparency(scans / "disc.png")
    result = convert_batch(scans, tmp_path / "out", AlphaSettings(paper=paper))
    assert [item.output.name for item in result.written] == ["disc.png"]
    assert result.failed == [(scans / "empty.png", "empty.png is fully transparent, so there is nothing to "
                                                   "convert; it was skipped.")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["disc.png"]


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_rgb_png_without_exif_stays_16bit(tmp_path, channels):
    """Many 16-bit PNGs carry no EXIF chunk (GIMP, Krita, scanners); Pillow's header then loses their depth."""
    x = np.random.default_rng(11).integers(0, 65536, (12, 14, channels)).astype(np.uint16)
    if channels == 4:
        x[..., 3] = np.maximum(x[..., 3], 1)  # some alpha everywhere: no pixel is fully transparent
    source = tmp_path / "scan16rgb.png"
    pyvips.Image.new_from_array(x, interpretation="rgb16").write_to_file(str(source), strip=True)
    assert b"eXIf" not in source.read_bytes() and read_levels(source).dtype == np.uint16
    result = convert_file(source, tmp_path / "out.png", AlphaSettings(paper="#f0e8d6"))
    levels = read_levels(result.output)
    assert result.bits == 16 and levels.dtype == np.uint16 and levels.shape == (12, 14, 4)
    assert np.any(levels % 257 != 0)  # 16 bits of information, not 8-bit values scaled up
    computed = color_to_alpha_levels((x / 65535.0).astype(np.float32), parse_paper("#f0e8d6"), bits=16)
    assert np.array_equal(levels, computed)  # the input's own 16-bit values (and alpha) went in


def test_16bit_planar_tiff_stays_16bit(tmp_path):
    import tifffile

    x = np.random.default_rng(12).integers(0, 65536, (10, 12, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "scan.tif", np.moveaxis(x, 2, 0), photometric="rgb", planarconfig="separate")
    result = convert_file(tmp_path / "scan.tif", tmp_path / "scan.png", AlphaSettings(paper="#ffffff"))
    levels = read_levels(result.output)
    assert result.bits == 16 and levels.dtype == np.uint16
    assert np.abs(composite_over(levels, np.ones(3), 65535) - x).max() <= 1.0


def test_cli_alpha_folder(tmp_path):
    make_batch(tmp_path / "scans")
    done = run_blk("stencil", "alpha", str(tmp_path / "scans"), "--paper", "#ffffff", "--out", str(tmp_path / "out"))
    assert done.returncode == 1, done.stderr  # one file failed, the rest are written
    assert "failed: broken.png" in done.stdout and "failed: cut16.png" in done.stdout
    assert "converted 3, failed 2" in done.stdout
    assert read_levels(tmp_path / "out" / "sub" / "deeper" / "c16.png").dtype == np.uint16
    assert read_levels(tmp_path / "out" / "a.png").shape == (12, 16, 4)


def test_cli_alpha_single_file_and_user_errors(tmp_path):
    Image.fromarray(np.full((6, 6, 3), 100, np.uint8)).save(tmp_path / "ink.png")
    done = run_blk("stencil", "alpha", str(tmp_path / "ink.png"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "ink.png").is_file()
    again = run_blk("stencil", "alpha", str(tmp_path / "ink.png"), "--out", str(tmp_path / "out"))
    assert again.returncode == 0 and f"→ {tmp_path / 'out' / 'ink-2.png'} (8-bit" in again.stdout
    bad = run_blk("stencil", "alpha", str(tmp_path / "ink.png"), "--paper", "beige", "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: The paper colour must be")
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = run_blk("stencil", "alpha", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "neither an image file nor a folder" in missing.stderr


def test_a_real_scanned_page_from_scikit_image(tmp_path):
    """A photographed/scanned page we did not draw (scikit-image's `data/page.png`, shipped in its wheel, read as a
    file so nothing is downloaded): uneven light, real text. Over the estimated paper it gives the page back."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("skimage")
    assert spec is not None, "scikit-image (requirements-dev.txt) ships the sample page"
    page = Path(spec.submodule_search_locations[0]) / "data" / "page.png"
    result = convert_file(page, tmp_path / "page.png", AlphaSettings(paper="auto"))
    paper = parse_paper(result.paper)
    assert min(paper) > 200 / 255  # the estimate is the bright paper, not the ink
    levels = read_levels(result.output)
    source = np.repeat(np.asarray(Image.open(page).convert("L"), np.float64)[..., None], 3, axis=2)
    assert levels.shape == source.shape[:2] + (4,)
    assert np.abs(composite_over(levels, paper, 255) - source).max() <= 1.0
    alpha = levels[..., 3] / 255.0
    grey = source[..., 0]
    assert alpha[grey < np.percentile(grey, 5)].mean() > 0.7  # the text stays
    assert alpha[grey > np.percentile(grey, 60)].mean() < 0.15  # the paper clears
