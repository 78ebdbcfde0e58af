"""What an input's file says, read the same whole (Pillow, up to 32 MP) and by region (libvips): a CMYK file's
colours and the profile its converted pixels carry into the master and the print copy, and a JPEG's resolution
only when the file states one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from blk.upscale.canvas import print_path, srgb_profile
from blk.upscale.esrgan import EsrganJob, run
from blk.upscale.source import open_input
from tests.test_upscale_esrgan import rrdb_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 240, 240)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return rrdb_file(tmp_path_factory.mktemp("model") / "RealESRGAN_x4plus_tiny.pth")


def stripes() -> np.ndarray:
    """Four 16 px stripes of flat colour, 24 px tall."""
    return np.concatenate([np.full((24, 16, 3), c, np.uint8) for c in COLOURS], axis=1)


def cmyk_files(folder) -> dict[str, bool]:
    """CMYK JPEGs and TIFFs of `stripes`, with a press profile embedded (libvips' own) and without one
    (Pillow's plain conversion): name → whether it has a profile."""
    from blk.vips import pyvips

    rgb = pyvips.Image.new_from_array(stripes()).copy(interpretation="srgb")
    press = rgb.icc_export(output_profile="cmyk")  # a CMYK image carrying the press profile it was made for
    press.jpegsave(str(folder / "press.jpg"), Q=100)
    press.tiffsave(str(folder / "press.tif"))
    plain = Image.fromarray(stripes()).convert("CMYK")
    plain.save(folder / "plain.jpg", quality=100)
    plain.save(folder / "plain.tif")
    return {"press.jpg": True, "press.tif": True, "plain.jpg": False, "plain.tif": False}


def description(icc: bytes) -> str:
    return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))


@pytest.mark.parametrize("name", ["press.jpg", "press.tif", "plain.jpg", "plain.tif"])
def test_a_cmyk_file_has_the_same_colours_and_profile_whole_or_by_region(name, tmp_path):
    """Whole, Pillow converted through the profile at the perceptual intent (libvips, by region: relative
    colorimetric), and without a profile plainly (libvips: through its own press profile): the same pixel
    came out (225, 25, 0) or (226, 46, 42), and (30, 200, 40) or (0, 132, 84), by the file's size alone."""
    profiled = cmyk_files(tmp_path)[name]
    whole, region = open_input(tmp_path / name), open_input(tmp_path / name, max_pixels=10)
    assert (whole.by_region, region.by_region) == (False, True)
    a, b = (np.rint(i.source.read(0, 0, 64, 24) * 255) for i in (whole, region))
    assert np.abs(a - b).max() <= 3
    assert whole.icc == region.icc == (srgb_profile() if profiled else None)
    if not profiled:  # the plain formula undoes Pillow's convert("CMYK"): the colours that went in
        assert np.abs(a[12, 8::16] - COLOURS).max() <= 2


def test_a_cmyk_inputs_result_and_print_copy_are_tagged_srgb(model, tmp_path):
    """A CMYK input converted through its profile gives sRGB pixels: the master and the print copy say so (they
    carried no profile at all). An RGB input without a profile keeps an untagged master, and its print copy
    states sRGB, as labs assume it."""
    cmyk_files(tmp_path)
    Image.fromarray(stripes()).save(tmp_path / "untagged.png")
    for name, max_pixels in (("press.jpg", 10**9), ("press.tif", 10), ("untagged.png", 10**9)):
        out = tmp_path / f"{name}.tif"
        run(EsrganJob(tmp_path / name, out, model, tile=32, overlap=8, print_dpi=300, max_pixels=max_pixels))
        for path, tagged in ((out, name != "untagged.png"), (print_path(out), True)):
            with tifffile.TiffFile(path) as tif:
                tags = tif.pages[0].tags
                assert ("InterColorProfile" in tags) == tagged, path.name
                if tagged:
                    assert "sRGB" in description(bytes(tags["InterColorProfile"].value)), path.name


