"""A large PNG, JPEG or WebP input is streamed top to bottom (`blk.upscale.row_stream`), not decoded whole to a
temporary file first: the same pixels in the order the tiler reads them, no room needed in $TMPDIR, a damaged
file as one sentence, and no thread left behind."""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blk.errors import BadImage
from blk.upscale.row_stream import RowStream
from blk.upscale.source import VipsSource, open_input
from blk.upscale.tiler import spans
from tests.test_upscale_esrgan import noise

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inputs(folder: Path) -> dict[str, Path]:
    """An 8-bit RGB PNG, a 16-bit RGBA PNG, a grey PNG, a JPEG and a lossless WebP of 150×97 px."""
    from blk.vips import pyvips

    rgb = (noise(97, 150, seed=3) * 255).round().astype(np.uint8)
    rgba16 = np.rint(noise(97, 150, seed=4, channels=4) * 65535).astype(np.uint16)
    Image.fromarray(rgb).save(folder / "rgb.png")
    pyvips.Image.new_from_array(rgba16).copy(interpretation="rgb16").pngsave(str(folder / "rgba16.png"))
    Image.fromarray(rgb[..., 1]).save(folder / "grey.png")
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rgb).save(folder / "drawing.webp", lossless=True)
    return {p.name: p for p in folder.iterdir()}


def tiler_order(width: int, height: int, tile: int = 40, overlap: int = 12):
    """(x, y, w, h) of every tile as the tiler reads them: row by row, left to right, rows overlapping."""
    for row in spans(height, tile, overlap):
        for column in spans(width, tile, overlap):
            yield column.start, row.start, column.length, row.length


def test_large_png_jpeg_and_webp_inputs_stream_with_the_pixels_of_a_whole_decode(tmp_path):
    for name, path in inputs(tmp_path).items():
        streamed, whole = open_input(path, max_pixels=1000), open_input(path)
        assert isinstance(streamed.source, RowStream) and streamed.by_region and streamed.spill_bytes == 0, name
        assert (streamed.width, streamed.height, streamed.channels, streamed.bit_depth, streamed.grey) == \
            (whole.width, whole.height, whole.channels, whole.bit_depth, whole.grey), name
        everything = whole.source.read(0, 0, whole.width, whole.height)
        for x, y, w, h in tiler_order(streamed.width, streamed.height):
            assert np.array_equal(streamed.source.read(x, y, w, h), everything[y:y + h, x:x + w]), (name, x, y)
        assert streamed.source.restarts == 0, name  # one pass over the file
        # a read above the rows kept (no studio path makes one) starts again from the top, and is still right
        assert np.array_equal(streamed.source.read(3, 2, 20, 9), everything[2:11, 3:23]), name
        assert streamed.source.restarts == 1
        # a resumed job starts mid-image: the rows it skips are decoded and dropped, not shifted up
        assert np.array_equal(streamed.source.read(0, 60, 30, 10), everything[60:70, :30]), name
        assert streamed.source.restarts == 1
        streamed.source.close()


def test_a_jpeg_turned_by_its_exif_still_reads_by_region(tmp_path):
    """Turning needs the bottom rows first: such a file keeps libvips' region reader and counts its spill."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    Image.fromarray((noise(40, 60, seed=5) * 255).round().astype(np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    image = open_input(tmp_path / "turned.jpg", max_pixels=100)
    assert isinstance(image.source, VipsSource) and (image.width, image.height) == (40, 60)
    assert image.spill_bytes == 40 * 60 * 3
    assert np.array_equal(image.source.read(0, 0, 40, 60), open_input(tmp_path / "turned.jpg").source.read(0, 0, 40, 60))


READ_ALL = """
import sys
from blk.upscale.source import open_input
image = open_input(sys.argv[1], max_pixels=1000)
total = sum(float(image.source.read(0, y, image.width, min(50, image.height - y)).sum())
            for y in range(0, image.height, 50))
