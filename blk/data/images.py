"""Safe image opening: every odd file either becomes a correct image or one clear reason.

Handled: EXIF orientation; CMYK, palette (with transparency), LA, 16-bit
greyscale, 16-bit RGB(A) and grey + alpha TIFF; alpha kept where present.
Refused with a reason: truncated or corrupt files, zero-byte files, files that
are not images (whatever their extension), TIFFs of floating-point, signed or
32-bit samples, and images declaring more pixels than `MAX_PIXELS`
(decompression bombs) — never by raising Pillow's limit.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from blk.errors import BadImage

# .jfif: JPEG, as Chrome on Windows names the JPEGs it saves
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jfif", ".webp", ".tif", ".tiff", ".bmp"}

# Images above this are refused whole: Pillow's own hard bomb limit (twice its warning
# threshold). Bigger artwork is read by region in the Upscale path, never by lifting this.
MAX_PIXELS = 178_956_970

_FORMATS = ["PNG", "JPEG", "WEBP", "TIFF", "BMP"]


@dataclass(frozen=True)
class ImageInfo:
    """What a header tells, after orientation: size as displayed."""

    width: int
    height: int
    mode: str  # Pillow's mode of the file, e.g. RGB, RGBA, CMYK, P, LA, I;16
    format: str
    has_alpha: bool
    bit_depth: int  # bits per channel: 8 or 16 (32 for float/int greyscale)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _open(path: Path) -> Image.Image:
    if path.is_dir():  # it read "is damaged and cannot be opened ([Errno 21] Is a directory)"
        raise BadImage(f"{path.name} is a folder, not an image file.")
    try:
        if path.stat().st_size == 0:
            raise BadImage(f"{path.name} is empty (0 bytes).")
    except OSError as exc:
        raise BadImage(f"{path.name} cannot be read ({exc.strerror}).") from None
    try:
        with _quiet():  # we check against MAX_PIXELS ourselves; damage is reported as a BadImage
            return Image.open(path, formats=_FORMATS)
    except Image.DecompressionBombError:
        raise _bomb(path, None) from None
    except Image.UnidentifiedImageError:
        raise BadImage(_unreadable_tiff(path) or f"{path.name} is not an image in a supported format (PNG, JPEG, "
                       "WebP, TIFF, BMP).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"{path.name} is damaged and cannot be opened ({exc}).") from None


def _unreadable_tiff(path: Path) -> str:
    """Why a TIFF Pillow cannot open is refused, when its samples say ("" otherwise): a 32-bit float scan was
    told it is "not an image in a supported format (… TIFF …)"."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            bits, kind = page.bitspersample, {2: "signed integer", 3: "floating-point"}.get(int(page.sampleformat), "")
    except Exception:  # noqa: BLE001  (not a TIFF, or a damaged one: the general sentence)
        return ""
    if not kind and bits in (1, 8, 16):
        return ""
    return (f"{path.name} is a TIFF of {bits}-bit {kind or 'unsigned integer'} samples, which BLK Studio does not "
            "read; save it with 8 or 16 bits per channel (integer) and use that.")


