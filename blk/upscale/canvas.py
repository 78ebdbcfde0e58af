"""A disk-backed canvas for results that need not fit in RAM, and the atomic writers.

The canvas is a raw uint16 RGB(A) file next to the output, named with
`blk.atomic.TEMP_PREFIX` so that cleanup recognises it. Space is reserved up
front (`posix_fallocate`): a full disk fails at once, not hours later. Tiles
are added with plain `pread`/`pwrite` (no memory map), so the process's memory
stays at a tile or a band whatever the size of the image; the page cache
belongs to the system. Partial sums of blended tiles are stored in 16 bits;
the rounding (≤ 2 steps of 1/65535 with four tiles meeting) is far below what
an 8-bit or 16-bit output can show.

Writers: a tiled TIFF with tifffile (BigTIFF only when it may pass 4 GB) from a
generator of tiles (deflate + horizontal predictor, 8 or 16 bits, straight alpha marked `unassalpha`, ICC,
DPI, parameters as JSON in ImageDescription), or a PNG where the size allows
(8-bit, ≤ `MAX_PIXELS`) with `blk.png_encoder` and `metadata.parameter_chunks`. Both write a
temporary sibling and rename it over the target; every temporary is removed
on any error, a full disk included.

A grey input gives a grey result (`grey=True`): the canvas stays RGB(A), as
the models work in colour, and the writers keep its luminance (Pillow's L
weights) as one channel, plus alpha: a greyscale scan of ink stays greyscale,
a third of the size, and keeps its grey ICC profile, which must never label
RGB pixels.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import math
import os
import secrets
import struct
import threading
from pathlib import Path

import numpy as np

from blk import atomic
from blk.data.images import MAX_PIXELS
from blk.errors import UserError
from blk.png_encoder import usable_cores
from blk.workspace import check_writable_folder

PNG_SIDE_LIMIT = 1_000_000  # libpng refuses to read wider or taller PNGs by default
TIFF_TILE = 256
WRITE_COLUMNS = 16 * TIFF_TILE  # the TIFF writers read the canvas in chunks this wide (`bands`)
# zlib level 1: on an upscaled 4096² image, 6.5× faster than the default level 6 for a 15% larger file
# (bench/README.md, "TIFF deflate level"): hours saved on a gigapixel master, a few hundred MB spent.
DEFLATE_LEVEL = 1

# canvas chunks read and converted ahead of the writers, each on a thread of its own (numpy's lookups release the
# GIL): a 4096² 8-bit TIFF on 2 cores took 0.27 s with two, 0.31–0.33 s with one. Each costs a chunk in flight
# (traced: +12 MB for a TIFF, +44 MB for a print copy's float chunks), whatever the image's size.
READ_AHEAD = max(1, min(2, usable_cores()))
TO_8_BITS = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)  # 16-bit level → nearest 8-bit


def grey_levels(band: np.ndarray) -> np.ndarray:
    """16-bit RGB(A) levels → 16-bit grey (h, w) or grey + alpha (h, w, 2), with Pillow's L weights
    (ITU-R 601-2 luma), rounded once."""
    rgb = band[..., :3].astype(np.uint32)
    grey = ((rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000).astype(np.uint16)
    return grey if band.shape[-1] == 3 else np.stack([grey, band[..., 3]], axis=-1)


def icc_space(icc: bytes | None) -> bytes | None:
    """An ICC profile's data colour space (b"RGB ", b"GRAY", …), from its header; None when unreadable."""
    return bytes(icc[16:20]) if icc and len(icc) >= 128 else None


def fitting_icc(icc: bytes | None, grey: bool) -> bytes | None:
    """The profile when it describes the result's pixels (grey or RGB), else None: a viewer that
    colour-manages would reject a grey profile on RGB pixels, or show them wrongly."""
    return icc if icc_space(icc) == (b"GRAY" if grey else b"RGB ") else None


