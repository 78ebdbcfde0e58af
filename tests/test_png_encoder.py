"""The studio's PNG encoder (bands filtered and deflated on threads, joined into one zlib stream): what any decoder
reads back is the image, pixel for pixel, with its text and ICC chunks, whatever the thread count or band cut."""

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from blk import png_encoder
from blk.generate.metadata import PARAMETERS_KEY, png_bytes, read_parameters
from blk.png_encoder import _adler32_combine, encode_png, filter_rows


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def chunk_types(data: bytes) -> list[bytes]:
    types, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        types.append(kind)
        at += 12 + length
    return types


def test_adler32_of_joined_bands_is_the_checksum_of_the_whole():
    rng = random.Random(0)
    whole = bytes(rng.getrandbits(8) for _ in range(200_000))
    for cut in (0, 1, 65_520, 65_521, 65_522, 131_042, 199_999, 200_000):
        first, second = whole[:cut], whole[cut:]
        assert _adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(whole)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (333, 517)])  # the last: several bands of rows
def test_pillow_reads_back_every_pixel(mode, size, monkeypatch):
    monkeypatch.setattr(png_encoder, "BAND_BYTES", 4096)  # many bands even for small images
    channels = png_encoder.COLOUR_TYPES[mode][1]
    rng = np.random.default_rng(sum(size))
    width, height = size
    noise = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    ramp = (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)
    for pixels in (noise, np.repeat(ramp[..., None], channels, axis=2)):  # incompressible and smooth: other filters
        pixels = pixels[..., 0] if mode == "L" else pixels
        one = encode_png(pixels, mode, threads=1)
        several = encode_png(pixels, mode, threads=3)
        assert one == several  # the same bytes whatever the thread count
        image = decoded(one)
        assert image.mode == mode and image.size == (width, height)
        assert np.array_equal(np.asarray(image), pixels)


def test_each_row_takes_the_filter_with_the_smallest_signed_sum():
    rng = np.random.default_rng(3)
    rows = np.concatenate([rng.integers(0, 256, (4, 30), dtype=np.uint8),
                           np.tile(np.arange(30, dtype=np.uint8) * 7, (4, 1)),  # steps along the row: Sub
                           np.tile(rng.integers(0, 256, 30, dtype=np.uint8), (4, 1))])  # rows repeat: Up
    above = np.zeros(30, np.uint8)
    filtered = filter_rows(rows, above, bpp=3)

    def signed_sum(row):
        return int(np.abs(row.view(np.int8).astype(int)).sum())

    for index in range(len(rows)):
        prior = rows[index - 1] if index else above
        costs = []
        for kind in range(5):  # each filter written out, byte by byte, as the specification defines it
            out = []
            for x in range(30):
                a = int(rows[index, x - 3]) if x >= 3 else 0
                b, c = int(prior[x]), (int(prior[x - 3]) if x >= 3 else 0)
                p = a + b - c
                paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else (b if abs(p - b) <= abs(p - c)
                                                                                     else c)
                predictor = (0, a, b, (a + b) // 2, paeth)[kind]
                out.append((int(rows[index, x]) - predictor) % 256)
            costs.append(signed_sum(np.array(out, np.uint8)))
        chosen = filtered[index, 0]
        assert costs[chosen] == min(costs) and chosen == costs.index(min(costs))
    # the first ramp row: Sub (or Paeth, which predicts from the left there); a row that repeats the one above: Up
    assert filtered[4, 0] in (1, 4) and set(filtered[[5, 6, 7, 9, 10, 11], 0]) == {2}


def test_each_band_of_rows_is_an_idat_chunk_of_its_own(monkeypatch):
    """Nothing joins a large image's stream in memory: every band is framed where it is deflated, and the
    stream's checksum closes it in a last small IDAT."""
    monkeypatch.setattr(png_encoder, "BAND_BYTES", 64 * 3 * 5)  # 5 rows of 64 RGB pixels a band
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode_png(pixels, "RGB")
    assert chunk_types(data) == [b"IHDR"] + [b"IDAT"] * (13 + 1) + [b"IEND"]  # 64 rows in bands of 5: 13
    assert b"".join(png_encoder.png_parts(pixels, "RGB")) == data
    assert np.array_equal(np.asarray(decoded(data)), pixels)


def test_only_eight_bit_pixels_of_the_mode_are_taken():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.uint16), "RGB")
    with pytest.raises(ValueError, match="3 channel"):
        encode_png(np.zeros((4, 4, 4), np.uint8), "RGB")