@contextlib.contextmanager
def _quiet():
    """Silence Pillow's warnings (decompression bomb, corrupt EXIF …): a file's problems are told in
    one sentence (BadImage), never as stray warning lines on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class TooManyPixels(BadImage):
    """An image over `MAX_PIXELS`: never decoded whole (the Upscale tab reads such files by region)."""


def _bomb(path: Path, size: tuple[int, int] | None) -> BadImage:
    dims = f" ({size[0]}×{size[1]})" if size else ""
    return TooManyPixels(
        f"{path.name} declares too many pixels{dims}, over the {MAX_PIXELS:,}-pixel safety limit "
        "(possibly a decompression bomb); very large artwork belongs in the Upscale tab."
    )


def _has_alpha(im: Image.Image) -> bool:
    """An alpha channel, or a colour key (a PNG's tRNS: palette entries, or one grey or RGB value that is
    transparent, as optimisers such as oxipng and pngquant store line art on a transparent ground)."""
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info or ("A" in im.getbands())


def _bit_depth(im: Image.Image) -> int:
    """Bits per channel in the file (Pillow decodes 16-bit RGB to 8-bit; its raw mode tells)."""
    rawmode = str(im.tile[0][3]) if im.tile else ""
    if im.mode.startswith("I;16") or ";16" in rawmode:
        return 16
    if im.mode in ("I", "F"):
        return 32
    return 8


def _upright_size(im: Image.Image, path: Path) -> tuple[int, int]:
    """The size the decoder gives (`open_image`: EXIF orientation applied). A TIFF's from its tags as stored:
    Pillow 12 already reports it turned, older Pillows did not, and turning it again put training images in a
    bucket of the wrong shape."""
    width, height = im.size
    if im.format == "TIFF":
        width, height = im.tag_v2.get(256, width), im.tag_v2.get(257, height)
    return (height, width) if _orientation(im, path) in (5, 6, 7, 8) else (width, height)


def _orientation(im: Image.Image, path: Path) -> int:
    """EXIF orientation as `ImageOps.exif_transpose` reads it on decoding (EXIF, else XMP), from the header. A
    PNG may hold it after its pixels (an eXIf or text chunk): those chunks are read by seeking past the pixels,
    where Pillow's own `getexif` would decode the whole image to reach them."""
    try:
        if im.format != "PNG":
            return im.getexif().get(0x0112, 1)
        im.info.update(_png_chunks_for_exif(path))  # as Pillow's decoding adds them: a later chunk wins
        return Image.Image.getexif(im).get(0x0112, 1)  # the base reading: PNG's own would decode
    except Exception:  # a broken EXIF block must not make a good image unusable
        return 1


_EXIF_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")  # EXIF, ImageMagick's "Raw profile type exif", XMP


def _png_chunks_for_exif(path: Path) -> dict:
    """The `info` entries a PNG's EXIF and text chunks give, read with Pillow's own chunk reader (so the same
    as when it decodes), skipping the pixel data by seeking."""
    from PIL import PngImagePlugin

    with open(path, "rb") as handle:
        handle.seek(8)  # the signature
        stream = PngImagePlugin.PngStream(handle)
        while (chunk := stream.read())[0] != b"IEND":
            cid, pos, length = chunk
            if cid in _EXIF_CHUNKS:
                stream.call(cid, pos, length)
            else:
                handle.seek(length, 1)
            handle.seek(4, 1)  # the CRC
        return stream.im_info


def read_info(path: str | Path) -> ImageInfo:
    """Header-only facts about an image (cheap; does not decode pixels), its size as the decoder gives it."""
    path = Path(path)
    opened = _open_or_grey_alpha(path)
    if opened is None:
        return ImageInfo(*_grey_alpha_size(path), "LA", "TIFF", True, 16)
    with opened as im, _quiet():
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise _bomb(path, im.size)
        _refuse_wide_samples(im, path)
        depth, alpha = _bit_depth(im), _has_alpha(im)  # from the header, before anything may decode
        return ImageInfo(*_upright_size(im, path), im.mode, im.format or "?", alpha, depth)


def _open_or_grey_alpha(path: Path) -> Image.Image | None:
    """Pillow's image, or None for a 16-bit grey + alpha TIFF: Pillow has no mode for those (it called a valid
    image "not an image in a supported format"), tifffile reads them (`_read_tiff_high_bit`)."""
    try:
        return _open(path)
    except BadImage:
        if _grey_alpha_size(path) is None:
            raise
        return None


def _grey_alpha_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a TIFF of 16-bit grey + alpha samples stored plainly; None for any other file. Over
    `MAX_PIXELS`: refused (a bomb), as any image."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.samplesperpixel != 2 or page.dtype != np.uint16 or not _plain_tiff_page(page):
                return None
            size = int(page.imagewidth), int(page.imagelength)
    except Exception:  # noqa: BLE001  (not a TIFF, or a damaged one: Pillow's sentence stands)
        return None
    if size[0] * size[1] > MAX_PIXELS:
        raise _bomb(path, size)
    return size


