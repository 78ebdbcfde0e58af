"""Input pixels by region, so that an input never has to be decoded whole.

Images within `max_pixels` are decoded once through `blk.data.images` (the
house's safe reader: orientation, CMYK, palettes, damaged files as one
sentence) and kept in memory as the file's 8- or 16-bit levels. Larger ones — including those above Pillow's
bomb limit, which is never raised — are opened lazily with pyvips and read one
region at a time (a TIFF), or streamed top to bottom (a PNG, JPEG or WebP: `row_stream`). Every source gives
float32 RGB or RGBA in [0, 1].

`FilledSource` gives transparent pixels the colour of their visible
neighbours before a model sees them (see its docstring for why).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from blk.data.images import MAX_PIXELS, TooManyPixels, is_image_name, read_info, read_levels, to_unit
from blk.errors import BadImage, UserError

# Decoded whole below this (kept as levels, `ArraySource`: 8-bit RGBA 128 MB); read by region above.
# Never above Pillow's limit.
WHOLE_IMAGE_PIXELS = 32 * 2**20
_VIPS_LOADERS = {"pngload", "jpegload", "webpload", "tiffload"}
FILL_RADIUS = 24  # px of colour grown under transparent areas (`FilledSource`; covers a model's useful context)
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}  # Pillow's grey modes


class Source(Protocol):
    width: int
    height: int
    channels: int  # 3 (RGB) or 4 (RGBA, straight alpha)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """float32 (h, w, channels) in [0, 1]."""


@dataclass
class InputImage:
    """An opened input: where its pixels come from, and what its file says about them."""

    source: Source
    name: str
    bit_depth: int  # 8 or 16 bits per channel in the file
    icc: bytes | None  # an RGB (or grey) profile to carry over; a CMYK input's: sRGB, converted through its own
    dpi: float | None  # horizontal resolution
    by_region: bool  # True when read lazily with pyvips
    grey: bool = False  # a grey (or grey + alpha) file: read as RGB(A) for the models, written back as grey
    dpi_y: float | None = None  # the vertical resolution where it differs (a fax's 204 × 98 dpi)
    # bytes libvips writes to its temporary folder (`blk.vips.temp_dir`) to read this input by region: a JPEG
    # turned by its EXIF or an interlaced PNG is decoded whole to a file there first (other PNG, JPEG and WebP
    # files are streamed, `row_stream`; a TIFF has random access)
    spill_bytes: int = 0

    @property
    def resolution(self) -> float | tuple[float, float] | None:
        """The dpi the result carries: one number, or (horizontal, vertical) where the file's pixels are not
        square (they were written as one resolution both ways: a 300 × 150 dpi scan printed at half its
        height)."""
        return (self.dpi, self.dpi_y) if self.dpi and self.dpi_y else self.dpi

    @property
    def width(self) -> int:
        return self.source.width

    @property
    def height(self) -> int:
        return self.source.height

    @property
    def channels(self) -> int:
        return self.source.channels


class ArraySource:
    """An image in memory: float32 in [0, 1], or levels (`blk.data.images.read_levels`) with the level
    that means 1.0 as `peak`, converted region by region: an 8-bit input held whole takes a quarter of its
    float32 size (a 32 MP RGBA input: 128 MB, not 512)."""

    def __init__(self, array: np.ndarray, peak: float = 1.0):
        self.array, self.peak = array, float(peak)
        self.height, self.width, self.channels = array.shape

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        region = self.array[y:y + h, x:x + w]
        return region if region.dtype == np.float32 and self.peak == 1.0 else to_unit(region, self.peak)


class VipsSource:
    """A lazily opened pyvips image, converted to sRGB(A) 8/16-bit; regions decode on demand."""

    def __init__(self, image, name: str):
        self.image, self.name = image, name
        self.width, self.height, self.channels = image.width, image.height, image.bands
        self.peak = 65535.0 if image.format == "ushort" else 255.0

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        from blk.upscale.canvas import is_disk_full
        from blk.vips import pyvips, temp_dir

        try:
            region = self.image.crop(x, y, w, h).numpy()
        except pyvips.Error as exc:
            if is_disk_full(exc) or "unable to write" in str(exc):  # its decode to a temporary file, not the file
                raise UserError(f"The disk holding {temp_dir()} is full: {self.name} is decoded there whole "
                                "first; free some space, set TMPDIR to a larger disk, or give the input as a "
                                "TIFF.") from None
            raise BadImage(f"{self.name} is damaged and cannot be decoded ({_first_line(exc)}).") from None
        return to_unit(region.reshape(h, w, self.channels), self.peak)


class FilledSource:
    """RGBA where fully transparent pixels take the colour of their nearest visible neighbours.

    Why: a straight-alpha file usually stores black (or junk) under alpha 0. An
    upscaler looks at neighbourhoods, so that black bleeds into the visible
    edge as a dark fringe. Premultiplying would avoid the junk but darkens edge
    colours inside the network (it is not linear) and amplifies noise when we
    divide by a small alpha again. Filling instead gives the model a plausible
    continuation of the visible colour, and the visible colours are left
    exactly as they are. The fill grows `radius` pixels out from visible ones;
    each region is filled with a margin of `radius`, so the result does not
    depend on where tiles are cut.
    """

    def __init__(self, inner: Source, radius: int = FILL_RADIUS):
        assert inner.channels == 4
        self.inner, self.radius = inner, radius
        self.width, self.height, self.channels = inner.width, inner.height, 4

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        m = self.radius
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(self.width, x + w + m), min(self.height, y + h + m)
        region = np.array(self.inner.read(x0, y0, x1 - x0, y1 - y0), dtype=np.float32)
        region[..., :3] = fill_transparent(region[..., :3], region[..., 3], m)
        return region[y - y0:y - y0 + h, x - x0:x - x0 + w]


def fill_transparent(rgb: np.ndarray, alpha: np.ndarray, radius: int) -> np.ndarray:
    """Colours of alpha-0 pixels replaced by the mean of visible 3×3 neighbours, grown `radius` times."""
    import torch
    import torch.nn.functional as F

    known = torch.from_numpy(np.ascontiguousarray(alpha > 0, dtype=np.float32))[None, None]
    if bool(known.all()) or not bool(known.any()):
        return rgb
    original = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    colour = original * known
    for _ in range(radius):
        total = F.avg_pool2d(colour, 3, stride=1, padding=1)  # zero padding: same at image edges for any cut
        count = F.avg_pool2d(known, 3, stride=1, padding=1)
        grow = (known == 0) & (count > 0)
        if not bool(grow.any()):
            break
        colour = torch.where(grow, total / count.clamp_min(1e-12), colour)
        known = torch.where(grow, torch.ones_like(known), known)
    filled = torch.where(known > 0, colour, original)
    return filled[0].numpy().transpose(1, 2, 0)


def open_input(path: str | Path, max_pixels: int = WHOLE_IMAGE_PIXELS, one_region: bool = False) -> InputImage:
    """Open an image for upscaling; BadImage with one sentence when it cannot be used. `one_region`: the caller
    reads a single region (the before/after view): a large PNG, JPEG or WebP is then decoded as a stream down to
    it, not whole to a temporary file first (gigabytes for a mural, at each move of the view)."""
    path = Path(path)
    if not is_image_name(path):
        raise BadImage(f"{path.name} is not an image in a supported format (PNG, JPEG, WebP, TIFF, BMP).")
    header = _vips_header(path, one_region) if path.is_file() else None  # lazy: reads the header only
    if header is not None and header.width * header.height > min(max_pixels, MAX_PIXELS):
        # by region, and before Pillow looks: Pillow decodes a whole PNG to find an eXIf chunk
        # after the pixels (measured: 2.5 s and 256 MB for 64 MP), which libvips handles itself
        return _vips_input(header, path)
    if header is not None and header.get("vips-loader") == "tiffload" and (
            header.format == "ushort" or UNMARKED in tiff_extra_samples(path)):
        # 16-bit TIFFs of any layout (rotated, CMYK, planar, grey + alpha), upright; and a TIFF with channels that
        # are not transparency, kept as a whole by libvips (Pillow drops one, and refuses one beside transparency)
        return _vips_input(header, path)
    try:
        info = read_info(path)  # damaged, not an image: Pillow's sentence
    except TooManyPixels:  # and libvips cannot read it by region (it sent such artwork here, "the Upscale tab")
        raise BadImage(f"{path.name} is too large to decode whole and its format cannot be read by region; save "
                       "it as a TIFF (or PNG) and upscale that.") from None
    if header is not None and info.bit_depth == 16 and info.format == "PNG" and not info.mode.startswith("I;16"):
        return _vips_input(header, path)  # Pillow would decode a 16-bit RGB PNG to 8 bits
    levels, peak = read_levels(path)
    icc, (dpi, dpi_y) = _pillow_metadata(path, info.mode)
    return InputImage(ArraySource(np.ascontiguousarray(levels), peak), path.name,
                      16 if info.bit_depth >= 16 else 8, icc, dpi, by_region=False, grey=info.mode in GREY_MODES,
                      dpi_y=dpi_y)


def input_notes(path: str | Path) -> list[str]:
    """A sentence for each part of the file that is not upscaled, which went without a word: the frames or pages
    after the first (an animated PNG or WebP, a multi-page TIFF), and a TIFF's channels that are not marked as
    transparency (`_without_unmarked_channels`)."""
    from PIL import Image

    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                frames = int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001  (too large for Pillow, or not its format: read by region, one frame)
        frames = 1
    if frames > 1:
        notes.append(f"{Path(path).name} holds {frames} frames or pages; only the first is upscaled.")
    unmarked = tiff_extra_samples(path).count(UNMARKED) if str(path).lower().endswith((".tif", ".tiff")) else 0
    if unmarked:
        notes.append(f"{Path(path).name} has {unmarked} extra channel{'s' if unmarked > 1 else ''} not marked as "
                     f"transparency (a saved selection or mask); {'they are' if unmarked > 1 else 'it is'} left "
                     "out.")
    return notes


UNMARKED = 0  # a TIFF ExtraSamples value: an extra channel of no stated meaning (Photoshop's saved selections)


def tiff_extra_samples(path: str | Path) -> tuple[int, ...]:
    """The first page's ExtraSamples (0 unmarked, 1 premultiplied alpha, 2 alpha), from its tags only; () when
    there are none or the file is no TIFF tifffile reads."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(int(kind) for kind in tif.pages.first.extrasamples)
    except Exception:  # noqa: BLE001  (not a TIFF, or damaged: the reader says why)
        return ()