@functools.cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile (littlecms' built-in, "sRGB built-in"): for pixels made sRGB by a conversion (a CMYK
    input's), and for the print copy of a result that has no profile."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def read_icc(path: Path, grey: bool) -> bytes:
    """A profile the artist chose for the result: one sentence when it is not one, or of the other kind."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"Could not read the ICC profile {path} ({exc.strerror}).") from None
    if len(data) < 132 or data[36:40] != b"acsp":
        raise UserError(f"{Path(path).name} is not an ICC profile.")
    if fitting_icc(data, grey) is None:
        kind = icc_space(data).decode("ascii", "replace").strip()
        raise UserError(f"{Path(path).name} is {_a(kind)} {kind} profile, and this result is "
                        f"{'grey (as its input)' if grey else 'RGB'}: choose {'a GRAY' if grey else 'an RGB'} profile.")
    return data


def _a(word: str) -> str:
    """The article before a colour space's name as it is read aloud ("an RGB", "a GRAY", "a CMYK")."""
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"


def _deflate(tiles_per_thread: int = 8) -> dict:
    """tifffile's compression arguments: deflate at DEFLATE_LEVEL with the horizontal predictor, on
    every core this process may use (tifffile's default takes half): on a GPU the cores are otherwise
    idle, also while a result streams out during its last pass (`streamed_tiff`).

    buffersize: tifffile gathers this many bytes of tiles per round of threads; its default (512 MB)
    held ~0.5 GB of bands at 1 GP. `tiles_per_thread` (of 16-bit RGBA size, the largest) keep the
    threads busy with tens of MB; a streamed writer takes fewer, so that a round fills from the rows
    already final instead of waiting for the rows the model is still computing."""
    threads = usable_cores()
    return {"compression": "zlib", "compressionargs": {"level": DEFLATE_LEVEL}, "predictor": True,
            "maxworkers": max(1, threads),
            "buffersize": tiles_per_thread * max(1, threads) * TIFF_TILE * TIFF_TILE * 8}


def temp_path(next_to: Path, suffix: str) -> Path:
    """A fresh temporary name in the output's folder (not created)."""
    return next_to.parent / f"{atomic.TEMP_PREFIX}{secrets.token_hex(6)}{suffix}"


class Canvas:
    """height × width × channels uint16 on disk, row-major."""

    def __init__(self, path: Path, width: int, height: int, channels: int, *, create: bool = True):
        self.path, self.width, self.height, self.channels = Path(path), width, height, channels
        self.row_bytes = width * channels * 2
        size = self.row_bytes * height
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _reserve(self.fd, size, self.path)
            except BaseException:
                self.remove()
                raise
        else:
            self.fd = os.open(self.path, os.O_RDWR)
            if os.fstat(self.fd).st_size != size:
                self.close()
                raise RuntimeError(f"{self.path} does not hold a {width}×{height}×{channels} canvas")

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.height

    # -- raw access -------------------------------------------------------------------------
    def read_raw(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, self.channels), dtype=np.uint16)
        if x == 0 and w == self.width:
            _pread_into(self.fd, out, y * self.row_bytes)
        else:
            for i in range(h):
                _pread_into(self.fd, out[i], (y + i) * self.row_bytes + x * self.channels * 2)
        return out

    def write_raw(self, x: int, y: int, values: np.ndarray) -> None:
        """`values` may be a strided view (a tile's part right of its overlap): written row by row, each row
        contiguous, rather than copied whole first (a 1 GP job's tile: ~20 MB a write)."""
        values = np.asarray(values, dtype=np.uint16)
        h, w = values.shape[:2]
        if x == 0 and w == self.width and values.flags.c_contiguous:
            _pwrite(self.fd, values, y * self.row_bytes)
        else:
            for i in range(h):
                _pwrite(self.fd, values[i], (y + i) * self.row_bytes + x * self.channels * 2)

    # -- a Source (for a next pass) ---------------------------------------------------------
    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.read_raw(x, y, w, h).astype(np.float32) / 65535.0

    # -- a Sink (for the tiler) -------------------------------------------------------------
    def accumulate(self, x: int, y: int, values: np.ndarray) -> None:
        """Add uint16 levels to what is there, saturating at 65535 (rounded shares may sum to 65536)."""
        h, w = values.shape[:2]
        total = self.read_raw(x, y, w, h).astype(np.uint32) + values
        self.write_raw(x, y, np.minimum(total, 65535).astype(np.uint16))

    def snapshot(self, y0: int, y1: int):
        return y0, self.read_raw(0, y0, self.width, max(0, y1 - y0))

    def restore(self, snapshot) -> None:
        y0, rows = snapshot
        if len(rows):
            self.write_raw(0, y0, rows)

    def clear(self, y0: int, y1: int) -> None:
        y1 = min(y1, self.height)
        for start in range(y0, y1, 256):
            n = min(256, y1 - start)
            self.write_raw(0, start, np.zeros((n, self.width, self.channels), dtype=np.uint16))

    # -- lifetime ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Make every write so far durable (a resume journal relies on it)."""
        if getattr(self, "fd", None) is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _reserve(fd: int, size: int, path: Path) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, size) from None
        if exc.errno == errno.EFBIG:
            raise UserError(f"The file system holding {path.parent} cannot hold a {size / 2**30:.1f} GB file "
                            "(FAT32 stops at 4 GB); save the result on another disk.") from None
        os.ftruncate(fd, size)  # the filesystem cannot reserve: sparse file, errors come at write time