def _refuse_wide_samples(im: Image.Image, path: Path) -> None:
    """Refuse a grey TIFF of floating-point, signed or 32-bit samples (Pillow's modes F and I), as the colour
    ones Pillow cannot open are (`_unreadable_tiff`): floats are mostly linear light that may pass 1.0, and
    integers do not say their range (12-bit data in 32-bit samples), so any scale to display levels is a guess
    (they were scaled as 8- or 16-bit: near black). The Upscale tab refuses them through here too."""
    if im.format == "TIFF" and im.mode in ("I", "F"):
        reason = _unreadable_tiff(path)
        if reason:
            raise BadImage(reason)


def open_image(path: str | Path, preview: int | None = None) -> Image.Image:
    """Decode fully into an 8-bit RGB or RGBA image, upright, or raise BadImage with the reason.

    `preview`: the image is only needed with sides of about this many pixels (a thumbnail, a similarity
    signature), so a JPEG is decoded at the smallest of its built-in scales (1/2 … 1/8) that keeps both
    sides at least that long: a 24 MP photograph in a fraction of the time. Other formats decode whole."""
    path = Path(path)
    opened = _open_or_grey_alpha(path)
    if opened is None:
        return _grey_alpha_8bit(path)
    with opened as im:
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise _bomb(path, im.size)
        _refuse_wide_samples(im, path)
        _scale_grey_key(im)
        try:
            with _quiet():
                if preview and im.format == "JPEG":
                    im.draft(im.mode, _preview_box(im.size, preview))
                im.load()
                upright = ImageOps.exif_transpose(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            reason = "it is truncated" if "truncated" in str(exc) else str(exc)
            raise BadImage(f"{path.name} is damaged and cannot be decoded ({reason}).") from None
        return to_8bit(upright)


def _grey_alpha_8bit(path: Path) -> Image.Image:
    """A 16-bit grey + alpha TIFF as 8-bit RGBA, scaled as `to_8bit` scales 16-bit grey (x / 65535 × 255)."""
    levels, _ = read_levels(path)
    return Image.fromarray(np.round(levels / 257.0).astype(np.uint8), "RGBA")


def _scale_grey_key(im: Image.Image) -> None:
    """A 2- or 4-bit grey PNG's colour key at the 8-bit scale its pixels are decoded to: Pillow scales the pixels
    (15 → 255) but not the key, so a key other than black matched nothing and the image came out opaque. Before
    decoding: the file's bit depth is known from the header only until then."""
    bits = {"L;2": 2, "L;2I": 2, "L;4": 4, "L;4I": 4}.get(str(im.tile[0][3]) if im.tile else "")
    key = im.info.get("transparency")
    if bits and isinstance(key, int):
        im.info["transparency"] = key * 255 // (2**bits - 1)


def _preview_box(size: tuple[int, int], preview: int) -> tuple[int, int]:
    """The size `draft` must keep: the image scaled so that its shorter side is `preview` (never larger than
    it is), so that the longer side of a thumbnail of `preview` px still has its pixels."""
    width, height = size
    scale = min(1.0, preview / max(1, min(width, height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_8bit(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB or RGBA with 8 bits per channel, scaling high bit depths."""
    mode, key = im.mode, im.info.get("transparency")
    # a colour key (PNG's tRNS) becomes alpha: it came out opaque, the key colour showing (a black ground)
    if key is not None and mode in ("L", "RGB", "1"):
        return im.convert("RGBA")
    if mode in ("RGB", "RGBA"):
        return im.copy()
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8)
        if isinstance(key, int) and mode != "F":
            return Image.fromarray(np.dstack([grey] * 3 + [np.where(array == key, 0, 255).astype(np.uint8)]), "RGBA")
        return Image.fromarray(grey).convert("RGB")
    if mode == "P":
        return im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if mode in ("LA", "PA", "La", "RGBa"):
        return im.convert("RGBA")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    return im.convert("RGB")  # L, 1, YCbCr, LAB, HSV


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """Through the embedded ICC profile to sRGB at the relative colorimetric intent when there is one: libvips'
    intent, which converts the Upscale tab's inputs read by region, so a file's colours do not depend on its
    size. Without a profile (or with a broken one), Pillow's plain R = (1 − C)(1 − K), on both paths too
    (`blk.upscale.source`): such a file does not say which press its ink amounts are for, and the formula
    undoes what the tools that write it do (Pillow, ImageMagick), keeps pure inks pure and guesses no press,
    where a press profile would dull every colour on a guess.

    Adobe JPEGs store CMYK inverted; Pillow already undoes that on decode.
    """
    icc = im.info.get("icc_profile")
    if icc:
        try:
            import io

            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB",
                                             renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        except Exception:  # a broken profile falls back to the plain conversion
            pass
    return im.convert("RGB")


def read_pixels(path: str | Path) -> np.ndarray:
    """Decode into float32 HxWxC in [0, 1], keeping 16-bit precision (C = 3 or 4)."""
    levels, peak = read_levels(path)
    return to_unit(levels, peak)


def to_unit(levels: np.ndarray, peak: float) -> np.ndarray:
    """`read_levels`' pixels (or any region of them) as float32 in [0, 1]; divided in place, so a band of a wide
    image (hundreds of MB as float32) is not held twice."""
    unit = levels.astype(np.float32)
    unit /= peak
    return unit


def read_levels(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode into HxWxC levels as stored, with the level that means 1.0: uint8 (255) or uint16 (65535),
    C = 3 or 4. `to_unit` gives `read_pixels`' floats, bit for bit. Why: an 8-bit image held whole takes a
    quarter of its float32 memory (the Upscale tab keeps inputs of up to 32 MP in memory and converts each tile
    as it reads it)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        high = _read_tiff_high_bit(path)
        if high is not None:
            return high
    with _open(path) as im:
        if im.mode.startswith("I;16"):
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise _bomb(path, im.size)
            try:
                with _quiet():
                    im.load()
                    grey = np.asarray(ImageOps.exif_transpose(im)).astype(np.uint16)
            except (OSError, SyntaxError, ValueError) as exc:
                reason = "it is truncated" if "truncated" in str(exc) else str(exc)
                raise BadImage(f"{path.name} is damaged and cannot be decoded ({reason}).") from None
            key = im.info.get("transparency")
            if isinstance(key, int):  # a colour key: alpha at 16 bits too, so "Keep 16-bit" keeps them
                alpha = np.where(grey == key, 0, 65535).astype(np.uint16)
                return np.stack([grey, grey, grey, alpha], axis=-1), 65535.0
            return np.repeat(grey[..., None], 3, axis=2), 65535.0
    return np.asarray(open_image(path)), 255.0


def _plain_tiff_page(page) -> bool:
    """A page whose samples read as they show: upright, interleaved, grey or RGB (with at most an alpha).
    Anything else — a rotation tag, planes stored apart, CMYK, a palette — takes a reader that handles it
    (Pillow here, libvips in the Upscale tab), not tifffile's raw samples (a rotated scan came out sideways,
    CMYK's K became alpha)."""
    import tifffile

    orientation = page.tags.get(274)
    grey = page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and page.samplesperpixel in (1, 2)
    rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and page.samplesperpixel in (3, 4)
    return (grey or rgb) and (page.samplesperpixel == 1 or page.planarconfig == tifffile.PLANARCONFIG.CONTIG) \
        and (orientation is None or orientation.value == 1)


def _read_tiff_high_bit(path: Path) -> tuple[np.ndarray, float] | None:
    """16-bit RGB(A) and grey + alpha TIFFs, which Pillow cannot decode at full depth (or at all). Other sample
    types go to Pillow, which refuses them (`_unreadable_tiff`, `_refuse_wide_samples`)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.dtype != np.uint16 or page.shape[0] * page.shape[1] > MAX_PIXELS \
                    or not _plain_tiff_page(page):
                return None
            array = page.asarray()
    except Exception:
        return None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 2:  # grey + alpha
        array = np.concatenate([np.repeat(array[..., :1], 3, axis=2), array[..., 1:]], axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(array, dtype=np.uint16), 65535.0  # native byte order
