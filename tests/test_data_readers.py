"""Dataset readers agree with the decoder: sizes as decoded (EXIF orientation wherever the file keeps it), captions
in the encodings Windows saves, and TIFF sample types read right or refused in one sentence."""

import json
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, PngImagePlugin

from blk.data import images
from blk.data.captions import CaptionStore
from blk.data.scan import meta_dir, scan
from blk.errors import BadImage

STORED = (48, 32)  # width × height as stored; orientations 5–8 show it 32 × 48


def _stored_pixels() -> np.ndarray:
    """A left half red and a right half blue, so that a turn shows."""
    pixels = np.zeros((STORED[1], STORED[0], 3), np.uint8)
    pixels[:, : STORED[0] // 2] = (255, 0, 0)
    pixels[:, STORED[0] // 2:] = (0, 0, 255)
    return pixels


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as (type, whole chunk bytes)."""
    found, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        found.append((data[pos + 4:pos + 8], data[pos:pos + 12 + length]))
        pos += 12 + length
    return found


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _after_pixels(data: bytes, kinds: tuple[bytes, ...]) -> bytes:
    """The PNG with its chunks of `kinds` moved after the pixel data (just before IEND), as some tools write."""
    chunks = _chunks(data)
    moved = [chunk for kind, chunk in chunks if kind in kinds]
    kept = [chunk for kind, chunk in chunks if kind not in kinds]
    return data[:8] + b"".join(kept[:-1] + moved + kept[-1:])


def _png(path, after: bool = False, **save) -> None:
    Image.fromarray(_stored_pixels()).save(path, **save)
    if after:
        path.write_bytes(_after_pixels(path.read_bytes(), (b"eXIf", b"tEXt", b"zTXt", b"iTXt")))


def _raw_profile(orientation: int) -> PngImagePlugin.PngInfo:
    """EXIF as ImageMagick keeps it in a PNG: a "Raw profile type exif" text chunk of hex."""
    raw = _exif(orientation)
    body = "\n".join(raw.hex()[i:i + 72] for i in range(0, len(raw) * 2, 72))
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{body}\n", zip=True)
    return info


def _xmp(orientation: int) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
                  f'tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>')
    return info


def _tiff(path, orientation: int, **write) -> None:
    tifffile.imwrite(path, _stored_pixels(), photometric="rgb", extratags=[(274, "H", 1, orientation, True)],
                     **write)


def _tiff16(path, orientation: int) -> None:
    tifffile.imwrite(path, _stored_pixels().astype(np.uint16) * 257, photometric="rgb",
                     extratags=[(274, "H", 1, orientation, True)])


MAKERS = {
    "jpeg_exif_6.jpg": lambda p: Image.fromarray(_stored_pixels()).save(p, exif=_exif(6), quality=95),
    "webp_exif_8.webp": lambda p: Image.fromarray(_stored_pixels()).save(p, exif=_exif(8), lossless=True),
    "tiff_tag_6.tif": lambda p: _tiff(p, 6),
    "tiff_tag_5_deflate.tif": lambda p: _tiff(p, 5, compression="zlib"),  # decoded by libtiff in Pillow
    "tiff_tag_3.tif": lambda p: _tiff(p, 3),  # a half turn: no swap
    "tiff16_tag_8.tif": lambda p: _tiff16(p, 8),
    "png_exif_6_before_pixels.png": lambda p: _png(p, exif=_exif(6)),
    "png_exif_6_after_pixels.png": lambda p: _png(p, after=True, exif=_exif(6)),
    "png_raw_profile_6.png": lambda p: _png(p, pnginfo=_raw_profile(6)),
    "png_raw_profile_8_after_pixels.png": lambda p: _png(p, after=True, pnginfo=_raw_profile(8)),
    "png_xmp_6_after_pixels.png": lambda p: _png(p, after=True, pnginfo=_xmp(6)),
    "png_exif_3_after_pixels.png": lambda p: _png(p, after=True, exif=_exif(3)),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_read_info_gives_the_size_the_decoder_gives(tmp_path, name):
    """The scan's size (read_info) chose the training bucket; for a rotated TIFF (Pillow already reports it
    upright and it was turned again) and a PNG with its EXIF after the pixels or in a text chunk (never looked
    at), it was the other shape than the decoded image: cropped hard and upscaled into the wrong bucket."""
    path = tmp_path / name
    MAKERS[name](path)
    decoded = images.open_image(path)
    quarter = "_3" not in name  # orientation 3 is a half turn
    assert decoded.size == ((STORED[1], STORED[0]) if quarter else STORED)  # the decoder does turn it
    info = images.read_info(path)
    assert (info.width, info.height) == decoded.size
    assert images.read_pixels(path).shape[:2] == (decoded.size[1], decoded.size[0])


def test_exif_after_the_pixels_is_found_without_decoding_them(tmp_path):
    """read_info stays a header read: the pixel data of this PNG is not even valid zlib, and its size still
    comes out upright from an eXIf chunk that follows it."""
    good = tmp_path / "good.png"
    _png(good, after=True, exif=_exif(6))
    broken = b"".join(_png_chunk(b"IDAT", b"\x00not zlib at all") if kind == b"IDAT" else chunk
                      for kind, chunk in _chunks(good.read_bytes()))
    path = tmp_path / "pixels_broken.png"
    path.write_bytes(good.read_bytes()[:8] + broken)
    info = images.read_info(path)
    assert (info.width, info.height) == (32, 48)
    with pytest.raises(BadImage, match="damaged"):
        images.open_image(path)


def test_an_index_of_the_old_sizes_is_read_again(tmp_path):
    """Indexes written before sizes followed the decoder hold the wrong shape of rotated images; a newer
    index version makes the scan read those files again."""
    folder = tmp_path / "ds"
    folder.mkdir()
    _tiff(folder / "scan.tif", 6)
    assert [(r.width, r.height) for r in scan(folder)] == [(32, 48)]
    index = meta_dir(folder) / "index.json"
    stale = json.loads(index.read_text())
    stale["version"] = 1
    stale["files"]["scan.tif"]["record"].update(width=48, height=32)  # what version 1 recorded
    index.write_text(json.dumps(stale))
    assert [(r.width, r.height) for r in scan(folder)] == [(32, 48)]


WIDE_TEXT = "blkstyle, a red square, café"


@pytest.mark.parametrize("encoding, label", [("utf-16", "UTF-16"), ("utf-16-be-bom", "UTF-16"),
                                             ("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"),
                                             ("utf-32", "UTF-32"), ("utf-32-be-bom", "UTF-32")])
def test_utf16_and_utf32_captions_are_read_as_text_and_saved_as_utf8(tmp_path, encoding, label):
    """Notepad's "Unicode" (UTF-16 with a BOM) was read through cp1252 as 'ÿþb\\x00l\\x00k…' and trained on."""
    (tmp_path / "a.png").write_bytes(b"")
    if encoding.endswith("-be-bom"):
        data = "\ufeff".encode(encoding[:-4]) + WIDE_TEXT.encode(encoding[:-4])
    else:
        data = WIDE_TEXT.encode(encoding)  # utf-16 / utf-32: native order with a BOM; -le / -be: no BOM
    (tmp_path / "a.txt").write_bytes(data)
    store = CaptionStore(tmp_path)
    caption = store.read("a.png")
    assert caption.text == WIDE_TEXT
    assert caption.warning == f"a.txt is not UTF-8; it was read as {label} and will be saved as UTF-8."
    store.save("a.png", caption.text + ", blue", caption.hash)
    assert (tmp_path / "a.txt").read_bytes() == (WIDE_TEXT + ", blue").encode("utf-8")
    assert store.read("a.png").warning is None


@pytest.mark.parametrize("data, text", [(b"blkstyle, red\x00\x00", "blkstyle, red\x00\x00"),
                                        ("blkstyle, 日本".encode(), "blkstyle, 日本")])
def test_utf8_captions_are_not_taken_for_utf16(tmp_path, data, text):
    (tmp_path / "a.txt").write_bytes(data)
    caption = CaptionStore(tmp_path).read("a.png")
    assert (caption.text, caption.warning) == (text, None)


def test_a_caption_no_encoding_fits_keeps_the_cp1252_warning(tmp_path):
    """A UTF-16 BOM on an odd number of bytes is not UTF-16: the existing fallback and its warning."""
    (tmp_path / "a.txt").write_bytes(b"\xff\xfeab\xe9")
    caption = CaptionStore(tmp_path).read("a.png")
    assert caption.text == "ÿþabé"
    assert caption.warning == "a.txt is not UTF-8; it was read as cp1252 and will be saved as UTF-8."


RAMP = np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24)