def _pread_into(fd: int, array: np.ndarray, offset: int) -> None:
    if not array.size:
        return
    view = memoryview(array).cast("B")
    got = os.preadv(fd, [view], offset)
    if got != view.nbytes:
        raise OSError(errno.EIO, f"short read from the canvas ({got} of {view.nbytes} bytes)")


def _pwrite(fd: int, array: np.ndarray, offset: int) -> None:
    if not array.size:
        return
    view = memoryview(np.ascontiguousarray(array)).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class DiskFull(UserError):
    """The disk filled up while a job wrote to it (`disk_full`)."""


def disk_full(path: Path, needed: int | None = None) -> UserError:
    need = f" (this step needs about {_amount(needed)})" if needed else ""
    return DiskFull(f"The disk holding {Path(path).parent} is full{need}; free some space and try again.")


def _amount(size: int) -> str:
    """1.5 GB, 12 MB, 56 KB: "1 MB free, needs about 1 MB" said nothing about a small disk."""
    if size >= 2**30:
        return f"{size / 2**30:.1f} GB"
    return f"{round(size / 2**20)} MB" if size >= 2**20 else f"{max(1, round(size / 2**10))} KB"


RESULT_SHARE = 0.5  # of a result's 8/16-bit pixels that its deflated TIFF or PNG is assumed to take on disk


def check_disk_space(output: Path, canvases: list[int], result_bytes: int, spill_bytes: int = 0) -> None:
    """One sentence before any work when the disk holding `output` cannot take the job: the most canvas bytes
    on disk at once (`canvases`: each step's, the previous step's still there) and the result itself. A job
    ran its first pass (hours, at gigapixel sizes) before the second pass's canvas found the disk full, and
    lost both. `spill_bytes`: what libvips writes to its temporary folder to read the input by region
    (`source.InputImage.spill_bytes`), on that folder's disk (the same one, or another)."""
    import shutil

    from blk.vips import temp_dir

    folder, temp = Path(output).parent, Path(temp_dir())
    together = spill_bytes and temp.exists() and temp.stat().st_dev == folder.stat().st_dev
    need = max(canvases, default=0) + int(result_bytes * RESULT_SHARE) + (spill_bytes if together else 0)
    free = shutil.disk_usage(folder).free
    if need > free:
        decoded = ", the result and the input decoded whole" if together else " and the result"
        raise UserError(f"The disk holding {folder} has {_amount(free)} free and this job needs about "
                        f"{_amount(need)} (its working canvases{decoded}); free some space or save the result "
                        "on another disk.")
    if spill_bytes and not together and temp.exists() and spill_bytes > (room := shutil.disk_usage(temp).free):
        raise UserError(f"The disk holding {temp} has {_amount(room)} free and reading this input needs about "
                        f"{_amount(spill_bytes)} there (a JPEG turned by its EXIF or an interlaced PNG this "
                        "large is decoded whole to a temporary file first); free some space, set TMPDIR to a larger disk, or give the input "
                        "as a TIFF.")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "no space left on device" in str(exc).lower() or "disk quota exceeded" in str(exc).lower()