def test_png_bytes_carries_parameters_disclosure_and_icc_in_every_mode():
    """Through the studio's writer: a prompt in any script, the disclosure, the XMP and an ICC profile survive;
    a mode the encoder does not take (palette) goes through Pillow with the same text."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    parameters = {"prompt": "墨のスケッチ, ink — blkstyle", "seed": 7, "width": 24, "height": 16}
    for mode in ("RGB", "RGBA", "L", "LA", "P"):
        image = Image.new(mode, (24, 16))
        image.putdata([(i * 37) % 256 if mode in ("L", "P") else ((i * 37) % 256,) * len(mode) for i in range(24 * 16)])
        image.info["icc_profile"] = icc
        data = png_bytes(image, parameters)
        back = decoded(data)
        assert back.mode == mode and np.array_equal(np.asarray(back.convert("RGBA")), np.asarray(image.convert("RGBA")))
        assert back.info["icc_profile"] == icc
        assert back.text["Disclosure"].startswith("AI-generated image")
        assert "trainedAlgorithmicMedia" in back.text["XML:com.adobe.xmp"]
        assert back.text["Software"].startswith("BLK Studio")
        assert PARAMETERS_KEY in back.text
        if mode != "P":
            assert chunk_types(data)[:2] == [b"IHDR", b"iCCP"] and b"IDAT" in chunk_types(data)


def test_saved_png_reads_its_parameters_back(tmp_path):
    from blk.generate.metadata import save_png

    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    path = save_png(tmp_path / "sketch.png", image, {"prompt": "a cloud, «ink»", "seed": 3, "steps": 4})
    parameters = read_parameters(path)
    assert (parameters["prompt"], parameters["seed"], parameters["steps"]) == ("a cloud, «ink»", 3, 4)
    with Image.open(path) as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(image))


def test_the_zlib_header_is_the_one_zlib_writes_for_each_level():
    for level in range(10):
        assert png_encoder._zlib_header(level) == zlib.compress(b"blk", level)[:2], level


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_libpng_and_libvips_read_it_as_pillow_does(mode, monkeypatch):
    """Other decoders than Pillow's: libpng (through imagecodecs) and libvips, which the upscaler reads inputs
    with (a Sketch result upscaled). (Neither fails on a wrong stream checksum: `test_the_joined_idat_data_…`
    checks it.)"""
    import imagecodecs
    import pyvips

    monkeypatch.setattr(png_encoder, "BAND_BYTES", 8192)
    channels = png_encoder.COLOUR_TYPES[mode][1]
    pixels = np.random.default_rng(9).integers(0, 256, (101, 77, channels), dtype=np.uint8)
    pixels = pixels[..., 0] if mode == "L" else pixels
    data = encode_png(pixels, mode, [png_encoder.text_chunk("Software", "BLK Studio")], threads=4)
    assert np.array_equal(imagecodecs.png_decode(data), pixels)
    vips = pyvips.Image.new_from_buffer(data, "")
    assert (vips.width, vips.height, vips.bands) == (77, 101, channels)
    assert np.array_equal(np.frombuffer(vips.write_to_memory(), np.uint8).reshape(pixels.shape), pixels)


def idat_data(data: bytes) -> bytes:
    parts, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            parts.append(data[at + 8:at + 8 + length])
        at += 12 + length
    return b"".join(parts)


def test_the_joined_idat_data_is_one_zlib_stream_with_its_checksum(monkeypatch):
    """zlib itself (which checks the Adler-32 at the end, where PNG decoders only warn or do not look) inflates
    the bands' joined data to exactly the filtered rows, with nothing after the stream."""
    monkeypatch.setattr(png_encoder, "BAND_BYTES", 4096)
    pixels = np.random.default_rng(4).integers(0, 256, (90, 70, 4), dtype=np.uint8)
    rows = pixels.reshape(90, -1)
    data = encode_png(pixels, "RGBA", threads=3)
    inflater = zlib.decompressobj()
    filtered = inflater.decompress(idat_data(data))
    assert inflater.eof and not inflater.unused_data
    assert filtered == b"".join(filter_rows(rows[i:i + 14], rows[i - 1] if i else np.zeros(280, np.uint8), 4).tobytes()
                                for i in range(0, 90, 14))  # 4096 // 280 = 14 rows a band
    broken = data.replace(idat_data(data)[-4:], b"\0\0\0\0")
    with pytest.raises(zlib.error, match="incorrect data check"):
        zlib.decompress(idat_data(broken))


def test_an_image_without_pixels_is_refused_and_a_transparent_colour_is_kept():
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png(np.zeros((0, 5, 3), np.uint8), "RGB")
    keyed = Image.new("RGB", (6, 4), (0, 0, 0))
    keyed.putpixel((1, 1), (200, 10, 10))
    keyed.info["transparency"] = (0, 0, 0)  # black is see-through (a tRNS chunk): written as Pillow writes it
    back = decoded(png_bytes(keyed, {"prompt": "a key"}))
    assert back.convert("RGBA").getpixel((0, 0)) == (0, 0, 0, 0)
    assert back.convert("RGBA").getpixel((1, 1)) == (200, 10, 10, 255)