@pytest.mark.parametrize("name, samples, words", [
    ("grey_float.tif", RAMP, "32-bit floating-point"),
    ("grey_int32.tif", (RAMP * 4095).astype(np.int32), "32-bit signed integer"),  # 12-bit data, 32-bit samples
    ("grey_uint32.tif", (RAMP * 65535).astype(np.uint32), "32-bit unsigned integer"),
    ("grey_int16.tif", (RAMP * 32767).astype(np.int16), "16-bit signed integer"),
])
def test_grey_tiffs_of_float_or_wide_integer_samples_are_refused(tmp_path, name, samples, words):
    """Pillow opens grey ones (modes F and I), and they were scaled as 8- or 16-bit: a float ramp to 0–1 of 255
    levels (black), 12-bit data to at most 16. Refused as the colour ones Pillow cannot open are."""
    path = tmp_path / name
    tifffile.imwrite(path, samples)
    sentence = (f"{name} is a TIFF of {words} samples, which BLK Studio does not read; save it with 8 or 16 bits "
                "per channel (integer) and use that.")
    for reader in (images.read_info, images.open_image, images.read_pixels):
        with pytest.raises(BadImage) as refused:
            reader(path)
        assert str(refused.value) == sentence
    assert [record.error for record in scan(tmp_path, use_cache=False)] == [sentence]


def test_a_16bit_grey_alpha_tiff_is_read_with_its_alpha(tmp_path):
    """It was "not an image in a supported format": Pillow has no mode for it."""
    rng = np.random.default_rng(4)
    samples = rng.integers(0, 65536, (20, 30, 2), dtype=np.uint16)
    path = tmp_path / "grey_alpha16.tif"
    tifffile.imwrite(path, samples, photometric="minisblack", extrasamples=["unassalpha"])
    info = images.read_info(path)
    assert (info.width, info.height, info.mode, info.has_alpha, info.bit_depth) == (30, 20, "LA", True, 16)
    rgba = np.asarray(images.open_image(path))
    eight = np.round(samples / 257.0).astype(np.uint8)
    assert rgba.shape == (20, 30, 4)
    assert (rgba[..., :3] == eight[..., :1]).all() and (rgba[..., 3] == eight[..., 1]).all()
    pixels = images.read_pixels(path)
    assert np.array_equal(pixels[..., 0] * 65535, samples[..., 0].astype(np.float32))
    assert np.array_equal(pixels[..., 3] * 65535, samples[..., 1].astype(np.float32))
    [record] = scan(tmp_path, use_cache=False)
    assert (record.error, record.width, record.height, record.has_alpha) == (None, 30, 20, True)