# -- writers --------------------------------------------------------------------------------

Resolution = float | tuple[float, float]  # dpi: one number, or (horizontal, vertical) for pixels not square

def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix == ".png":
        return "png"
    raise UserError(f"Save the result as .tif (tiled TIFF, any size, 8 or 16 bits) or .png; "
                    f"{path.name} has neither extension.")


def check_png(width: int, height: int, bits: int) -> None:
    """Refuse before any work when a PNG cannot hold the result."""
    if bits == 16:
        raise UserError("16-bit results are written as TIFF; save as .tif or leave out --16bit.")
    if width * height > MAX_PIXELS or max(width, height) > PNG_SIDE_LIMIT:
        raise UserError(f"A {width}×{height} result is too large for PNG; save it as .tif (tiled TIFF, any size).")


CLASSIC_TIFF_BYTES = 3_900_000_000  # below 4 GiB, with room for deflate's worst case, tags and tile offsets


def needs_bigtiff(width: int, height: int, samples: int, bytes_per_sample: int) -> bool:
    """Whether a tiled TIFF of this size may pass classic TIFF's 4 GB (its edge tiles padded, uncompressed):
    below that the file is a classic TIFF, which every viewer opens (macOS Preview, many print RIPs read no
    BigTIFF); above, a BigTIFF, which large-image software reads."""
    padded = -(-width // TIFF_TILE) * TIFF_TILE * -(-height // TIFF_TILE) * TIFF_TILE
    return padded * samples * bytes_per_sample > CLASSIC_TIFF_BYTES


def write_tiff(canvas: Canvas, path: Path, *, bits: int, icc: bytes | None, dpi: Resolution | None,
               description: str, software: str, cancel: threading.Event | None = None,
               temp: Path | None = None, grey: bool = False) -> Path:
    """Tiled TIFF (`write_tiff_file`) at `path`, atomic: written under `temp` (default: a fresh `.blk-tmp-`
    name; e.g. one a resume journal knows, so that a process killed mid-write leaves nothing it cannot find),
    then renamed into place."""
    tmp = temp or temp_path(path, path.suffix)
    with committing(tmp, path):
        write_tiff_file(canvas, tmp, bits=bits, icc=icc, dpi=dpi, description=description, software=software,
                        cancel=cancel, grey=grey)
    return path


def resolution_xy(dpi: Resolution) -> tuple[float, float]:
    """(horizontal, vertical) of a resolution given as one number or as a pair (`InputImage.resolution`)."""
    return (float(dpi[0]), float(dpi[1])) if isinstance(dpi, (tuple, list)) else (float(dpi), float(dpi))


def write_tiff_file(canvas: Canvas, tmp: Path, *, bits: int, icc: bytes | None, dpi: Resolution | None,
                    description: str, software: str, cancel: threading.Event | None = None,
                    grey: bool = False, tiles_per_thread: int = 8) -> None:
    """Tiled TIFF (BigTIFF when it may pass 4 GB: `needs_bigtiff`), deflate + horizontal predictor, written
    from canvas chunks into `tmp` (not atomic by itself: `write_tiff`, `committing`).
    `grey`: one grey channel (and alpha) from the RGB(A) canvas. `tiles_per_thread`: see `_deflate`."""
    import tifffile

    dtype = np.uint16 if bits == 16 else np.uint8
    side = TIFF_TILE

    def convert(band: np.ndarray) -> np.ndarray:
        band = grey_levels(band) if grey else band
        return TO_8_BITS[band] if bits == 8 else band  # indexing releases the GIL; np.take does not

    def tiles():
        for chunk in bands(canvas, side, convert, cancel, WRITE_COLUMNS):  # row-major: tifffile's tile order
            for x in range(0, chunk.shape[1], side):
                yield chunk[:, x:x + side]  # tifffile copies and pads edge tiles in its compress threads

    extra = {"extrasamples": ["unassalpha"]} if canvas.channels == 4 else {}
    if dpi:
        extra |= {"resolution": resolution_xy(dpi), "resolutionunit": "INCH"}
    if icc:
        extra["iccprofile"] = icc
    shape = _written_shape(canvas, grey)
    big = needs_bigtiff(canvas.width, canvas.height, shape[2] if shape[2:] else 1, bits // 8)
    tifffile.imwrite(tmp, tiles(), shape=shape, dtype=dtype,
                     tile=(side, side), bigtiff=big, photometric="minisblack" if grey else "rgb",
                     planarconfig="contig" if shape[2:] else None,
                     description=description, metadata=None, software=software, **_deflate(tiles_per_thread),
                     **extra)


@contextlib.contextmanager
def committing(tmp: Path, path: Path):
    """`with committing(tmp, path):` around writing `tmp`: afterwards it is renamed over `path` (fsynced);
    on any error it is removed, and a full disk becomes one sentence naming `path`."""
    try:
        yield
        _commit(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise


def _written_shape(canvas: Canvas, grey: bool) -> tuple[int, ...]:
    """(height, width, samples) of the file, or (height, width) for grey without alpha."""
    if not grey:
        return canvas.height, canvas.width, canvas.channels
    return (canvas.height, canvas.width, 2) if canvas.channels == 4 else (canvas.height, canvas.width)


def bands(canvas: Canvas, rows: int, convert, cancel: threading.Event | None = None, columns: int | None = None):
    """`convert(chunk)` of each chunk of `rows` rows × `columns` columns (default: the full width), in
    row-major order; the next chunks are read and converted on `READ_AHEAD` threads while the caller works on
    this one (a writer's deflate threads otherwise wait on them: the 16-to-8-bit lookup of one chunk after
    another on one core was what a streamed TIFF's last row still waited for). `cancel` is checked before
    each chunk.

    Why chunks: a full-width band of a 32768 px wide canvas is 50 MB of 16-bit levels (134 MB as the
    print copy's floats), twice with the read-ahead: the writers' memory grew with the width, while
    chunks of `WRITE_COLUMNS` keep it flat."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from blk.upscale.tiler import Cancelled

    columns = columns or canvas.width
    origins = [(y, x) for y in range(0, canvas.height, rows) for x in range(0, canvas.width, columns)]

    def load(origin: tuple[int, int]) -> np.ndarray:
        y, x = origin
        return convert(canvas.read_raw(x, y, min(columns, canvas.width - x), min(rows, canvas.height - y)))

    with ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="blk-band-reader") as ahead:
        upcoming = deque(ahead.submit(load, origin) for origin in origins[:READ_AHEAD])
        try:
            for index in range(len(origins)):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                chunk = upcoming.popleft().result()
                if index + READ_AHEAD < len(origins):
                    upcoming.append(ahead.submit(load, origins[index + READ_AHEAD]))
                yield chunk
        finally:
            for future in upcoming:
                future.cancel()


MAX_DPI = 100_000  # far beyond any printer; TIFF stores a resolution as a ratio of 32-bit numbers


def check_outputs(source: Path, output: Path, print_dpi: float | None, dpi: float | None = None) -> None:
    """One sentence, before any work, when a job's result or print copy would overwrite the input (or each
    other), or a resolution is not one (a negative or NaN DPI failed only when the result was written)."""
    if source.resolve() == output.resolve():
        raise UserError("The result would overwrite the input; choose another output name.")
    if output.is_dir():
        raise UserError(f"{output} is a folder; name the result's file, ending in .tif or .png.")
    check_writable_folder(output.parent)  # before the work, not when the result is written
    for name, value in (("print resolution", print_dpi), ("resolution", dpi)):
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_DPI):
            raise UserError(f"The {name} must be above 0 and at most {MAX_DPI} dpi; got {value:g}.")
    if print_dpi and print_path(output).resolve() in (source.resolve(), output.resolve()):
        raise UserError("The print copy would overwrite the input or the result; choose another output name.")


def write_result(canvas: Canvas, output: Path, *, bits: int, icc: bytes | None, dpi: Resolution | None,
                 parameters: dict, print_dpi: float | None, print_background: tuple[int, int, int],
                 journal, cancel: threading.Event | None = None, grey: bool = False,
                 streamed=None, input_path: Path | None = None) -> dict[str, float]:
    """Both upscale paths' ending: the master (TIFF with the parameters as its description, or PNG with
    them in text chunks) and, when `print_dpi` is given, the print copy beside it; each written under a
    temporary name the resume `journal` knows. `grey`: both are grey (the input was). A profile of the
    other kind (a grey one on RGB pixels) is left out. `streamed`: the writers of the TIFF master and of
    the print copy that ran during the tiles (`streamed_tiff.StreamedResult`), finished here. Returns the
    seconds of each ("write", "print": what each took after the tiles)."""
    import json
    import time

    from blk import __version__

    software, seconds = f"BLK Studio {__version__}", {}
    icc = fitting_icc(icc, grey)
    parameters = parameters | ({"grey": True} if grey else {})
    started = time.monotonic()
    replaced = output.exists()  # an earlier result of the same name, whose print copy may be beside it
    if output_format(output) == "tiff":
        description = json.dumps(parameters | {"app_version": __version__}, ensure_ascii=True, sort_keys=True)
        if streamed is not None:
            streamed.master.finish(description)
        else:
            write_tiff(canvas, output, bits=bits, icc=icc, dpi=dpi, description=description, software=software,
                       cancel=cancel, temp=journal.temp("out.tif"), grey=grey)
    else:
        write_png(canvas, output, icc=icc, dpi=dpi, parameters=parameters, grey=grey)
    seconds["write"] = time.monotonic() - started
    if not print_dpi:
        _remove_outdated_print_copy(output, replaced, input_path)
        return seconds
    from blk.upscale.tiler import Cancelled

    printed = json.dumps(parameters | {"app_version": __version__, "print_dpi": print_dpi,
                                       "print_background": list(print_background), "bits": 8},
                         ensure_ascii=True, sort_keys=True)
    try:
        if streamed is not None and streamed.print_copy is not None:
            streamed.print_copy.finish(printed)
        else:
            write_print_tiff(canvas, print_path(output), dpi=print_resolution(print_dpi, dpi), icc=icc,
                             background=tuple(print_background),
                             description=printed, software=software, cancel=cancel, temp=journal.temp("print.tif"),
                             grey=grey)
    except Cancelled:
        raise PrintCopyCancelled(output) from None
    except Exception as exc:
        if isinstance(exc, DiskFull) or is_disk_full(exc):
            raise PrintCopyCancelled(output, f"the disk holding {output.parent} filled up while the print copy "
                                             "was written") from None
        raise
    seconds["print"] = time.monotonic() - started - seconds["write"]
    return seconds


def _remove_outdated_print_copy(output: Path, replaced: bool, input_path: Path | None) -> None:
    """A result written again under its name without a print copy: the copy an earlier job made beside it is of
    that job's image, and looked current. Only a print copy the studio wrote (its parameters say so), never the
    job's input, and kept when a result in another format (OUT.png beside OUT.tif, any case) may own it."""
    stale = print_path(output)
    if not replaced or not stale.is_file() or (input_path is not None and stale.resolve() == input_path.resolve()):
        return
    sharing = [f for f in output.parent.glob(glob.escape(output.stem) + ".*")
               if f.stem == output.stem and f.suffix.lower() in (".tif", ".tiff", ".png") and f != output]
    if not sharing and _is_print_copy(stale):
        stale.unlink(missing_ok=True)


def _is_print_copy(path: Path) -> bool:
    """Whether `path` is a print copy the studio wrote: its TIFF description holds the job's parameters with
    the print resolution (`write_result`)."""
    import json

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return "print_dpi" in json.loads(tif.pages[0].description or "{}")
    except Exception:  # not a TIFF, or a description of someone else's
        return False


def print_resolution(print_dpi: float, dpi: Resolution | None) -> Resolution:
    """The print copy's resolution: `print_dpi` across, and down as the master's pixels are tall (a 300 × 150
    dpi scan's copy keeps its printed shape)."""
    if dpi is None:
        return print_dpi
    x, y = resolution_xy(dpi)
    return print_dpi if x == y else (print_dpi, print_dpi * y / x)


class PrintCopyCancelled(UserError):
    """Cancel pressed (or the disk full: `why`) while the print copy was written, after the master was saved:
    the job is over (its files go: kept, they were orphaned, since the master's name is taken and a new start
    takes the next name), and the sentence says the result is there, not that nothing was written."""

    def __init__(self, output: Path, why: str = ""):
        if why:
            super().__init__(f"The result is saved as {Path(output).name}, without a print copy: {why}.")
        else:
            super().__init__(f"Cancelled while writing the print copy: the result is saved as {Path(output).name}, "
                             "without a print copy.")


def print_path(output: Path) -> Path:
    """Where the print copy of `output` goes: OUT.print.tif beside OUT.tif (or OUT.png)."""
    return output.with_name(f"{output.stem}.print.tif")


def parse_colour(text: str) -> tuple[int, int, int]:
    """'white', 'black', '#rrggbb' or 'r,g,b' (0–255) → (r, g, b)."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0)}
    value = text.strip().lower()
    try:
        if value in named:
            return named[value]
        if value.startswith("#") and len(value) == 7:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
        parts = tuple(int(v) for v in value.split(","))
        if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
            return parts
    except ValueError:
        pass
    raise UserError(f"{text!r} is not a colour; write white, black, #rrggbb or r,g,b.")


def write_print_tiff(canvas: Canvas, path: Path, *, dpi: Resolution, icc: bytes | None,
                     background: tuple[int, int, int] = (255, 255, 255), description: str = "",
                     software: str = "", cancel: threading.Event | None = None,
                     temp: Path | None = None, grey: bool = False) -> Path:
    """The print lab's copy (`write_print_tiff_file`) at `path`, atomic like `write_tiff`."""
    tmp = temp or temp_path(path, ".tif")
    with committing(tmp, path):
        write_print_tiff_file(canvas, tmp, dpi=dpi, icc=icc, background=background, description=description,
                              software=software, cancel=cancel, grey=grey)
    return path


def write_print_tiff_file(canvas: Canvas, tmp: Path, *, dpi: Resolution, icc: bytes | None,
                          background: tuple[int, int, int] = (255, 255, 255), description: str = "",
                          software: str = "", cancel: threading.Event | None = None, grey: bool = False,
                          tiles_per_thread: int = 8) -> None:
    """The print lab's copy: 8-bit RGB (grey with `grey`), alpha flattened over `background`, `dpi` and
    the ICC profile embedded; tiled, deflate; classic TIFF unless it needs BigTIFF (> 4 GB). Streams canvas
    chunks: memory stays at a chunk of 256 rows × `WRITE_COLUMNS` whatever the size. Into `tmp`, not atomic
    by itself (`write_print_tiff`, `committing`).

    Flattening is done on the stored (gamma-encoded) values, as image editors do:
    out = colour·α + background·(1 − α), from the 16-bit master, rounded once.

    An RGB result without a profile gets sRGB's in its print copy (the master stays as its input was): labs
    take untagged RGB as sRGB anyway, and want the profile stated. A grey one stays untagged (no grey
    profile would be more than a guess at its gamma), unless its transparency is flattened over a colour: that
    copy is RGB, with sRGB's profile."""
    import tifffile

    if grey and canvas.channels == 4 and len(set(background)) > 1:
        grey, icc = False, None  # a coloured background under a grey image's transparency: an RGB copy (it went grey)
    if not icc and not grey:
        icc = srgb_profile()

    side = TIFF_TILE
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3) * 257.0  # in 16-bit units

    def flatten(band: np.ndarray) -> np.ndarray:
        band = band.astype(np.float32)
        if canvas.channels == 4:
            a = band[..., 3:] / 65535.0
            band = band[..., :3] * a + bg * (1.0 - a)
        if grey:
            band = grey_levels(np.clip(np.rint(band), 0, 65535).astype(np.uint16)).astype(np.float32)
        return np.clip(np.rint(band / 257.0), 0, 255).astype(np.uint8)

    def tiles():
        for rgb8 in bands(canvas, side, flatten, cancel, WRITE_COLUMNS):
            for x in range(0, rgb8.shape[1], side):
                yield rgb8[:, x:x + side]

    extra = {"iccprofile": icc} if icc else {}
    big = needs_bigtiff(canvas.width, canvas.height, 1 if grey else 3, 1)
    tifffile.imwrite(tmp, tiles(), shape=(canvas.height, canvas.width) + (() if grey else (3,)), dtype=np.uint8,
                     tile=(side, side), bigtiff=big, photometric="minisblack" if grey else "rgb",
                     planarconfig=None if grey else "contig",
                     description=description or None, metadata=None, **_deflate(tiles_per_thread),
                     software=software or None, resolution=resolution_xy(dpi), resolutionunit="INCH",
                     **extra)