def test_a_jpeg_that_states_no_resolution_gives_none(model, tmp_path):
    """Pillow fills in 72 dpi for a JPEG whose EXIF has no resolution (here an orientation only, JFIF unit 0):
    the master recorded it as if the artist had set it. A stated one (JFIF in inches, or EXIF's) is kept."""
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(stripes()).save(tmp_path / "unstated.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "unstated.jpg") as im:
        assert im.info.get("jfif_unit") == 0 and im.info["dpi"] == (72, 72)  # Pillow's guess
    stated = Image.Exif()
    stated.update({0x0112: 1, 0x011A: 240.0, 0x011B: 240.0, 0x0128: 2})
    Image.fromarray(stripes()).save(tmp_path / "exif.jpg", exif=stated.tobytes(), quality=95)
    Image.fromarray(stripes()).save(tmp_path / "jfif.jpg", dpi=(300, 300), quality=95)
    for name, dpi in (("unstated.jpg", None), ("exif.jpg", 240.0), ("jfif.jpg", 300.0)):
        assert open_input(tmp_path / name).dpi == open_input(tmp_path / name, max_pixels=10).dpi == dpi, name
    result = run(EsrganJob(tmp_path / "unstated.jpg", tmp_path / "out.tif", model, tile=32, overlap=8))
    assert result.parameters["dpi"] is None
    with tifffile.TiffFile(result.path) as tif:
        tags = tif.pages[0].tags
        assert "XResolution" not in tags or tags["ResolutionUnit"].value == 1  # 1: no unit, so no DPI


def test_a_pngs_dpi_reads_as_it_was_set(tmp_path):
    """A PNG stores its resolution per metre: 150 dpi read as 150.0114, and the master was tagged 150.01 dpi."""
    for dpi in (150, 300, 72, 96):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"d{dpi}.png", dpi=(dpi, dpi))
        assert open_input(tmp_path / f"d{dpi}.png").resolution == float(dpi)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("extras", [(0,), (2, 0), (0, 2), (0, 0)])
def test_extra_channels_not_marked_as_transparency_are_left_out_alike_at_any_depth_and_size(bits, extras, tmp_path):
    """A Photoshop TIFF keeps saved selections as extra channels marked "unspecified". libvips took a 4th channel
    for transparency (a 16-bit file came out see-through where the selection was black, an 8-bit one did not),
    and 5 channels were refused ("not an image" at 8 bits)."""
    from blk.upscale.source import input_notes, input_preview

    peak = 255 if bits == 8 else 65535
    colour = (np.arange(20 * 30 * 3).reshape(20, 30, 3) % 200 * peak // 255).astype(np.uint8 if bits == 8 else
                                                                                     np.uint16)
    transparency = np.zeros((20, 30, 1), colour.dtype)
    transparency[:, 15:] = peak
    selection = np.zeros_like(transparency)
    selection[10:] = peak
    channels = [transparency if kind == 2 else selection for kind in extras]
    path = tmp_path / "layered.tif"
    tifffile.imwrite(path, np.concatenate([colour, *channels], axis=2), photometric="rgb", extrasamples=list(extras))
    for image in (open_input(path), open_input(path, max_pixels=100)):  # whole, and by region
        pixels = image.source.read(0, 0, 30, 20)
        assert pixels.shape == (20, 30, 4 if 2 in extras else 3) and image.bit_depth == bits
        assert np.array_equal(np.rint(pixels[..., :3] * peak), colour)
        if 2 in extras:  # the channel marked as transparency, wherever it is
            assert np.array_equal(np.rint(pixels[..., 3:] * peak), transparency)
    view, line = input_preview(path)  # the tab's view shows what the job takes: no selection as transparency
    assert view.shape == (20, 30, 4 if 2 in extras else 3) and ("with transparency" in line) == (2 in extras)
    unmarked = extras.count(0)
    assert input_notes(path) == [f"layered.tif has {unmarked} extra channel{'s' if unmarked > 1 else ''} not marked "
                                 "as transparency (a saved selection or mask); "
                                 f"{'they are' if unmarked > 1 else 'it is'} left out."]
