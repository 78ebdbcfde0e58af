"""A TIFF result written while the last pass runs (`blk.upscale.streamed_tiff`): the same file as one written
after the tiles, really written during them, and never a half file when the job fails or is cancelled.
(Kill and resume of such a job: tests/test_upscale_resume.py; a disk that fills while it is written:
`test_disk_full_is_one_sentence_and_leaves_nothing` in tests/test_upscale_esrgan.py.)"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from blk.errors import UserError
from blk.upscale import esrgan
from blk.upscale.esrgan import EsrganJob, run
from blk.upscale.tiler import Cancelled
from tests.test_upscale_esrgan import noise, rrdb_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return rrdb_file(tmp_path_factory.mktemp("streamed") / "RealESRGAN_x4plus_tiny.pth")


def tiff_facts(path) -> dict:
    """Everything a reader gets from the file: pixels, description, profile, resolution, samples."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tags = {name: page.tags[name].value for name in ("XResolution", "ResolutionUnit", "ExtraSamples",
                                                         "InterColorProfile", "Software", "Predictor")
                if name in page.tags}
        return {"pixels": page.asarray(), "description": json.loads(page.description), "tags": tags,
                "tile": (page.tilewidth, page.tilelength), "bigtiff": tif.is_bigtiff}


def streamer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "blk-streamed-tiff"]


@pytest.mark.parametrize("kind", ["rgb", "rgba-16bit", "grey"])
def test_the_streamed_files_are_the_files_written_after_the_tiles(model, tmp_path, monkeypatch, kind):
    """The master and its print copy, streamed, carry the pixels and tags of those written after the tiles."""
    pixels = noise(72, 40, seed=5, channels=4 if kind.startswith("rgba") else 3)
    source = tmp_path / ("in.tif" if kind == "rgba-16bit" else "in.png")
    if kind == "rgba-16bit":
        tifffile.imwrite(source, np.rint(pixels * 65535).astype(np.uint16), photometric="rgb",
                         extrasamples=["unassalpha"], resolution=(300, 300), resolutionunit="INCH")
    elif kind == "grey":
        Image.fromarray((pixels[..., 0] * 255).astype(np.uint8), "L").save(source, dpi=(150, 150))
    else:
        Image.fromarray((pixels * 255).astype(np.uint8)).save(source, dpi=(72, 72))
    job = {"tile": 32, "overlap": 8, "batch": 1, "keep_16bit": kind == "rgba-16bit", "print_dpi": 200,
           "print_background": (250, 240, 230)}
    streamed = run(EsrganJob(source, tmp_path / "streamed.tif", model, **job))
    monkeypatch.setattr(esrgan, "STREAM_RESULT", False)
    after = run(EsrganJob(source, tmp_path / "after.tif", model, **job))
    for one, other in ((streamed.path, after.path), (streamed.print_path, after.print_path)):  # master, print copy
        a, b = tiff_facts(one), tiff_facts(other)
        assert np.array_equal(a.pop("pixels"), b.pop("pixels")) and a == b
        assert a["description"]["width"] == 160
    assert tiff_facts(streamed.path)["description"]["bits"] == (16 if kind == "rgba-16bit" else 8)
    assert tiff_facts(streamed.print_path)["description"]["print_dpi"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, "streamed.tif", "after.tif",
                                                                "streamed.print.tif", "after.print.tif"])


@pytest.fixture
def two_cores():
    """tifffile's rounds of tiles grow with the cores (`canvas._deflate`): the next test sizes its image for
    two, whatever the machine has (restored afterwards)."""
    import os

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:2])
    yield
    os.sched_setaffinity(0, before)


