"""Safe image opening: each odd file becomes the right pixels, or one clear reason."""

import numpy as np
import pytest
from PIL import Image

from blk.data import images
from blk.errors import BadImage
from tests.support.odd_images import make_odd_dataset


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    make_odd_dataset(root / "ds", root / "outside")
    return root / "ds"


def pixels(path):
    return np.asarray(images.open_image(path)).astype(int)


def test_cmyk_jpeg_becomes_rgb_red(odd):
    rgb = pixels(odd / "cmyk.jpg")
    assert rgb.shape == (24, 32, 3)
    assert np.abs(rgb - [255, 0, 0]).max() <= 3


def test_16bit_grey_png_is_scaled_not_clipped(odd):
    rgb = pixels(odd / "grey16.png")
    assert rgb.shape == (16, 64, 3)
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64) / 65535 * 255
    assert np.abs(rgb[..., 0] - ramp).max() <= 1  # Pillow's convert("L") would clip to 255 at 1/256
    assert images.read_info(odd / "grey16.png").bit_depth == 16


def test_16bit_rgb_tiff_keeps_precision_in_read_pixels(odd):
    assert images.read_info(odd / "rgb16.tif").bit_depth == 16
    high = images.read_pixels(odd / "rgb16.tif")
    assert high.dtype == np.float32 and high.shape == (8, 8, 3)
    assert high[0, 0, 1] * 65535 == pytest.approx(257 * 100 + 50, abs=0.5)
    assert pixels(odd / "rgb16.tif")[0, 0].tolist() == [255, 100, 0]


def test_palette_transparency_becomes_alpha(odd):
    im = images.open_image(odd / "palette_transparent.png")
    assert im.mode == "RGBA"
    rgba = np.asarray(im)
    assert (rgba[:, :8, 3] == 0).all() and (rgba[:, 8:, 3] == 255).all()
    assert rgba[0, 12].tolist() == [255, 0, 0, 255]


def test_grey_alpha_keeps_alpha(odd):
    rgba = np.asarray(images.open_image(odd / "grey_alpha.png"))
    assert rgba.shape == (8, 8, 4)
    assert rgba[0, 0].tolist() == [200, 200, 200, 77]


def test_exif_orientation_applied(odd):
    info = images.read_info(odd / "exif_rotated.jpg")
    assert (info.width, info.height) == (20, 40)
    rgb = pixels(odd / "exif_rotated.jpg")
    assert rgb.shape == (40, 20, 3)
    # the red band, stored on the left, is at the top after a 90° clockwise turn
    assert rgb[2, 10, 0] > 200 and rgb[2, 10, 2] < 60
    assert rgb[-2, 10, 2] > 200 and rgb[-2, 10, 0] < 60


def test_one_pixel_image(odd):
    assert pixels(odd / "one_pixel.png").tolist() == [[[10, 20, 30]]]


@pytest.mark.parametrize("name, words", [
    ("bad_truncated.png", "truncated"),
    ("bad_bomb.png", "too many pixels"),
    ("bad_empty.png", "empty"),
    ("bad_not_an_image.jpg", "not an image"),
])
def test_bad_files_give_one_sentence(odd, name, words):
    with pytest.raises(BadImage) as caught:
        images.open_image(odd / name)
    message = str(caught.value)
    assert words in message and name in message
    assert "\n" not in message and "Traceback" not in message


def test_bomb_is_refused_from_the_header_without_decoding(odd, tmp_path):
    from tests.support.odd_images import bomb_png

    path = tmp_path / "just_over.png"
    path.write_bytes(bomb_png(images.MAX_PIXELS // 1000 + 1, 1000))
    with pytest.raises(BadImage, match="too many pixels"):
        images.read_info(path)
    ok = tmp_path / "big_but_fine.png"
    Image.new("RGB", (3000, 2000)).save(ok)
    assert images.read_info(ok).width == 3000


def test_header_facts_of_a_16bit_rgb_png_say_16_bit_and_decode_nothing(tmp_path):
    """Looking for EXIF in a PNG without an early eXIf chunk made Pillow decode the whole image, which also
    lost the header's 16-bit mark: Upscale and ink-to-alpha took 16-bit RGB scans for 8-bit. An eXIf chunk
    before the pixels still turns the size."""
    import pyvips

    deep = (np.arange(24 * 32 * 3, dtype=np.uint16).reshape(24, 32, 3) * 37) % 65535
    pyvips.Image.new_from_array(deep.astype(np.uint16), interpretation="rgb16").write_to_file(
        str(tmp_path / "deep.png"), strip=True)  # as GIMP and Krita write them: no EXIF
    with Image.open(tmp_path / "deep.png") as im:
        assert "exif" not in im.info
    info = images.read_info(tmp_path / "deep.png")
    assert (info.width, info.height, info.bit_depth, info.has_alpha) == (32, 24, 16, False)

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), "white").save(tmp_path / "turned.png", exif=exif)
    info = images.read_info(tmp_path / "turned.png")
    assert (info.width, info.height, info.bit_depth) == (20, 40, 8)


