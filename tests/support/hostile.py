"""A corpus of hostile files, made on the spot (nothing is checked in).

`make_image_corpus(folder)` writes images that are broken, hostile or merely odd, in every
format the studio reads, and returns {relative name: (expected, what it is)} where expected is
"ok" (a usable image) or "bad" (must be refused with a reason). Captions, presets and model files
have their own makers below.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.odd_images import bomb_png, noise, smooth

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_bmp(width: int = 50_000, height: int = 50_000) -> bytes:
    """A BMP header declaring width×height 24-bit pixels, followed by a few bytes of data."""
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 16


def bomb_tiff(width: int = 50_000, height: int = 50_000) -> bytes:
    """A little-endian TIFF whose IFD declares width×height 8-bit RGB, with one strip of 16 bytes."""
    entries = [  # tag, type, count, value
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, 8 + 2 + 12 * 11 + 4), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, 16),
        (284, 3, 1, 1), (339, 3, 1, 1),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HHI", tag, kind, count)
        packed += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += packed
    ifd += struct.pack("<I", 0)
    # bits-per-sample with count 1 is accepted by Pillow for RGB (it repeats the value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 16


def bomb_jpeg(width: int = 60_000, height: int = 60_000) -> bytes:
    """A real small JPEG whose SOF0 frame header is patched to claim width×height."""
    data = bytearray(encoded(noise(16, 16, 3), "JPEG", quality=80))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bomb_webp() -> bytes:
    """A real small lossless WebP whose VP8L header is patched to claim 16384×16384 (the format's maximum)."""
    data = bytearray(encoded(noise(16, 16, 4), "WEBP", lossless=True))
    at = data.find(b"VP8L") + 8  # chunk header (4 + 4), then the 0x2f signature byte
    assert data[at] == 0x2F
    bits = int.from_bytes(data[at + 1:at + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (16383 << 14) | 16383  # width-1 and height-1, 14 bits each
    data[at + 1:at + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def corrupt_middle(data: bytes, seed: int) -> bytes:
    """Overwrite a run of bytes after the header with garbage (the file keeps its length)."""
    rng = np.random.default_rng(seed)
    data = bytearray(data)
    start = max(32, len(data) // 3)
    end = min(len(data), start + max(64, len(data) // 4))
    data[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    return bytes(data)


def make_image_corpus(folder: Path) -> dict[str, tuple[str, str]]:
    """Write the corpus into `folder`; return {rel: ("ok" | "bad", description)}."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[str, str]] = {}

    def put(name: str, data: bytes, expected: str, what: str) -> None:
        (folder / name).write_bytes(data)
        made[name] = (expected, what)

    picture = noise(48, 40, 1)
    for fmt, ext in FORMATS.items():
        kind = fmt.lower()
        good = encoded(picture, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
        put(f"good_{kind}{ext}", good, "ok", f"a valid {fmt}")
        put(f"bad_truncated_{kind}{ext}", good[: len(good) // 2], "bad", f"{fmt} cut in half")
        put(f"bad_header_only_{kind}{ext}", good[:20], "bad", f"{fmt}: only the first 20 bytes")
        put(f"bad_empty_{kind}{ext}", b"", "bad", f"zero-byte {ext}")
        put(f"bad_garbage_{kind}{ext}", np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "bad", f"random bytes named {ext}")
    # corrupt payloads: which decoders notice depends on the format (JPEG/BMP/TIFF-raw data carry no
    # checksum, so garbage pixels are still an image); PNG's CRC and zlib, and WebP's VP8 do notice.
    png = encoded(picture, "PNG")
    put("bad_crc_png.png", corrupt_middle(png, 1), "bad", "PNG with garbage in its IDAT (CRC fails)")
    put("corrupt_pixels_bmp.bmp", corrupt_middle(encoded(picture, "BMP"), 2), "ok",
        "BMP with garbage pixel bytes (no checksum: still an image)")

    # decompression bombs and huge headers
    put("bad_bomb_png.png", bomb_png(50_000, 50_000), "bad", "PNG header claims 50000×50000")
    put("bad_bomb_png_wide.png", bomb_png(2_000_000, 1), "bad", "PNG header claims 2000000×1 (past libpng's limit)")
    put("bad_bomb_bmp.bmp", bomb_bmp(), "bad", "BMP header claims 50000×50000")
    put("bad_bomb_tiff.tif", bomb_tiff(), "bad", "TIFF IFD claims 50000×50000")
    put("bad_bomb_jpeg.jpg", bomb_jpeg(), "bad", "JPEG SOF claims 60000×60000")
    put("bad_bomb_webp.webp", bomb_webp(), "bad", "WebP header claims 16384×16384 (268 MP)")
    put("bad_big_header_png.png", bomb_png(12_000, 12_000), "bad",
        "PNG claims 12000×12000 (144 MP, under the limit) with 16 bytes of data")
    Image.fromarray(np.zeros((1, 20_000, 3), np.uint8)).save(folder / "thin_wide.png")
    made["thin_wide.png"] = ("ok", "real 20000×1 PNG")
    Image.fromarray(np.zeros((20_000, 1, 3), np.uint8)).save(folder / "thin_tall.png")
    made["thin_tall.png"] = ("ok", "real 1×20000 PNG")

    # modes and depths
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    made["cmyk.jpg"] = ("ok", "CMYK JPEG")
    Image.new("CMYK", (32, 24), (255, 0, 0, 0)).save(folder / "cmyk.tif")
    made["cmyk.tif"] = ("ok", "CMYK TIFF")
    grey16 = np.linspace(0, 65535, 64 * 16, dtype=np.uint16).reshape(16, 64)
    Image.fromarray(grey16, mode="I;16").save(folder / "grey16.png")
    made["grey16.png"] = ("ok", "16-bit greyscale PNG")
    tifffile.imwrite(folder / "rgb16.tif", np.full((8, 8, 3), 40000, np.uint16), photometric="rgb")
    made["rgb16.tif"] = ("ok", "16-bit RGB TIFF")
    tifffile.imwrite(folder / "rgba16.tif", np.full((8, 8, 4), 40000, np.uint16), photometric="rgb",
                     extrasamples="unassalpha")
    made["rgba16.tif"] = ("ok", "16-bit RGBA TIFF")
    tifffile.imwrite(folder / "float32.tif", np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    # refused like a float RGB TIFF: floats are mostly linear light that may pass 1.0, so any scale is a guess
    made["float32.tif"] = ("bad", "32-bit float greyscale TIFF")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(folder / "palette_transparent.png", transparency=0)
    made["palette_transparent.png"] = ("ok", "palette PNG with transparency")
    palette.save(folder / "palette.bmp")
    made["palette.bmp"] = ("ok", "palette BMP")
    Image.merge("LA", (Image.new("L", (8, 8), 200), Image.new("L", (8, 8), 77))).save(folder / "la.png")
    made["la.png"] = ("ok", "LA PNG")
    Image.new("1", (9, 9), 1).save(folder / "bilevel.tif")
    made["bilevel.tif"] = ("ok", "1-bit TIFF")
    Image.new("RGBA", (12, 12), (255, 0, 0, 128)).save(folder / "rgba.webp", lossless=True)
    made["rgba.webp"] = ("ok", "RGBA WebP")
    for orientation in range(1, 9):
        rotated = Image.new("RGB", (40, 20), (0, 0, 255))
        exif = Image.Exif()
        exif[0x0112] = orientation
        rotated.save(folder / f"exif_{orientation}.jpg", exif=exif, quality=95)
        made[f"exif_{orientation}.jpg"] = ("ok", f"JPEG with EXIF orientation {orientation}")
    exif = Image.Exif()
    exif[0x0112] = 99
    Image.new("RGB", (10, 10)).save(folder / "exif_nonsense.jpg", exif=exif)
    made["exif_nonsense.jpg"] = ("ok", "JPEG with EXIF orientation 99")

    # wrong extensions: judged by content
    put("jpeg_named.png", encoded(picture, "JPEG"), "ok", "a JPEG named .png")
    put("png_named.jpg", encoded(noise(48, 40, 2), "PNG"), "ok", "a PNG named .jpg")  # not good_png.png's bytes
    put("webp_named.tiff", encoded(picture, "WEBP"), "ok", "a WebP named .tiff")
    put("bad_text_named.jpg", b"just some text, not a JPEG\n", "bad", "a text file named .jpg")
    put("bad_html_named.webp", b"<html><body>hello</body></html>", "bad", "HTML named .webp")
    put("bad_gif_named.png", encoded(picture.convert("P"), "GIF"), "bad", "a GIF (unsupported) named .png")
    put("bad_svg_named.png", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "bad", "SVG named .png")
    put("bad_pdf_named.jpeg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "bad",
        "PDF named .jpeg")
    put("bad_zip_named.bmp", b"PK\x03\x04" + b"\x00" * 60, "bad", "zip bytes named .bmp")

    # names
    for name in ("ünï cødé näme.png", "space  name .png", "new\nline.png", "a..b.png", "..dots.png",
                 "-starts-with-dash.png", "é" * 100 + ".png", "tab\tname.jpg", "quote'\"name.png"):
        put(name, encoded(smooth(24, 24, len(name)), "JPEG" if name.endswith(".jpg") else "PNG"), "ok",
            f"valid image named {name!r}")
    (folder / "sub dir").mkdir(exist_ok=True)
    put("sub dir/nested ünï.webp", encoded(smooth(20, 16, 2), "WEBP"), "ok", "nested WebP with unicode name")
    return made


# -- captions ------------------------------------------------------------------------------------

CAPTIONS: dict[str, tuple[bytes, str]] = {
    "cp1252": ("a café drawing, naïve – style".encode("cp1252"), "Windows-1252 text"),
    "latin1": ("ÿ þ ð".encode("latin-1"), "Latin-1 text"),
    "utf16": ("ink on paper".encode("utf-16"), "UTF-16 with a byte-order mark"),
    "binary": (bytes(range(256)) * 4, "every byte value, NULs included"),
    "huge": (("blkstyle, a very long caption " * 40_000).encode("utf-8"), "1.2 MB of text"),
    "bom": ("\ufeffblkstyle, with a UTF-8 BOM".encode("utf-8"), "UTF-8 with a BOM"),
    "crlf": (b"blkstyle,\r\nsecond line\r\n", "CRLF line ends"),
    "blank": (b"   \n\t ", "only whitespace"),
    "empty": (b"", "zero bytes"),
}


# -- train presets -------------------------------------------------------------------------------

BAD_PRESETS: dict[str, bytes] = {
    "syntax.yaml": b"name: x\nmodel: {name: tiny-flux\nsteps: [1, 2\n",
    "tabs.yaml": b"name: x\n\tmodel:\n\t\tname: tiny-flux\n",
    "list.yaml": b"- just\n- a\n- list\n",
    "scalar.yaml": b"42\n",
    "empty.yaml": b"",
    "unknown_key.yaml": b"name: x\nbogus_section: {a: 1}\n",
    "wrong_type.yaml": b"name: x\nschedule: {steps: many}\n",
    "negative.yaml": b"name: x\nschedule: {steps: -5}\nadapter: {rank: 0}\n",
    "not_utf8.yaml": "name: café\n".encode("cp1252") + b"\xff\xfe\x00",
    "binary.yaml": bytes(range(256)),
    "python_tag.yaml": b"name: !!python/object/apply:os.system ['echo pwned']\n",
    "anchors.yaml": b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                    b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                    b"name: *d\n",
    "dataset_is_list.yaml": b"name: x\ndata: {dataset: [1, 2]}\n",
}


# -- model files ---------------------------------------------------------------------------------

class Payload:
    """Unpickling this object creates `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def bad_model_files(folder: Path, marker: Path, suffix: str) -> dict[str, str]:
    """Files with `suffix` that must be refused: {name: what it is}. `marker` appears if code runs."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    made = {}

    def put(stem: str, writer, what: str) -> None:
        writer(folder / f"{stem}{suffix}")
        made[f"{stem}{suffix}"] = what

    evil = {"conv_first.weight": torch.zeros(1), "decoder.conv_in.weight": torch.zeros(1), "x": Payload(marker)}
    if suffix != ".safetensors":
        put("evil_zip", lambda p: torch.save(evil, p), "torch zip pickle that runs code")
        put("evil_legacy", lambda p: torch.save(evil, p, _use_new_zipfile_serialization=False),
            "legacy torch pickle that runs code")
        put("evil_raw", lambda p: p.write_bytes(pickle.dumps(evil)), "plain pickle that runs code")
        put("list", lambda p: torch.save([torch.zeros(2)], p), "a pickled list, not a state dict")
    put("empty", lambda p: p.write_bytes(b""), "zero bytes")
    put("text", lambda p: p.write_text("not a model\n"), "a text file")
    put("random", lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, np.uint8).tobytes()),
        "random bytes")
    put("huge_header", lambda p: p.write_bytes((10**15).to_bytes(8, "little") + b"{}"),
        "safetensors-like header claiming a petabyte")
    put("bad_json_header", lambda p: p.write_bytes((20).to_bytes(8, "little") + b"{not json at all...}"),
        "safetensors-like header that is not JSON")
    put("list_header", lambda p: p.write_bytes((2).to_bytes(8, "little") + b"[]"),
        "safetensors-like header that is a JSON list")
    return made