def test_the_result_is_written_while_the_last_rows_still_run(model, tmp_path, two_cores):
    """At the last tile, the writer has already put compressed tiles of the settled rows into the temporary
    file (waited for, up to 30 s: without streaming nothing is written before the tiles end). tifffile
    compresses tiles in rounds of its `buffersize`, so the image is made taller than a round."""
    from blk.upscale.canvas import TIFF_TILE, _deflate
    from blk.upscale.streamed_tiff import ROUND_TILES_PER_THREAD

    # 8-bit RGB tiles the streamed writer gathers per round
    per_round = _deflate(ROUND_TILES_PER_THREAD)["buffersize"] // (TIFF_TILE * TIFF_TILE * 3)
    width = 4 * TIFF_TILE  # four TIFF tiles across
    height = (per_round // 4 + 4) * TIFF_TILE  # a round, and three rows of TIFF tiles more, before the last
    image = tmp_path / "tall.png"
    Image.fromarray((noise(height // 4, width // 4, seed=6) * 255).astype(np.uint8)).save(image)
    seen = {}

    def progress(done, of):
        if done == of - 1 and "bytes" not in seen:  # inside the last row: rows above it are settled
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                written = [p.stat().st_size for p in tmp_path.glob(".blk-tmp-*.out.tif")]
                if written and written[0] > 100_000:  # compressed tiles, not only the header
                    break
                time.sleep(0.05)
            seen["bytes"] = max(written, default=0)

    result = run(EsrganJob(image, tmp_path / "out.tif", model, tile=64, overlap=8, batch=1), progress=progress)
    assert seen["bytes"] > 100_000
    assert tifffile.imread(result.path).shape == (height, width, 3)
    assert json.loads(tifffile.TiffFile(result.path).pages[0].description)["tile"] == 64
    assert not list(tmp_path.glob(".blk-tmp-*")) and not streamer_threads()


def test_a_failed_or_cancelled_job_leaves_no_file_and_no_writer(model, tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray((noise(160, 40, seed=7) * 255).astype(np.uint8)).save(image)
    cancel = threading.Event()

    def stop_half_way(done, of):
        if done >= of // 2:
            cancel.set()

    with pytest.raises(Cancelled):
        run(EsrganJob(image, tmp_path / "out.tif", model, tile=32, overlap=8, batch=1), progress=stop_half_way,
            cancel=cancel)
    assert not streamer_threads() and not (tmp_path / "out.tif").exists()
    assert not [p for p in tmp_path.glob(".blk-tmp-*.out.tif")]  # the cancel kept the canvas, not a half TIFF

    def fail(done, of):
        if done >= of // 2:
            raise UserError("The model stopped.")

    with pytest.raises(UserError, match="The model stopped."):
        run(EsrganJob(image, tmp_path / "failed.tif", model, tile=32, overlap=8, batch=1), progress=fail)
    assert not streamer_threads() and sorted(p.name for p in tmp_path.iterdir() if "failed" in p.name) == []


def test_the_journal_records_a_row_when_the_streamed_writer_has_failed(tmp_path):
    """The streamed writer hears a settled row first (it compresses while the journal fsyncs); when it has
    failed (or seen a cancel), its error comes out, but only after the journal has recorded the row, whose
    writes are whole: a resume does not redo it."""
    import errno

    from blk.upscale.canvas import Canvas
    from blk.upscale.esrgan import _also_settle
    from blk.upscale.streamed_tiff import StreamedResult, StreamedTiff
    from blk.upscale.tiler import RowDone

    def failing_disk(canvas, tmp, **options):
        raise OSError(errno.EIO, "test disk")

    canvas = Canvas(tmp_path / "c.canvas", 8, 8, 3)
    stream = StreamedResult(StreamedTiff(tmp_path / "out.tif", tmp_path / ".blk-tmp-out.tif", failing_disk))
    stream.start(canvas)
    recorded, rows = [], 0
    deadline = time.monotonic() + 30
    with pytest.raises(OSError, match="test disk"):
        while time.monotonic() < deadline:  # until the writer's thread has failed
            rows += 1
            _also_settle(recorded.append, stream)(RowDone(None, 32, rows, 3 * rows, 30, 4))
            time.sleep(0.01)
    assert [done.rows_done for done in recorded] == list(range(1, rows + 1))  # the failing call's row too
    stream.stop()
    canvas.remove()


def test_an_error_after_a_row_is_never_taken_for_out_of_memory(model):
    """A writer's error surfaces in `on_row_done`; one that says "memory" must not make the tiler halve the
    tile and redo rows (a host `MemoryError` of the writer is no GPU out-of-memory), on any row."""
    from blk.upscale.canvas import Canvas
    from blk.upscale.esrgan import processor
    from blk.upscale.models import load_upscaler
    from blk.upscale.source import ArraySource
    from blk.upscale.tiler import run_tiles

    process, calls = processor(load_upscaler(model), "cpu", torch.float32), []

    def counting(tiles):
        calls.append(tiles.shape[:3])
        return process(tiles)

    for failing_row, pipelined in [(1, False), (3, False), (1, True), (3, True)]:  # a middle row, the last of three
        calls.clear()

        def on_row_done(done, failing_row=failing_row):
            if done.rows_done == failing_row:
                raise MemoryError("the writer ran out of host memory")

        canvas = Canvas(model.parent / f"row{failing_row}.canvas", 160, 288, 3)
        with pytest.raises(MemoryError):
            run_tiles(ArraySource(noise(72, 40, seed=8)), canvas, counting, scale=4, tile=32, overlap=8, batch=2,
                      on_row_done=on_row_done, pipelined=pipelined)
        canvas.remove()
        # two tiles a row, each once, all of the first layout's size: no smaller layout tried (pipelined, a
        # middle row's `on_row_done` runs once the next row's batch is computing, before that row writes)
        assert calls == [(2, 30, 24)] * (min(failing_row + 1, 3) if pipelined else failing_row)


def test_a_job_stopped_after_its_last_tile_writes_its_result_on_the_next_run(model, tmp_path, monkeypatch):
    """Ctrl+C while the result is being put together (after every tile): the next run finds every tile
    done, writes the result from the last canvas, and it is an uninterrupted run's."""
    image = tmp_path / "in.png"
    Image.fromarray((noise(72, 40, seed=9) * 255).astype(np.uint8)).save(image)
    settings = {"tile": 32, "overlap": 8, "batch": 1}
    reference = run(EsrganJob(image, tmp_path / "reference.tif", model, **settings))
    real_comment = tifffile.tiffcomment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "tiffcomment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(EsrganJob(image, tmp_path / "out.tif", model, **settings))
    assert not (tmp_path / "out.tif").exists() and list(tmp_path.glob(".blk-tmp-*.pass0.canvas"))
    monkeypatch.setattr(tifffile, "tiffcomment", real_comment)
    notes, counted = [], []
    resumed = run(EsrganJob(image, tmp_path / "out.tif", model, **settings), log=notes.append,
                  progress=lambda done, total: counted.append(done))
    assert notes == ["Resuming an interrupted job after its last tile: writing the result."] and counted == []
    assert np.array_equal(tifffile.imread(resumed.path), tifffile.imread(reference.path))
    assert tiff_facts(resumed.path)["description"] == tiff_facts(reference.path)["description"]
    assert not list(tmp_path.glob(".blk-tmp-*")) and not streamer_threads()