def test_a_colour_key_is_transparency(tmp_path):
    """PNG optimisers store line art on a transparent ground as grey or RGB with one transparent value (tRNS):
    it came out opaque with the key colour (black) showing, though the Upscale tab said "with transparency"."""
    from blk.upscale.source import open_input

    ink = np.zeros((6, 8), np.uint8)
    ink[2:4, 2:6] = 200
    grey, rgb, deep = tmp_path / "grey.png", tmp_path / "rgb.png", tmp_path / "deep.png"
    Image.fromarray(ink).save(grey, transparency=0)
    Image.fromarray(np.dstack([ink] * 3)).save(rgb, transparency=(0, 0, 0))
    Image.fromarray(ink.astype(np.uint16) * 257).save(deep, transparency=0)
    for path in (grey, rgb, deep):
        assert images.read_info(path).has_alpha, path.name
        opened = np.asarray(images.open_image(path))
        assert opened.shape == (6, 8, 4), path.name
        assert np.array_equal(opened[..., 3], np.where(ink == 0, 0, 255)), path.name
        assert np.array_equal(opened[2:4, 2:6, :3], np.full((2, 4, 3), 200)), path.name
        levels, peak = images.read_levels(path)
        assert levels.shape == (6, 8, 4) and open_input(path).channels == 4, path.name
        assert peak == (65535.0 if path == deep else 255.0)  # a 16-bit file's alpha at 16 bits: "Keep 16-bit" keeps it
    assert np.array_equal(images.read_levels(deep)[0][..., 3], np.where(ink == 0, 0, 65535))


def test_a_colour_key_of_a_4_bit_grey_png_is_its_own_level(tmp_path):
    """Pillow decodes 2- and 4-bit grey to 8 bits (15 → 255) but left the key at 15: it matched nothing."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\0" + bytes([0x0F, 0x0F, 0x0F, 0x0F]) for _ in range(2))  # 8 px a row: 0, 15, 0, 15 …
    path = tmp_path / "four-bit.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 2, 4, 0, 0, 0, 0))
                     + chunk(b"tRNS", struct.pack(">H", 15)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    opened = np.asarray(images.open_image(path))
    assert opened.shape == (2, 8, 4) and opened[0, :, 3].tolist() == [255, 0] * 4  # white (15) is the key


def test_a_jfif_file_is_a_jpeg_in_a_dataset_and_in_upscale(tmp_path):
    """Chrome on Windows saves JPEGs as .jfif: they were left out of datasets and refused by the Upscale input."""
    from blk.data.scan import scan
    from blk.upscale.source import open_input
    from ui.tabs.upscale import INPUT_TYPES

    folder = tmp_path / "ds"
    folder.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / "saved.jfif", format="JPEG")
    assert [(r.rel, r.width) for r in scan(folder, use_cache=False)] == [("saved.jfif", 80)]
    opened = open_input(folder / "saved.jfif")
    assert (opened.width, opened.height) == (80, 60) and ".jfif" in INPUT_TYPES


def test_a_float_tiff_is_refused_for_what_it_is(tmp_path):
    """A 32-bit float TIFF (a scan or render's HDR master) was "not an image in a supported format (… TIFF …)"."""
    import tifffile

    from blk.data.images import BadImage, read_info

    tifffile.imwrite(tmp_path / "render.tif", np.zeros((8, 8, 3), np.float32), photometric="rgb")
    with pytest.raises(BadImage) as refused:
        read_info(tmp_path / "render.tif")
    assert str(refused.value) == ("render.tif is a TIFF of 32-bit floating-point samples, which BLK Studio does not "
                                  "read; save it with 8 or 16 bits per channel (integer) and use that.")
