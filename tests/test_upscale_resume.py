"""Upscale resume, print export: a job killed mid-row (a real child process, SIGKILL) continues from its
last finished row and gives the same pixels as an uninterrupted run; a cancel keeps the finished rows
for the same job, other settings leave nothing behind; the print copy is 8-bit RGB, flattened, with DPI and ICC.

The child kills itself with `BLK_TEST_KILL_AFTER_TILES=N` (`blk.upscale.cli`): after N tiles, mid-row
with batch 1, as a crash or a power cut would — no Python code runs after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from blk.errors import UserError
from blk.upscale.canvas import Canvas, print_path
from blk.upscale.esrgan import EsrganJob, processor, run
from blk.upscale.journal import VERSION, Journal
from blk.upscale.models import load_upscaler
from blk.upscale.source import ArraySource
from blk.upscale.tiler import Cancelled, RowBand, RowDone, run_tiles, spans, weights
from tests.conftest import run_blk
from tests.test_upscale_esrgan import leftovers, noise, rrdb_file, save_16bit_tiff


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return rrdb_file(tmp_path_factory.mktemp("models") / "RealESRGAN_x4plus_tiny.pth")


def save_png(path: Path, h: int, w: int, seed: int) -> Path:
    Image.fromarray((noise(h, w, seed=seed) * 255).round().astype(np.uint8)).save(path)
    return path


def kill_env(tiles: int) -> dict:
    return {"BLK_TEST_KILL_AFTER_TILES": str(tiles), "OMP_NUM_THREADS": "1"}


# -- the tiler's resume API -----------------------------------------------------------------------

def test_run_tiles_continues_from_a_finished_row_exactly(model, tmp_path):
    x4 = load_upscaler(model)
    pixels = noise(72, 64, seed=21)
    process = processor(x4, "cpu", torch.float32)
    whole = Canvas(tmp_path / "whole.canvas", 256, 288, 3)
    run_tiles(ArraySource(pixels), whole, process, scale=4, tile=32, overlap=8, batch=2)

    class Stop(Exception):
        pass

    bands: list[RowBand] = []
    rows: list[RowDone] = []

    def stop_after_first_row(done: RowDone):
        rows.append(done)
        raise Stop()

    part = Canvas(tmp_path / "part.canvas", 256, 288, 3)
    with pytest.raises(Stop):
        run_tiles(ArraySource(pixels), part, process, scale=4, tile=32, overlap=8, batch=2,
                  on_row_start=bands.append, on_row_done=stop_after_first_row)
    # 72 rows, tile 32, overlap 8: three rows of 30 px at y 0, 21, 42 (64 columns: three of 27 px)
    first = rows[0]
    assert (first.origin_fade, first.tile, first.rows_done, first.tiles_done, first.row_end) == (None, 32, 1, 3, 30)
    assert (bands[0].y_top, bands[0].kept_until, bands[0].y_end) == (0, 0, 120)  # row 1 touches [0, 120)
    seen = []
    stats = run_tiles(ArraySource(pixels), part, process, scale=4, tile=32, overlap=8, batch=2,
                      origin_fade=first.origin_fade, rows_done=first.rows_done, tiles_done=first.tiles_done,
                      on_row_start=bands.append, progress=lambda d, t: seen.append((d, t)))
    # row 2 starts at input y 21 and fades in over [24, 28) (quarter margins of [22, 30)): output rows 96..
    assert (bands[1].row, bands[1].row_start, bands[1].row_fade) == (1, 21, 30)
    assert (bands[1].y_top, bands[1].kept_until, bands[1].y_end) == (96, 120, 204)
    assert first.settled == (30 - 8) * 4 <= bands[1].y_top  # what the first row settled, row 2 never writes
    assert bands[1].saved[1].shape == (24, 256, 3)
    # counts continue from 3, in batches of 1 + 2 tiles a row (`even_batches`)
    assert seen[0] == (4, 9) and seen[-1] == (9, 9) and stats.tiles == 9
    assert np.array_equal(part.read_raw(0, 0, 256, 288), whole.read_raw(0, 0, 256, 288))
    whole.remove()
    part.remove()


class RecordingCanvas:
    """A canvas that logs each write's first output row (`events`), beside the tiler's own calls."""

    def __init__(self, canvas: Canvas, events: list):
        self.canvas, self.events = canvas, events

    def write_raw(self, x, y, values):
        self.events.append(("write", y))
        self.canvas.write_raw(x, y, values)

    def accumulate(self, x, y, values):
        self.events.append(("write", y))
        self.canvas.accumulate(x, y, values)

    def __getattr__(self, name):  # snapshot, restore, clear: the canvas's own
        return getattr(self.canvas, name)


def test_a_row_is_recorded_while_the_next_row_computes_and_before_it_writes(model, tmp_path):
    """On a GPU the model computes asynchronously (`pipelined`): the row above is settled (its writes finished,
    then `on_row_done`, where the journal fsyncs) after the next row's first batch has been handed to the model
    and before that row writes anything; without, before that batch (a kill during it loses no finished row).
    A cancel between rows still records the finished row."""
    process = processor(load_upscaler(model), "cpu", torch.float32)
    pixels = noise(72, 64, seed=21)  # three rows of 30 px at y 0, 21, 42; three columns; batch 2: 1 + 2 tiles
    events: list = []

    def model_call(tiles):
        events.append(("model", len(tiles)))
        return process(tiles)

    canvas = Canvas(tmp_path / "c.canvas", 256, 288, 3)
    for pipelined in (True, False):
        events.clear()
        run_tiles(ArraySource(pixels), RecordingCanvas(canvas, events), model_call, scale=4, tile=32, overlap=8,
                  batch=2, on_row_start=lambda band: events.append(("start", band.row)),
                  on_row_done=lambda done: events.append(("done", done.rows_done)), pipelined=pipelined)
        marks = [e for e in events if e[0] != "write"]
        if pipelined:
            assert marks == [("model", 1), ("start", 0), ("model", 2),
                             ("model", 1), ("done", 1), ("start", 1), ("model", 2),
                             ("model", 1), ("done", 2), ("start", 2), ("model", 2), ("done", 3)]
        else:
            assert marks == [("start", 0), ("model", 1), ("model", 2),
                             ("done", 1), ("start", 1), ("model", 1), ("model", 2),
                             ("done", 2), ("start", 2), ("model", 1), ("model", 2), ("done", 3)]
        for row in (1, 2):  # every write of a row comes after the row above is recorded and this row announced
            announced, recorded_above = events.index(("start", row)), events.index(("done", row))
            assert recorded_above < announced and not [e for e in events[recorded_above:announced] if e[0] == "write"]
            writes_before = [e for e in events[:announced] if e[0] == "write"]
            assert writes_before and max(y for _, y in writes_before) < (21 + 30) * 4  # only rows above wrote
    canvas.remove()

    cancel, recorded = threading.Event(), []

    def cancel_after_the_first_row(done, total):
        if done == 3:
            cancel.set()

    canvas = Canvas(tmp_path / "d.canvas", 256, 288, 3)
    with pytest.raises(Cancelled):
        run_tiles(ArraySource(pixels), canvas, process, scale=4, tile=32, overlap=8, batch=2, cancel=cancel,
                  progress=cancel_after_the_first_row, on_row_done=recorded.append)
    assert [(d.rows_done, d.tiles_done) for d in recorded] == [(1, 3)]  # the first row stays done
    canvas.remove()


def test_a_crash_after_an_out_of_memory_halving_resumes_the_smaller_layout(model, tmp_path):
    """Row 2 runs out of memory, so a layout of 32 px tiles continues from it; the job dies in that
    layout's second row. The resume undoes that row, rebuilds the same layout from the journal and
    gives the pixels of the run that never died."""
    x4 = load_upscaler(model)
    pixels = noise(100, 64, seed=29)
    base = processor(x4, "cpu", torch.float32)

    def out_of_memory_above_32_after_row_1():
        calls = [0]

        def process(tiles):
            calls[0] += 1
            if calls[0] > 1 and max(tiles.shape[1:3]) > 32:
                raise torch.OutOfMemoryError("CUDA out of memory (test budget)")
            return base(tiles)
        return process

    settings = dict(scale=4, tile=64, overlap=8, batch=1)
    whole = Canvas(tmp_path / "whole.canvas", 256, 400, 3)
    stats = run_tiles(ArraySource(pixels), whole, out_of_memory_above_32_after_row_1(), **settings)
    assert (stats.tile, stats.oom_retries, stats.tiles) == (32, 1, 1 + 2 * 3)  # 1 tile of 64, then 2 rows × 3

    def crash_in_the_second_smaller_row(done, total):
        if done == 6:  # the first row of 64 px, the first row of 32 px (3 tiles), 2 of the next row's 3
            raise KeyboardInterrupt()

    out = tmp_path / "out.tif"
    journal = Journal.begin(out, "key")
    canvas = journal.open_canvas(0, 256, 400, 3)
    with pytest.raises(KeyboardInterrupt):
        run_tiles(ArraySource(pixels), canvas, out_of_memory_above_32_after_row_1(), **settings,
                  progress=crash_in_the_second_smaller_row, **journal.tiler_hooks(0, canvas))
    # 100 rows at tile 64: rows at y 0 and 46 (54 px); row 2 failed, so 32 px tiles continue from y 46
    assert {k: journal.state[k] for k in ("origin_fade", "tile", "rows_done", "row_fade", "tiles_done")} == \
        {"origin_fade": 54, "tile": 32, "rows_done": 1, "row_fade": 77, "tiles_done": 4}
    journal.suspend()
    header = json.loads(journal.band_path.read_bytes().split(b"\n", 1)[0])
    assert (header["origin_fade"], header["tile"], header["row"], header["row_fade"]) == (54, 32, 1, 77)
    killed = Canvas(canvas.path, 256, 400, 3, create=False)  # what a kill leaves: that row half-written
    killed.write_raw(0, header["y_top"], np.full((header["y_end"] - header["y_top"], 256, 3), 40000, np.uint16))
    killed.close()

    journal = Journal.begin(out, "key")
    assert journal.resumed and journal.tile == 32
    canvas = journal.open_canvas(0, 256, 400, 3)
    seen = []
    run_tiles(ArraySource(pixels), canvas, base, **(settings | {"tile": journal.tile}),
              progress=lambda d, t: seen.append((d, t)), **journal.tiler_hooks(0, canvas))
    assert seen[0] == (5, 7) and seen[-1] == (7, 7)  # only the last row's 3 tiles were run
    assert np.array_equal(canvas.read_raw(0, 0, 256, 400), whole.read_raw(0, 0, 256, 400))
    journal.discard()
    whole.remove()
    assert leftovers(tmp_path) == []


# -- a real process killed mid-job ---------------------------------------------------------------

def test_killed_job_resumes_from_its_last_row_with_the_same_pixels(model, tmp_path):
    ws = tmp_path / "ws"
    image = save_png(tmp_path / "art.png", 72, 64, seed=22)  # 3 rows × 3 columns of 32 px tiles
    args = ("--workspace", str(ws), "upscale", str(image), "--model", str(model), "--tile", "32",
            "--overlap", "8", "--batch", "1")
    killed = run_blk(*args, env=kill_env(5))  # row 2 of 3, after its 2nd tile
    assert killed.returncode == -9, killed.stderr
    folder = ws / "outputs" / "upscale"
    out = folder / "art-x4.tif"
    assert not out.exists()
    journal = json.loads(Journal.path_for(out).read_text())
    assert (journal["pass"], journal["origin_fade"], journal["tile"], journal["rows_done"], journal["row_fade"],
            journal["tiles_done"]) == (0, None, 32, 1, 30, 3)  # rows of 30 px at y 0, 21, 42; the first is done
    band_file = folder / f".blk-tmp-{journal['token']}.band"
    header = json.loads(band_file.read_bytes().split(b"\n", 1)[0])
    # the row it died in
    assert (header["row"], header["row_start"], header["kept_until"], header["y_end"]) == (1, 21, 120, 204)
    canvas = Canvas(folder / f".blk-tmp-{journal['token']}.pass0.canvas", 256, 288, 3, create=False)
    assert canvas.read_raw(0, 120, 256, 84).any()  # the dead row's half-written tiles are on disk…
    canvas.close()

    resumed = run_blk(*args, env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming an interrupted job at pass 1, tile 4 of 9 (after the row ending at input y=30, tiles of at most " \
           "32 px)." in resumed.stderr
    assert "resumed after tile 3 of an interrupted run" in resumed.stdout
    assert "tile 4/9" in resumed.stderr and "tile 1/9" not in resumed.stderr  # finished rows were not redone
    reference = run(EsrganJob(image, tmp_path / "reference.tif", model, tile=32, overlap=8, batch=1))
    assert reference.resumed_from_tile == 0
    # …and were undone: the result is the uninterrupted one, bit for bit
    assert np.array_equal(tifffile.imread(out), tifffile.imread(reference.path))
    # a scan of the whole workspace finds no temporary file (canvas, journal, band, lock)
    assert [p for p in ws.rglob(".blk-tmp-*")] == [] and leftovers(tmp_path) == []


def test_killed_second_pass_resumes_from_the_first_passes_canvas(model, tmp_path):
    image = save_png(tmp_path / "small.png", 10, 12, seed=23)
    out = tmp_path / "x16.tif"
    # pass 1: one 12×10 tile; pass 2 (48×40): 2 rows × 2 columns; die in pass 2's second row
    killed = run_blk("upscale", str(image), "--model", str(model), "--scale", "16", "--tile", "32",
                     "--overlap", "8", "--batch", "1", "--out", str(out), env=kill_env(4))
    assert killed.returncode == -9, killed.stderr
    state = json.loads(Journal.path_for(out).read_text())
    assert (state["pass"], state["tiles_done"]) == (1, 2)
    assert (tmp_path / f".blk-tmp-{state['token']}.pass0.canvas").exists()  # pass 2's source, kept until it ends
    notes = []
    result = run(EsrganJob(image, out, model, scale=16, tile=32, overlap=8, batch=1), log=notes.append)
    assert notes == ["Resuming an interrupted job at pass 2, tile 4 of 5 (after the row ending at input y=24, "
                     "tiles of at most 32 px)."]
    assert (result.passes, result.width, result.height, result.resumed_from_tile) == (2, 192, 160, 3)
    reference = run(EsrganJob(image, tmp_path / "ref.tif", model, scale=16, tile=32, overlap=8, batch=1))
    assert np.array_equal(tifffile.imread(out), tifffile.imread(reference.path))
    assert leftovers(tmp_path) == []


# -- in-process interruptions: Ctrl+C and Cancel keep, other settings clean up ----------------------

def interrupt_after(n: int):
    def progress(done, total):
        if done >= n:
            raise KeyboardInterrupt()
    return progress


def test_interrupt_and_cancel_keep_finished_rows_and_other_settings_clean_up(model, tmp_path):
    image = save_png(tmp_path / "in.png", 72, 64, seed=24)
    out = tmp_path / "out.tif"
    job = EsrganJob(image, out, model, tile=32, overlap=8, batch=1)
    with pytest.raises(KeyboardInterrupt):
        run(job, progress=interrupt_after(5))
    kept = leftovers(tmp_path)
    assert any(n.endswith(".canvas") for n in kept) and Journal.path_for(out).name in kept

    # other settings (overlap): the stale job's files go, the new job starts at tile 1, and says so (it did not)
    said = []
    other = run(EsrganJob(image, out, model, tile=32, overlap=12, batch=1), log=said.append)
    assert other.resumed_from_tile == 0 and leftovers(tmp_path) == []
    assert said[:1] == ["An interrupted job writing out.tif with other settings had work kept; it was removed, and "
                        "this job starts afresh (only the same settings continue an interrupted job)."], said
    said.clear()
    run(EsrganJob(image, out, model, tile=32, overlap=12, batch=1), log=said.append)  # nothing was there: no word
    assert not any("interrupted" in sentence for sentence in said), said

    # other input content under the same name: fresh as well
    with pytest.raises(KeyboardInterrupt):
        run(job, progress=interrupt_after(5))
    save_png(image, 72, 64, seed=25)
    assert run(job).resumed_from_tile == 0 and leftovers(tmp_path) == []

    # a cancel after finished rows keeps them, and says so: the same job started again continues from them
    with pytest.raises(KeyboardInterrupt):
        run(job, progress=interrupt_after(5))
    cancel = threading.Event()
    with pytest.raises(Cancelled, match="finished tiles are kept"):
        run(job, progress=lambda d, t: cancel.set(), cancel=cancel)
    assert Journal.path_for(out).name in leftovers(tmp_path)
    continued = run(job)
    assert continued.resumed_from_tile > 0 and leftovers(tmp_path) == []
    # a cancel before any row is finished keeps nothing (there is nothing to continue from)
    cancel.set()
    with pytest.raises(Cancelled) as cancelled:
        run(job, cancel=cancel)
    assert not cancelled.value.kept and "kept" not in str(cancelled.value) and leftovers(tmp_path) == []

    # interrupted twice, resumed twice: the same pixels as one uninterrupted run
    reference = tifffile.imread(out)
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        run(job, progress=interrupt_after(2))
    with pytest.raises(KeyboardInterrupt):
        run(job, progress=interrupt_after(7))
    final = run(job)
    assert final.resumed_from_tile == 6 and np.array_equal(tifffile.imread(out), reference)
    assert leftovers(tmp_path) == []


def test_a_job_killed_before_its_first_row_is_not_said_to_resume(model, tmp_path):
    """It said "Resuming an interrupted job at pass 1, tile 1" with nothing kept to resume from."""
    image = save_png(tmp_path / "in.png", 72, 64, seed=31)
    job = EsrganJob(image, tmp_path / "out.tif", model, tile=32, overlap=8, batch=1)
    with pytest.raises(KeyboardInterrupt):
        run(job, progress=interrupt_after(1))
    said = []
    assert run(job, log=said.append).resumed_from_tile == 0
    assert not any("Resuming" in sentence for sentence in said), said
    with pytest.raises(KeyboardInterrupt):  # after a finished row it is said, as before
        run(job, progress=interrupt_after(5))
    said.clear()
    assert run(job, log=said.append).resumed_from_tile > 0
    assert any(sentence.startswith("Resuming an interrupted job at pass 1") for sentence in said), said


def test_an_input_of_several_frames_says_only_the_first_is_upscaled(model, tmp_path):
    """An animated PNG or a multi-page TIFF was cut to its first frame without a word."""
    from PIL import Image

    frames = [Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:2])
    for name, count in (("anim.png", 3), ("pages.tif", 2)):
        said = []
        run(EsrganJob(tmp_path / name, tmp_path / f"{name}.out.tif", model, tile=32, overlap=8), log=said.append)
        assert f"{name} holds {count} frames or pages; only the first is upscaled." in said, said
    said = []
    run(EsrganJob(save_png(tmp_path / "still.png", 24, 32, seed=3), tmp_path / "still.tif", model, tile=32,
                  overlap=8), log=said.append)
    assert not any("frames" in sentence for sentence in said)


def test_a_cancel_while_the_print_copy_is_written_keeps_the_result_and_nothing_else(model, tmp_path, monkeypatch):
    """The master was saved, then Cancel came during the print copy: it said "no result was written" and kept
    the job's canvases for a resume, which never came (the result's name was taken: a new start took the
    next name). The result stays, the sentence says so, and the job's hidden files go."""
    import blk.upscale.canvas as canvas_module
    from blk.upscale.canvas import PrintCopyCancelled

    image = save_png(tmp_path / "in.png", 40, 48, seed=27)
    out = tmp_path / "out.png"
    cancel = threading.Event()
    real_write_png = canvas_module.write_png

    def write_png_then_cancel(*args, **kwargs):
        real_write_png(*args, **kwargs)
        cancel.set()  # Cancel pressed just after the master is saved

    monkeypatch.setattr(canvas_module, "write_png", write_png_then_cancel)
    with pytest.raises(PrintCopyCancelled, match="the result is saved as out.png, without a print copy"):
        run(EsrganJob(image, out, model, tile=32, overlap=8, batch=1, print_dpi=300), cancel=cancel)
    assert Image.open(out).size == (192, 160) and not print_path(out).exists()
    assert leftovers(tmp_path) == []