print(type(image.source).__name__, round(total, 3))
"""


def test_a_streamed_input_needs_no_room_in_the_temporary_folder(tmp_path):
    """libvips decodes a PNG read by region to a file in $TMPDIR (above VIPS_DISC_THRESHOLD; 0 here, so
    any size): with a 32 KB $TMPDIR, a turned JPEG's region reader fails for want of room, which shows the
    check can fail; a 600 KB PNG streams through it."""
    from tests.test_faults import tmpfs

    pixels = (noise(250, 800, seed=6) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "wall.png")
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    with tmpfs(tmp_path / "small-tmp", "32k") as small:
        env = {**os.environ, "TMPDIR": str(small), "VIPS_DISC_THRESHOLD": "0", "PYTHONPATH": str(ROOT)}

        def read_all(name: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", READ_ALL, str(tmp_path / name)], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)

        streamed = read_all("wall.png")
        assert streamed.returncode == 0, streamed.stderr
        assert streamed.stdout.split()[0] == "RowStream"
        assert abs(float(streamed.stdout.split()[1]) - pixels.sum() / 255) < 1e-2 * pixels.size / 255
        spilled = read_all("turned.jpg")
        assert spilled.returncode != 0 and "is full: turned.jpg is decoded there whole first" in spilled.stderr
        assert list(small.iterdir()) == []


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("blk-row-stream")]


def wait_for_no_stream_threads(seconds: float = 10.0) -> list[threading.Thread]:
    deadline = time.monotonic() + seconds
    while stream_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return stream_threads()


def test_a_damaged_stream_is_one_sentence_every_time_and_leaves_no_thread(tmp_path):
    Image.fromarray((noise(400, 300, seed=7) * 255).round().astype(np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    image = open_input(tmp_path / "cut.png", max_pixels=1000)
    assert isinstance(image.source, RowStream)
    image.source.read(0, 0, 300, 20)  # the top of the file is there
    for _ in range(2):  # a second read says the same at once, rather than waiting for a thread that is gone
        with pytest.raises(BadImage, match=r"^cut.png (is damaged and cannot be decoded \(|ends before its last row)"):
            image.source.read(0, 380, 300, 20)
    assert wait_for_no_stream_threads() == []
    # libvips' region reader (a turned JPEG) says so too: by default it filled the missing rows with grey
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray((noise(400, 300, seed=7) * 255).round().astype(np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    data = (tmp_path / "turned.jpg").read_bytes()
    (tmp_path / "turned-cut.jpg").write_bytes(data[:len(data) // 2])
    turned = open_input(tmp_path / "turned-cut.jpg", max_pixels=1000)
    assert isinstance(turned.source, VipsSource)
    with pytest.raises(BadImage, match=r"^turned-cut.jpg is damaged and cannot be decoded \("):
        turned.source.read(0, 0, 400, 300)


def test_an_abandoned_stream_stops_its_thread(tmp_path, monkeypatch):
    """A cancelled job drops its input half read: libvips' decode must not stay blocked on a full queue."""
    monkeypatch.setattr("blk.upscale.row_stream.QUEUE_BYTES", 1)  # a queue of 4 rows: the decode waits on it
    Image.fromarray((noise(600, 500, seed=8) * 255).round().astype(np.uint8)).save(tmp_path / "big.png")
    image = open_input(tmp_path / "big.png", max_pixels=1000)
    image.source.read(0, 0, 500, 10)
    time.sleep(0.5)
    assert len(stream_threads()) == 1  # waiting for room in the queue
    del image
    gc.collect()
    assert wait_for_no_stream_threads() == []


def test_an_out_of_memory_retry_reads_on_from_the_stream_without_starting_again(tmp_path):
    """The tiler's retry after running out of memory starts at or below the row that failed, so the stream
    never goes back to the top of the file; the result is the in-memory input's."""
    import torch

    from blk.upscale.canvas import Canvas
    from blk.upscale.esrgan import processor
    from blk.upscale.models import load_upscaler
    from blk.upscale.tiler import run_tiles
    from tests.test_upscale_esrgan import OutOfMemoryAbove, rrdb_file

    x4 = load_upscaler(rrdb_file(tmp_path / "RealESRGAN_x4plus_tiny.pth"))
    pixels = (noise(100, 88, seed=5) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    results = {}
    for name, max_pixels in (("stream", 1000), ("memory", 10**6)):
        image = open_input(tmp_path / "in.png", max_pixels=max_pixels)
        wrapped = OutOfMemoryAbove(x4.descriptor, limit=32, grace=1)  # row 1 of 64 px tiles finishes, row 2 fails
        process = processor(dataclasses.replace(x4, descriptor=wrapped), "cpu", torch.float32)
        canvas = Canvas(tmp_path / f"{name}.canvas", 88 * 4, 100 * 4, 3)
        stats = run_tiles(image.source, canvas, process, scale=4, tile=64, overlap=16, batch=2)
        assert (stats.tile, stats.oom_retries) == (32, 1)
        results[name] = canvas.read(0, 0, canvas.width, canvas.height)
        if name == "stream":
            assert isinstance(image.source, RowStream) and image.source.restarts == 0
    assert np.array_equal(results["stream"], results["memory"])