def _without_unmarked_channels(image, extras: tuple[int, ...]):
    """The colour channels and the first one marked as transparency. libvips took any 4th channel for alpha, so a
    16-bit Photoshop file with a saved selection came out see-through where the selection was black, and one
    with transparency and a selection (5 channels) was refused. Photoshop, GIMP and Pillow treat an unmarked
    extra channel as not transparency."""
    if UNMARKED not in extras or image.bands <= len(extras):
        return image
    colour = image.bands - len(extras)
    alpha = next((colour + i for i, kind in enumerate(extras) if kind != UNMARKED), None)
    kept = image.extract_band(0, n=colour)
    return kept if alpha is None else kept.bandjoin(image.extract_band(alpha))


def _pillow_metadata(path: Path, mode: str) -> tuple[bytes | None, tuple[float | None, float | None]]:
    """(ICC profile, (horizontal dpi, vertical dpi where it differs))."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size already checked
        with Image.open(path) as im:
            icc = im.info.get("icc_profile") or None
            dpi = _stated_dpi(im)
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block turns nothing
                orientation = 1
    if mode == "CMYK":  # converted (`blk.data.images._cmyk_to_rgb`): to sRGB through its profile, else plainly
        icc = _converted_profile(icc)
    return icc, _resolution(*_upright_resolution(dpi or (None, None), orientation))


def _upright_resolution(dpi: tuple, orientation) -> tuple:
    """(x, y) as the file stores them, for the picture turned upright: a quarter turn (EXIF orientations 5–8)
    swaps them, as it swaps width and height."""
    return tuple(reversed(dpi)) if orientation in (5, 6, 7, 8) else tuple(dpi)


def _resolution(x: float | None, y: float | None) -> tuple[float | None, float | None]:
    """(horizontal, vertical) in dpi, rounded; vertical None where it is the same; (None, None) for none (a
    value of 1 or less is a file's placeholder, not a resolution)."""
    if not x or float(x) <= 1.0:
        return None, None
    x, y = round(float(x), 2), round(float(y), 2) if y and float(y) > 1.0 else None
    return x, (y if y != x else None)


def _stated_dpi(im) -> tuple[float, float] | None:
    """Pillow's DPI when the file states one. Pillow gives a JPEG whose EXIF has no resolution 72 dpi, which
    the result would carry as if the artist had set it (libvips' reads: `_stored_dpi`); a JPEG states one in
    its JFIF header (in inches or centimetres) or in EXIF (XResolution with ResolutionUnit)."""
    dpi = im.info.get("dpi")
    if dpi and im.format in ("JPEG", "MPO") and im.info.get("jfif_unit") not in (1, 2):
        try:
            exif = im.getexif()
            stated = 0x011A in exif and 0x0128 in exif
        except Exception:  # a broken EXIF block states nothing
            stated = False
        return dpi if stated else None
    if dpi and im.format == "PNG":
        dpi = tuple(_per_metre_snapped(value) for value in dpi)
    return dpi


def _per_metre_snapped(dpi: float | None) -> float | None:
    """A PNG's resolution is stored in whole pixels per metre: 150 dpi comes back as 150.0114 (and the master
    was tagged 150.01); within 0.02 of a tenth it is taken as that tenth, as it was set."""
    if dpi is None:
        return None
    return round(dpi, 1) if abs(dpi - round(dpi, 1)) < 0.02 else dpi


def _converted_profile(icc: bytes | None) -> bytes | None:
    """The profile of a CMYK file's pixels once converted: sRGB when its own profile was used (a CMYK profile
    must not label RGB pixels), None when there was none usable (the plain formula: no colour space stated)."""
    if not icc:
        return None
    import io

    from PIL import ImageCms

    from blk.upscale.canvas import srgb_profile

    try:
        ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception:  # `_cmyk_to_rgb` fell back to the plain formula
        return None
    return srgb_profile()


# libvips fills the missing rows of a truncated PNG or JPEG with black or grey by default: an error instead,
# as Pillow gives for the same file held whole
FAIL_ON = "truncated"


def _vips_header(path: Path, one_region: bool = False):
    """The file opened lazily by libvips (None when libvips cannot read it). `one_region`: streamed (sequential
    access) where it can be: no TIFF (read by region anyway), no rotation tag (turning needs random access)."""
    try:
        from blk.vips import pyvips

        image = pyvips.Image.new_from_file(str(path), fail_on=FAIL_ON)
        if one_region and image.get("vips-loader") not in ("tiffload", None) and _upright(image):
            image = pyvips.Image.new_from_file(str(path), access="sequential", fail_on=FAIL_ON)
    except Exception:
        return None
    return image if image.get("vips-loader") in _VIPS_LOADERS else None


def _upright(image) -> bool:
    return "orientation" not in image.get_fields() or image.get("orientation") in (0, 1)


# No real image compresses beyond this (deflate stops near 1032:1, LZW and JPEG far below); a file
# claiming more pixels per byte is a header with its data missing.
MAX_COMPRESSION = 20000


def _vips_input(image, path: Path) -> InputImage:
    """sRGB(A), 8 or 16 bits, upright; ICC and DPI from the header. An upright PNG, JPEG or WebP is streamed
    (`row_stream.RowStream`: decoded once, top to bottom, nothing written to disk); a TIFF is read by region
    itself; a turned or interlaced file is read by region through libvips' temporary copy (`spill_bytes`)."""
    raw_bytes = image.width * image.height * image.bands * (2 if image.format == "ushort" else 1)
    if raw_bytes > MAX_COMPRESSION * max(path.stat().st_size, 1):
        raise BadImage(f"{path.name} claims {image.width}×{image.height} pixels but holds only "
                       f"{path.stat().st_size} bytes: it is damaged or truncated.")
    fields = set(image.get_fields())
    loader = image.get("vips-loader")
    icc = image.get("icc-profile-data") if "icc-profile-data" in fields else None
    dpi, dpi_y = _stored_dpi(image, fields, path)
    if "orientation" in fields:  # read before `_converted` turns the picture upright
        dpi, dpi_y = _resolution(*_upright_resolution((dpi, dpi_y or dpi), image.get("orientation")))
    streamed = loader != "tiffload" and "vips-sequential" not in fields and _upright(image) \
        and not (loader == "pngload" and "interlaced" in fields and image.get("interlaced"))
    file_icc = icc
    if loader == "tiffload":
        image = _without_unmarked_channels(image, tiff_extra_samples(path))
    image, icc, high, grey = _converted(image, path, file_icc)
    if streamed:
        from blk.upscale.row_stream import RowStream
        from blk.vips import pyvips

        def reopen():
            opened = pyvips.Image.new_from_file(str(path), access="sequential", fail_on=FAIL_ON)
            return _converted(opened, path, file_icc)[0]

        source = RowStream(reopen, path.name, image.width, image.height, image.bands, high)
    else:
        source = VipsSource(image, path.name)
    spill = raw_bytes if loader != "tiffload" and "vips-sequential" not in fields and not streamed else 0
    return InputImage(source, path.name, 16 if high else 8, icc, dpi, by_region=True, grey=grey,
                      spill_bytes=spill, dpi_y=dpi_y)


def _converted(image, path: Path, icc: bytes | None):
    """(the image upright as sRGB(A) 8 or 16 bits, the profile of those pixels, 16-bit?, grey?), lazily."""
    try:
        image = image.autorot()
        high = image.format == "ushort"
        if image.interpretation == "cmyk":
            image, icc = _cmyk_to_srgb(image, high, icc)
        grey = image.bands in (1, 2)
        if grey:
            image = image.colourspace("rgb16" if high else "srgb")
        if image.format not in ("uchar", "ushort") or image.bands not in (3, 4):
            raise BadImage(f"{path.name} has {image.bands} channels of {image.format} samples; "
                           "only 8- or 16-bit RGB, RGBA or grey images can be upscaled.")
    except Exception as exc:
        if isinstance(exc, BadImage):
            raise
        raise BadImage(f"{path.name} cannot be read ({_first_line(exc)}).") from None
    return image, icc, high, grey


def _cmyk_to_srgb(image, high: bool, icc: bytes | None):
    """(RGB pixels, their profile) from a lazily read CMYK image, as `blk.data.images` converts one held whole:
    through its embedded profile (libvips' intent is relative colorimetric, as there), then tagged sRGB;
    without a profile, R = (1 − C)(1 − K) (why: `blk.data.images._cmyk_to_rgb`), untagged like the file.
    libvips alone would guess a press profile for the latter: other colours than the same file held whole."""
    from blk.upscale.canvas import srgb_profile

    space = "rgb16" if high else "srgb"
    if icc:
        return image.colourspace(space), srgb_profile()
    peak = 65535 if high else 255
    rgb = (peak - image.extract_band(0, n=3)) * (peak - image.extract_band(3)) / peak
    rgb = rgb.rint().cast("ushort" if high else "uchar")
    if image.bands > 4:  # alpha
        rgb = rgb.bandjoin(image.extract_band(4, n=image.bands - 4))
    return rgb.copy(interpretation=space), None


def _stored_dpi(image, fields: set[str], path: Path) -> tuple[float | None, float | None]:
    """The resolution the file stores, as the whole-image reader gives it (`_resolution`).

    Why not `xres` alone: libvips fills in a default when a file says nothing (71.98 dpi for a PNG
    without pHYs, 25.4 for a TIFF without resolution tags), and that guess would be written into
    the result as if the artist had set it. libvips names a unit only for a stored physical
    resolution (TIFF, JPEG); it never does for PNG, whose pHYs chunk we read ourselves."""
    if "resolution-unit" in fields:  # libvips keeps pixels per millimetre, whatever the file's unit
        return _resolution(image.xres * 25.4, image.yres * 25.4)
    if image.get("vips-loader") == "pngload":
        return _resolution(*_png_dpi(path))
    return None, None


def _png_dpi(path: Path) -> tuple[float | None, float | None]:
    """Pixels per inch (x, y) from a PNG's pHYs chunk in metres (it precedes the image data); None without
    one."""
    import struct

    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return None, None
            while True:
                head = handle.read(8)
                if len(head) < 8:
                    return None, None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"pHYs" and length == 9:
                    data = handle.read(9)
                    if len(data) < 9:
                        return None, None  # truncated: the pixels' own reader says so
                    x, y, unit = struct.unpack(">IIB", data)
                    if unit != 1:
                        return None, None  # unit 0: an aspect only
                    return _per_metre_snapped(x * 0.0254), _per_metre_snapped(y * 0.0254)
                if kind in (b"IDAT", b"IEND"):
                    return None, None
                handle.seek(length + 4, 1)  # the chunk's data and CRC
    except OSError:
        return None, None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _upright_header(path: Path):
    """(libvips' header, the same turned upright by its EXIF), or None when libvips cannot open the file."""
    header = _vips_header(path) if path.is_file() and is_image_name(path) else None
    if header is None:
        return None
    return header, (header.autorot() if header.get_typeof("orientation") else header)


def input_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an input as it will be upscaled (upright), from its header only."""
    headers = _upright_header(Path(path))
    if headers is None:
        info = read_info(path)
        return info.width, info.height
    return headers[1].width, headers[1].height


def input_preview(path: str | Path, side: int = 480) -> tuple[np.ndarray, str]:
    """A small 8-bit view of an input (uint8 H×W×3 or ×4, its transparency kept) and one line about the file
    (size, bits, transparency), read from the file itself: the Upscale tab shows what it will enlarge, not a
    browser's 8-bit RGB copy of it. libvips shrinks while it reads, so a gigapixel TIFF needs little memory."""
    from blk.vips import pyvips

    path = Path(path)
    headers = _upright_header(path)
    if headers is None:
        info = read_info(path)  # Pillow's sentence for what libvips cannot read (or a wrong type of file)
        raise BadImage(f"{path.name} ({info.format}) cannot be previewed here.")
    header, upright = headers
    raw_bytes = header.width * header.height * header.bands * (2 if header.format == "ushort" else 1)
    if raw_bytes > MAX_COMPRESSION * max(path.stat().st_size, 1):
        raise BadImage(f"{path.name} claims {header.width}×{header.height} pixels but holds only "
                       f"{path.stat().st_size} bytes: it is damaged or truncated.")
    extras = tiff_extra_samples(path) if path.suffix.lower() in (".tif", ".tiff") else ()
    try:
        if UNMARKED in extras:  # the job leaves such channels out; libvips' thumbnail took one for transparency
            whole = _without_unmarked_channels(pyvips.Image.new_from_file(str(path), fail_on=FAIL_ON), extras)
            small = whole.autorot().thumbnail_image(side, height=side, size="down")
        else:
            small = pyvips.Image.thumbnail(str(path), side, height=side, size="down")  # upright, alpha kept
        view = small.colourspace("srgb")  # grey and 16-bit RGB become 8-bit sRGB
        if view.format != "uchar":
            view = (view / 256 if view.format == "ushort" else view).cast("uchar")
        alpha, pixels = small.hasalpha(), view.numpy()
    except pyvips.Error as exc:
        raise BadImage(f"{path.name} cannot be read ({_first_line(exc)}).") from None
    bits = 16 if header.format == "ushort" else 8
    note = (f"{path.name}: {upright.width}×{upright.height}, {bits}-bit"
            + (", with transparency" if alpha else "") + ".")
    return np.ascontiguousarray(pixels), note