def test_a_second_run_of_a_job_in_progress_is_refused(model, tmp_path):
    image = save_png(tmp_path / "in.png", 40, 40, seed=26)
    out = tmp_path / "out.tif"
    holder = Journal.begin(out, "some-key")
    try:
        with pytest.raises(Exception, match="Another upscale, from another window or command, is writing out.tif"):
            run(EsrganJob(image, out, model, tile=32, overlap=8))
    finally:
        holder.discard()
    assert run(EsrganJob(image, out, model, tile=32, overlap=8)).width == 160
    assert leftovers(tmp_path) == []


# -- print export ---------------------------------------------------------------------------------

def test_print_copy_is_flattened_8bit_rgb_with_dpi_and_icc(model, tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba = np.zeros((40, 48, 4), np.float32)
    rgba[..., :3] = noise(40, 48, seed=27)
    rgba[..., 3] = 1.0
    rgba[:, 24:, 3] = 0.5  # the right half is half transparent
    rgba[30:, :, 3] = 0.0  # and a band at the bottom fully transparent
    save_16bit_tiff(tmp_path / "sticker.tif", rgba, iccprofile=icc, extrasamples=["unassalpha"])
    job = EsrganJob(tmp_path / "sticker.tif", tmp_path / "master.tif", model, tile=32, overlap=8, keep_16bit=True,
                    alpha="lanczos", print_dpi=300)
    result = run(job)
    assert result.print_path == print_path(result.path) == tmp_path / "master.print.tif"
    master = tifffile.imread(result.path).astype(np.float64)
    assert master.shape == (160, 192, 4) and master.dtype == np.float64
    a = master[..., 3:] / 65535
    with tifffile.TiffFile(result.print_path) as tif:
        page = tif.pages[0]
        printed = page.asarray()
        assert page.dtype == np.uint8 and page.shape == (160, 192, 3) and page.photometric == 2  # RGB
        assert not page.extrasamples and page.tags["InterColorProfile"].value == icc
        x, y = page.tags["XResolution"].value
        assert abs(x / y - 300) < 1e-6 and page.tags["ResolutionUnit"].value == 2
        assert not tif.is_bigtiff  # classic TIFF: what print labs' software reads
    with Image.open(result.print_path) as im:  # an independent reader agrees
        assert im.mode == "RGB" and im.info["icc_profile"] == icc and abs(im.info["dpi"][0] - 300) < 0.01
    expected = (master[..., :3] * a + 65535 * (1 - a)) / 257
    assert np.abs(printed - expected).max() <= 0.5 + 1e-6  # rounded once, from the 16-bit master
    half = (slice(8, 100), slice(120, 180))  # inside the half-transparent area, away from its edges
    assert np.allclose(a[half], 0.5, atol=1e-4)
    assert np.abs(printed[half] - (master[half][..., :3] / 257 * 0.5 + 127.5)).max() <= 0.51
    assert (printed[150:] == 255).all()  # fully transparent → paper white

    # over a chosen colour, e.g. the grey of a card the print goes on
    grey = run(EsrganJob(tmp_path / "sticker.tif", tmp_path / "grey.tif", model, tile=32, overlap=8, keep_16bit=True,
                         alpha="lanczos", print_dpi=150, print_background=(40, 80, 120)))
    printed = tifffile.imread(grey.print_path).astype(np.float64)
    assert (printed[150:] == (40, 80, 120)).all()
    background = np.array([40, 80, 120], np.float64)
    assert np.abs(printed[half] - (master[half][..., :3] / 257 * 0.5 + background * 0.5)).max() <= 0.51
    assert leftovers(tmp_path) == []


def test_a_grey_images_print_copy_over_a_colour_is_rgb_and_over_grey_stays_grey(model, tmp_path):
    """A grey + alpha image flattened over blue came out grey, the blue turned to grey, with no profile."""
    la = np.zeros((20, 24, 2), np.uint8)
    la[..., 0], la[..., 1] = 90, 255
    la[12:, :, 1] = 0  # a transparent band at the bottom
    Image.fromarray(la, "LA").save(tmp_path / "ink.png")
    for background, rgb in (((0, 0, 255), True), ((128, 128, 128), False)):
        result = run(EsrganJob(tmp_path / "ink.png", tmp_path / f"ink-{background[2]}.tif", model, tile=32, overlap=8,
                               alpha="lanczos", print_dpi=240, print_background=background))
        with tifffile.TiffFile(result.print_path) as tif:
            page = tif.pages[0]
            printed = page.asarray()
            assert (page.photometric == 2) == rgb and ("InterColorProfile" in page.tags) == rgb
        assert (printed[-8:] == (background if rgb else background[0])).all()
    assert leftovers(tmp_path) == []


def test_cli_print_dpi(model, tmp_path):
    image = save_png(tmp_path / "in.png", 20, 24, seed=28)
    out = tmp_path / "out.png"
    done = run_blk("upscale", str(image), "--model", str(model), "--tile", "32", "--overlap", "8",
                   "--print-dpi", "240", "--print-background", "#102030", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"print copy: {tmp_path / 'out.print.tif'}" in done.stdout
    with tifffile.TiffFile(tmp_path / "out.print.tif") as tif:
        x, y = tif.pages[0].tags["XResolution"].value
        assert abs(x / y - 240) < 1e-6 and tif.pages[0].shape == (80, 96, 3)
        assert np.array_equal(tif.pages[0].asarray(), np.asarray(Image.open(out).convert("RGB")))  # opaque: same
    assert json.loads(tifffile.TiffFile(tmp_path / "out.print.tif").pages[0].description)["print_dpi"] == 240
    bad = run_blk("upscale", str(image), "--model", str(model), "--print-background", "teal", "--out", str(out))
    assert bad.returncode == 2 and "is not a colour" in bad.stderr
    assert leftovers(tmp_path) == []


def test_a_layout_continued_after_out_of_memory_blends_with_the_rows_kept():
    """After an out-of-memory error at row k the rows before it stay and a smaller layout takes over,
    starting `overlap` before the line row k faded in against: every pixel's weights still sum to 1,
    and that layout depends only on its arguments, so a resume rebuilds exactly its remaining rows."""
    full = spans(200, 64, 16)
    for k, failed in enumerate(full[1:], start=1):
        smaller = spans(200, 32, 16, failed.fade_in_end)
        assert smaller[0].start == failed.fade_in_end - 16 and smaller[0].fade_in_end == failed.fade_in_end
        assert smaller == spans(200, 32, 16, failed.fade_in_end)
        total = np.zeros(200 * 4)
        for span in full[:k] + smaller:
            w, first = weights(span, 16, 4)
            assert not w[:first].any()
            total[span.start * 4:span.end * 4] += w
        assert np.abs(total - 1).max() < 1e-6, k


def test_a_journal_of_the_older_layout_starts_over(tmp_path):
    """Version 1 recorded the next row's start in the older greedy layout; resuming it into the even
    layout would write wrong rows, so its files go and the job starts fresh."""
    out = tmp_path / "out.tif"
    Journal.path_for(out).write_text(json.dumps({"version": 1, "key": "k", "token": "0123456789ab", "pass": 0,
                                                 "row_start": 24, "row_fade": 32, "tile": 32, "tiles_done": 3}))
    (tmp_path / ".blk-tmp-0123456789ab.pass0.canvas").write_bytes(b"\0" * 64)
    journal = Journal.begin(out, "k")
    try:
        assert not journal.resumed and journal.state["token"] != "0123456789ab"
        assert (journal.state["version"], journal.state["rows_done"], journal.state["tiles_done"]) == (VERSION, 0, 0)
        assert not (tmp_path / ".blk-tmp-0123456789ab.pass0.canvas").exists()
        assert journal.start_of(0) == {"origin_fade": None, "rows_done": 0, "tiles_done": 0}
    finally:
        journal.discard()
    assert leftovers(tmp_path) == []


def test_a_small_jobs_journal_skips_fsync_and_a_reboot_drops_it(model, tmp_path, monkeypatch):
    """A small job does not fsync its canvas or its bands (on a GPU each row's canvas flush kept the model
    waiting), and its journal is bound to the machine's boot: the same boot resumes it (a kill leaves its
    writes in the page cache), a reboot starts the job afresh (an unsynced write may be lost). A large job
    fsyncs every row and resumes after a reboot."""
    import blk.upscale.journal as journal_module

    image = save_png(tmp_path / "in.png", 72, 40, seed=4)  # three rows of tiles at tile 32, overlap 8
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    run(EsrganJob(image, tmp_path / "small.tif", model, tile=32, overlap=8, batch=2))
    small = len(synced)
    monkeypatch.setattr(journal_module, "DURABLE_FROM_PIXELS", 160 * 288)  # this output's size: durable
    synced.clear()
    run(EsrganJob(image, tmp_path / "large.tif", model, tile=32, overlap=8, batch=2))
    # the journal's saves (the first, the tile's, each row's, the pass's: a few bytes each) and the result's commit
    # (the file, then its folder); durable, each row's band and canvas too
    assert small == 1 + 1 + 3 + 1 + 2
    assert len(synced) == small + 3 * 2
    assert np.array_equal(tifffile.imread(tmp_path / "small.tif"), tifffile.imread(tmp_path / "large.tif"))

    out = tmp_path / "out.tif"
    journal = Journal.begin(out, "key", durable=False)
    assert not journal.durable and journal.state["boot"] == journal_module.boot_id()
    canvas = journal.open_canvas(0, 8, 8, 3)
    journal.suspend()
    again = Journal.begin(out, "key", durable=False)
    assert again.resumed and again.state["token"] == journal.state["token"]
    again.suspend()
    state = json.loads(Journal.path_for(out).read_text())
    Journal.path_for(out).write_text(json.dumps(state | {"boot": "a boot before a power cut"}))
    rebooted = Journal.begin(out, "key", durable=False)
    assert not rebooted.resumed and not canvas.path.exists()  # its files removed with it
    rebooted.discard()

    durable = Journal.begin(out, "key")
    assert durable.durable and "boot" not in durable.state
    durable.suspend()
    resumed = Journal.begin(out, "key")
    assert resumed.resumed  # no boot to check: whatever happened since, its writes were synced
    resumed.discard()
    assert leftovers(tmp_path) == []


def test_content_hashes_are_kept_per_file_version(tmp_path):
    """The resume key hashes the model and the input; the hash is kept per (path, inode, size,
    mtime), so a file changed in place is hashed again and a stale journal can never match."""
    from blk.data.scan import cached_file_sha256

    path = tmp_path / "model.pth"
    path.write_bytes(b"a" * 4096)
    first = cached_file_sha256(path)
    assert cached_file_sha256(path) == first == hashlib.sha256(b"a" * 4096).hexdigest()
    path.write_bytes(b"b" * 4096)  # same size, new content
    os.utime(path, ns=(1, 1))  # even an mtime set back is a different version
    assert cached_file_sha256(path) == hashlib.sha256(b"b" * 4096).hexdigest()


# -- the shrunk last pass, and the time left after a resume ----------------------------------------

def test_an_interrupted_last_pass_resumes_from_the_shrunk_image(model, tmp_path):
    """×7 with a ×4 model shrinks the ×4 result to ×1.75 before the last pass (`esrgan.pass_inputs`).
    Interrupted in that pass, the job resumes there — the shrunk image made again from the first
    pass's kept canvas — and gives the pixels of one uninterrupted run."""
    image = save_png(tmp_path / "small.png", 20, 24, seed=29)
    out = tmp_path / "x7.tif"
    job = EsrganJob(image, out, model, scale=7, tile=32, overlap=8, batch=1)
    # pass 1: one 24×20 tile; pass 2 on 42×35 (not 96×80): 2 rows × 2 columns; stop in its second row
    with pytest.raises(KeyboardInterrupt):
        run(job, progress=interrupt_after(4))
    assert any(name.endswith(".pass1.input.canvas") for name in leftovers(tmp_path))
    notes = []
    result = run(job, log=notes.append)
    # rows of 22 px at y 0 and 13: the layout of a 35 px high input, the shrunk image's
    assert notes == ["Resuming an interrupted job at pass 2, tile 4 of 5 (after the row ending at input y=22, "
                     "tiles of at most 32 px)."]
    assert (result.passes, result.width, result.height, result.resumed_from_tile) == (2, 168, 140, 3)
    reference = run(EsrganJob(image, tmp_path / "ref.tif", model, scale=7, tile=32, overlap=8, batch=1))
    assert reference.tiles == 5 and np.array_equal(tifffile.imread(out), tifffile.imread(reference.path))
    assert leftovers(tmp_path) == []


def test_time_left_after_a_resume_follows_this_sessions_pace():
    """A job resumed at tile 59 of 100 takes 10 s a tile now: 35 tiles left are 350 s — not the 32 s
    that counting the earlier run's 59 tiles against this session's 60 s gave."""
    from blk.upscale.rates import Eta

    now = [0.0]
    pace = Eta(clock=lambda: now[0])
    now[0] = 10.0
    assert pace.left(60, 100) is None  # the first report: the resumed tiles and this session's first one
    now[0] = 60.0
    assert pace.left(65, 100) == pytest.approx(350.0)  # 5 tiles in 50 s
    now[0] = 70.0
    assert pace.left(66, 100) == pytest.approx(340.0)
    assert pace.left(100, 100) == 0.0
    assert pace.measured() == (pytest.approx(60.0), 40)  # what the rate file records: this session's tiles only
    # a fresh job: measured from its first batch on (the first also carries the model's warm-up)
    fresh = Eta(clock=lambda: now[0])
    now[0] = 100.0
    assert fresh.left(4, 20) is None
    now[0] = 108.0
    assert fresh.left(8, 20) == pytest.approx(24.0)  # 4 tiles in 8 s, 12 left
    assert Eta().measured() == (0.0, 0)  # no report: nothing to record


def test_the_progress_line_times_an_enlargement_on_its_own():
    """The diffusion path's reports carry their stage (`diffusion.Stage`): an enlargement's line counts its own
    tiles with the time left in it, at its own pace (an ESRGAN tile takes far less than a diffusion tile), and
    neither its tiles nor its seconds enter the job's pace, which the passes' lines and the rate file use."""
    from blk.upscale.diffusion import Stage
    from blk.upscale.rates import Pace

    now = [0.0]
    pace = Pace(clock=lambda: now[0])
    lines = []
    for t, done, stage in ((0, 0, Stage(1, 2, "enlarging", 0, 9)), (6, 0, Stage(1, 2, "enlarging", 3, 9)),
                           (7, 0, Stage(1, 2, "enlarging", 9, 9)), (20, 1, Stage(1, 2, "pass A", 1, 2)),
                           (30, 2, Stage(1, 2, "pass A", 2, 2)), (31, 2, Stage(2, 2, "enlarging", 0, 4)),
                           (35, 2, Stage(2, 2, "enlarging", 1, 4)), (80, 3, Stage(2, 2, "pass A", 1, 20)),
                           (90, 22, Stage(2, 2, "full-frame pass", 1, 1))):
        now[0] = t
        lines.append(pace.line(done, 22, stage))
    assert lines == ["step 1 of 2: enlarging, tile 0 of 9",
                     "step 1 of 2: enlarging, tile 3 of 9, about 12 s left in this enlargement",  # 2 s a tile
                     "step 1 of 2: enlarging, tile 9 of 9, under a second left in this enlargement",
                     "step 1 of 2: pass A, tile 1/22",  # the job's pace starts at its first refinement tile
                     "step 1 of 2: pass A, tile 2/22, about 3 min left",  # 10 s a tile, 20 left
                     "step 2 of 2: enlarging, tile 0 of 4",  # a new enlargement: a pace of its own
                     "step 2 of 2: enlarging, tile 1 of 4, about 12 s left in this enlargement",
                     "step 2 of 2: pass A, tile 3/22, about 104 s left",  # 11 s since tile 1 without the 49 s enlarging
                     "full-frame pass, tile 22/22, under a second left"]
    assert pace.tiles.measured() == (21.0, 21)  # the rate file's: refinement tiles and their seconds alone
    assert Pace(clock=lambda: 0.0).line(4, 9) == "tile 4/9"  # the ESRGAN path: no stage, the wording as before


def test_a_job_towards_another_result_says_where_an_interrupted_ones_files_are(model, tmp_path):
    """Only the same job resumes and removes its files, and the tab names results by their size: "cancel, change
    the scale, start again" left the first job's canvases hidden beside the results for good, unsaid. They stay
    (hours of a mural), and the next job of the same image says where they are and how much room they take."""
    image = save_png(tmp_path / "in.png", 72, 64, seed=26)
    first = EsrganJob(image, tmp_path / "in-x4.tif", model, tile=32, overlap=8, batch=1)
    with pytest.raises(KeyboardInterrupt):
        run(first, progress=interrupt_after(5))
    kept = set(leftovers(tmp_path))
    token = json.loads(Journal.path_for(first.output).read_text())["token"]
    size = sum((tmp_path / name).stat().st_size for name in kept if not name.endswith(".lock"))

    notes = []
    run(EsrganJob(image, tmp_path / "in-x3.tif", model, scale=3, tile=32, overlap=8, batch=1), log=notes.append)
    said = [n for n in notes if n.startswith("An interrupted job of this image towards in-x4.tif keeps")]
    assert len(said) == 1 and f"(.blk-tmp-{token}.* and .blk-tmp-in-x4.tif.journal.json)" in said[0]
    amount = re.search(r"keeps (\d+) KB", said[0])
    assert amount and abs(int(amount.group(1)) - size / 1024) <= 1, (said, size)
    assert set(leftovers(tmp_path)) == kept  # nothing of the first job was removed; the second left nothing

    # a job running now (its lock held, in another window) is not "interrupted": nothing is said of it
    import fcntl

    held = os.open(tmp_path / ".blk-tmp-in-x4.tif.lock", os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        notes.clear()
        run(EsrganJob(image, tmp_path / "in-x2.tif", model, scale=2, tile=32, overlap=8, batch=1), log=notes.append)
        assert not [n for n in notes if "interrupted job" in n]
    finally:
        os.close(held)

    # another image's job says nothing of it; the first job, run again, finishes and removes its files
    other = save_png(tmp_path / "other.png", 40, 40, seed=27)
    notes.clear()
    run(EsrganJob(other, tmp_path / "other-x4.tif", model, tile=32, overlap=8, batch=1), log=notes.append)
    assert not [n for n in notes if "interrupted job" in n]
    assert run(first).resumed_from_tile > 0 and leftovers(tmp_path) == []


def test_a_result_written_again_without_a_print_copy_leaves_no_outdated_one_beside_it(model, tmp_path):
    """The same --out run again without --print-dpi replaced OUT.tif and left OUT.print.tif, the earlier
    job's image, looking current. A copy a result of the other format (OUT.png) may own is kept."""
    first = save_png(tmp_path / "first.png", 40, 48, seed=28)
    second = save_png(tmp_path / "second.png", 40, 48, seed=29)
    out = tmp_path / "out.tif"
    run(EsrganJob(first, out, model, tile=32, overlap=8, batch=1, print_dpi=300))
    assert print_path(out).exists()
    run(EsrganJob(second, out, model, tile=32, overlap=8, batch=1))
    assert out.exists() and not print_path(out).exists()

    run(EsrganJob(first, out, model, tile=32, overlap=8, batch=1, print_dpi=300))
    run(EsrganJob(first, tmp_path / "out.png", model, tile=32, overlap=8, batch=1))
    run(EsrganJob(second, tmp_path / "out.png", model, tile=32, overlap=8, batch=1))
    assert print_path(out).exists()  # OUT.tif's, which is still there
    assert leftovers(tmp_path) == []

    # never the job's input (an earlier print copy upscaled again to its master's name), nor a file the studio
    # did not write, nor one that OUT.PNG (another case) may own
    upper = tmp_path / "upper"
    upper.mkdir()
    run(EsrganJob(first, upper / "art.tif", model, tile=32, overlap=8, batch=1, print_dpi=300))
    run(EsrganJob(print_path(upper / "art.tif"), upper / "art.tif", model, scale=1.25, tile=32, overlap=8))
    assert print_path(upper / "art.tif").exists()
    tifffile.imwrite(upper / "mine.print.tif", np.zeros((8, 8, 3), np.uint8))  # the artist's own file
    (upper / "mine.tif").write_bytes(b"an earlier result")
    run(EsrganJob(first, upper / "mine.tif", model, tile=32, overlap=8, batch=1))
    assert (upper / "mine.print.tif").exists()
    run(EsrganJob(first, upper / "OUT.PNG", model, tile=32, overlap=8, batch=1, print_dpi=300))
    for _ in range(2):
        run(EsrganJob(second, upper / "OUT.TIF", model, tile=32, overlap=8, batch=1))
    assert print_path(upper / "OUT.PNG").exists()


def test_a_full_disk_while_the_print_copy_is_written_says_the_result_is_saved(model, tmp_path):
    """The master was saved, then the disk filled during the print copy: "The disk … is full; free some space
    and try again" read as if nothing were saved, and the artist ran hours of work again."""
    import shutil

    from tests.test_faults import tmpfs

    image = save_png(tmp_path / "in.png", 40, 48, seed=30)
    master_size = run(EsrganJob(image, tmp_path / "measure.png", model, tile=32, overlap=8, batch=1)).path \
        .stat().st_size
    with tmpfs(tmp_path / "small-disk", "2m") as disk:
        out = disk / "out.png"

        def fill_at_the_last_tile(done, total):
            if done == total:  # the tiles are done: leave room for the master only
                free = shutil.disk_usage(disk).free
                (disk / "filler").write_bytes(b"\0" * max(0, free - master_size - 16384))

        with pytest.raises(UserError) as caught:
            run(EsrganJob(image, out, model, tile=32, overlap=8, batch=1, print_dpi=300),
                progress=fill_at_the_last_tile)
        assert str(caught.value) == ("The result is saved as out.png, without a print copy: the disk holding "
                                     f"{disk} filled up while the print copy was written.")
        assert Image.open(out).size == (192, 160) and not print_path(out).exists()
        assert leftovers(disk) == []