def write_png(canvas: Canvas, path: Path, *, icc: bytes | None, dpi: Resolution | None, parameters: dict,
              grey: bool = False) -> Path:
    """8-bit PNG (RGB(A), or L(A) with `grey`) with parameters and disclosure (`parameter_chunks`), ICC and pHYs,
    encoded on every core straight from the canvas's levels (no second copy of the pixels); atomic."""
    from blk.generate.metadata import PNG_COMPRESS_LEVEL, parameter_chunks
    from blk.png_encoder import chunk, icc_chunk, png_parts

    check_png(canvas.width, canvas.height, 8)
    pixels = np.empty(_written_shape(canvas, grey), dtype=np.uint8)
    y = 0

    def convert(rows: np.ndarray) -> np.ndarray:  # no 32-bit copy of the whole
        return TO_8_BITS[grey_levels(rows) if grey else rows]

    for band in bands(canvas, TIFF_TILE, convert):
        pixels[y:y + len(band)] = band
        y += len(band)
    modes = {(False, 3): "RGB", (False, 4): "RGBA", (True, 3): "L", (True, 4): "LA"}
    chunks = [icc_chunk(icc)] if icc else []
    if dpi:
        x, y = (int(round(v / 0.0254)) for v in resolution_xy(dpi))  # pHYs: pixels per metre
        chunks.append(chunk(b"pHYs", struct.pack(">IIB", x, y, 1)))
    parts = png_parts(pixels, modes[grey, canvas.channels], chunks + parameter_chunks(parameters),
                      level=PNG_COMPRESS_LEVEL)
    del pixels
    try:
        with atomic.atomic_open(path) as handle:
            handle.writelines(parts)  # one piece after the other: the file is never joined in memory
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    return path


def _commit(tmp: Path, path: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if os.name == "posix":
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
