"""Review: labelled grids of checkpoints × prompts × seeds × strengths, cached; blind A/B; pins; CLI."""

import random

import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.generate.blind import blind_pairs, read_tally, record_pick
from blk.generate.metadata import read_parameters
from blk.generate.review import (Column, GridResult, GridSpec, Reviewer, assemble, column_headers, keep_grid,
                                 parse_seeds, parse_strengths,
                                 review_folder, run_review_defaults, save_grid)
from blk.generate.sketch import Lora, Sketcher, SketchRequest
from blk.train.config import TrainConfig
from blk.train.pins import export_checkpoint, pin, pinned_steps
from blk.train.runner import _prune
from tests.conftest import run_blk


def pixels(image_or_path):
    image = Image.open(image_or_path) if not isinstance(image_or_path, Image.Image) else image_or_path
    return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def reviewer(shared_workspace):
    return Reviewer(Sketcher(shared_workspace))


def spec_for(run_dir, **fields):
    defaults = run_review_defaults(run_dir)
    return GridSpec(model=defaults["model"], checkpoints=defaults["checkpoints"][-2:], prompts=defaults["prompts"][:1],
                    seeds=[1, 2], scales=[0.5, 1.0], width=64, height=64, steps=2, **fields)


def test_grid_dimensions_labels_and_cells_match_sketch(reviewer, trained_run, tmp_path):
    spec = spec_for(trained_run, include_base=True)
    result = reviewer.grid(spec, tmp_path)
    assert result.row_labels == ["base (no LoRA)", "step 8 @ 0.5", "step 8 @ 1", "step 12 @ 0.5", "step 12 @ 1"]
    assert result.column_labels == ["a cube\nseed 1", "a cube\nseed 2"]
    assert (result.generated, result.cached) == (10, 0)
    width, height = result.image.size
    assert 2 * 64 < width < 2 * 64 + 200 and 5 * 64 < height < 5 * 64 + 100

    # a cell is exactly the image Sketch makes with the same checkpoint, strength and seed
    sketch, = reviewer.sketcher.run(SketchRequest("tiny-flux", "a cube", loras=[Lora(spec.checkpoints[-1], 0.5)],
                                                  seed=2, width=64, height=64, steps=2, out_dir=tmp_path / "s"))
    assert np.array_equal(pixels(result.cells[3][1]), pixels(sketch.path))
    # …and it sits in the sheet once, in the 4th row and 2nd column of cells
    sheet, cell = pixels(result.image), pixels(result.cells[3][1])
    found = [(y, x) for y, x in zip(*np.nonzero((sheet == cell[0, 0]).all(axis=2)))
             if np.array_equal(sheet[y:y + 64, x:x + 64], cell)]
    assert len(found) == 1
    y, x = found[0]
    assert 3 * 64 < y - (height - 5 * 68) + 4 < 4 * 68 and width - 2 * 68 + 68 <= x + 4 < width
    assert np.abs(pixels(result.cells[0][0]) - pixels(result.cells[4][0])).mean() > 1.0  # base ≠ LoRA row


def test_reopening_a_grid_generates_nothing(reviewer, trained_run, tmp_path):
    spec = spec_for(trained_run)
    first = reviewer.grid(spec, tmp_path)
    again = reviewer.grid(spec, tmp_path)
    assert (again.generated, again.cached) == (0, 8)
    assert np.array_equal(pixels(first.image), pixels(again.image))
    wider = GridSpec(**{**spec.__dict__, "seeds": [1, 2, 3]})
    assert reviewer.grid(wider, tmp_path).generated == 4  # only the new column: 4 rows × seed 3


def test_saved_grid_carries_what_it_shows(reviewer, trained_run, tmp_path):
    spec = spec_for(trained_run)
    path = save_grid(reviewer.grid(spec, tmp_path), spec, tmp_path / "grid.png")
    parameters = read_parameters(path)
    assert parameters["kind"] == "review-grid" and parameters["seeds"] == [1, 2]
    assert parameters["rows"] == ["step 8 @ 0.5", "step 8 @ 1", "step 12 @ 0.5", "step 12 @ 1"]


def test_an_unchanged_grid_reuses_its_png_and_a_changed_one_writes_another(reviewer, trained_run, tmp_path):
    from dataclasses import replace

    spec = spec_for(trained_run)
    folder = tmp_path / "grids"
    first, written = keep_grid(reviewer.grid(spec, tmp_path), spec, folder)
    assert written and sorted(folder.iterdir()) == [first] and first.name.startswith("grid-")
    before = (first.stat().st_ino, first.read_bytes())
    again = reviewer.grid(spec, tmp_path)
    assert again.generated == 0  # every cell from the cache…
    assert keep_grid(again, spec, folder) == (first, False)  # …and the same file: nothing written
    assert sorted(folder.iterdir()) == [first] and (first.stat().st_ino, first.read_bytes()) == before

    wider = GridSpec(**{**spec.__dict__, "seeds": [1, 3]})  # other cells
    other, written = keep_grid(reviewer.grid(wider, tmp_path), wider, folder)
    assert written and other != first and sorted(folder.iterdir()) == sorted([first, other])
    assert read_parameters(other)["seeds"] == [1, 3]
    relabelled = replace(again, column_labels=["first", "second"])  # the same cells under other labels
    renamed, written = keep_grid(relabelled, spec, folder)
    assert written and renamed not in (first, other) and len(list(folder.iterdir())) == 3
    assert keep_grid(again, spec, folder) == (first, False)  # an earlier grid asked for again: still its file
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_too_large_or_empty_grids_are_refused(reviewer, trained_run, tmp_path):
    with pytest.raises(UserError, match="at least one checkpoint"):
        reviewer.grid(GridSpec("tiny-flux", [], ["x"], width=64, height=64, steps=1), tmp_path)
    with pytest.raises(UserError, match="more than 400"):
        reviewer.grid(GridSpec(
            "tiny-flux", [trained_run / "checkpoints" / "step-000012.safetensors"], ["x"] * 21, seeds=list(range(20)),
            width=64, height=64), tmp_path)


def test_blind_pairs_hide_sides_and_the_tally_persists(trained_run):
    pairs = blind_pairs(["a cube", "a cloud"], [1, 2, 3], rng=random.Random(4))
    assert sorted((p.prompt, p.seed) for p in pairs) == sorted((p, s) for p in ["a cube", "a cloud"] for s in [1, 2, 3])
    assert sum(p.left_is_a for p in pairs) == 3  # A is on the left in exactly half, shuffled

    folder = review_folder(None, trained_run)
    a, b = "step-000008.safetensors", "step-000012.safetensors"
    for pair in pairs[:4]:
        record_pick(folder, a, b, pair, "left" if pair.left_is_a else "right")  # the curator always picks A
    record_pick(folder, a, b, pairs[4], "tie")
    tally = read_tally(folder, a, b)
    assert (tally.a_wins, tally.b_wins, tally.ties, tally.leader()) == (4, 0, 1, a)
    assert [p["winner"] for p in tally.picks] == ["a"] * 4 + ["tie"]
    assert (folder / "ab.json").exists() and read_tally(folder, b, a).votes == 0
    assert "step-000008.safetensors: 4" in tally.sentence()


def test_pinned_checkpoint_survives_pruning_and_exports(trained_run, tmp_path, shared_workspace):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    pin(run_dir, 4)
    assert pinned_steps(run_dir) == {4}
    config = TrainConfig.model_validate({"checkpoints": {"keep": 1}})
    _prune(run_dir / "checkpoints", config)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000004.safetensors",
                                                                          "step-000012.safetensors"]
    with pytest.raises(UserError, match="no checkpoint at step 8"):
        pin(run_dir, 8)
    exported = export_checkpoint(run_dir / "checkpoints" / "step-000004.safetensors", shared_workspace.outputs("loras"))
    assert exported.name == "run-step-000004.safetensors"
    assert exported.read_bytes() == (run_dir / "checkpoints" / "step-000004.safetensors").read_bytes()


def test_cli_review(shared_workspace, trained_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cube\n\na tower\n")
    out = tmp_path / "grid.png"
    result = run_blk("--workspace", str(shared_workspace.root), "review", str(trained_run), "--prompts", str(prompts),
                     "--seeds", "1,2", "--scales", "0.6,1.0", "--steps", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "6×4 grid" in result.stdout
    assert read_parameters(out)["prompts"] == ["a cube", "a tower"]
    bad = run_blk("--workspace", str(shared_workspace.root), "review", str(trained_run), "--seeds", "one",
                  "--out", str(out))
    assert bad.returncode == 2 and "--seeds are a comma-separated list of numbers" in bad.stderr
    far = run_blk("--workspace", str(shared_workspace.root), "review", str(trained_run), "--scales", "0.5,5",
                  "--out", str(out))
    assert far.returncode == 2 and "--scales go from -1 to 2, as on Sketch's sliders; 5 is outside." in far.stderr


def test_seeds_and_strengths_read_as_typed_and_say_what_is_out_of_range():
    """Commas or spaces separate; a repeat would only make the same cells twice; values torch or the LoRA
    cannot use are one sentence before anything loads (a seed of 2**32 failed deep in generation)."""
    assert parse_seeds("1, 2 3,,2") == [1, 2, 3]
    assert parse_seeds("") == [] and parse_seeds(None) == [] and parse_strengths(" ") == []
    assert parse_strengths("0.6,0.8 1.0,1") == [0.6, 0.8, 1.0]
    assert parse_strengths("-1,2") == [-1.0, 2.0]  # the ends of Sketch's slider
    with pytest.raises(UserError, match=r"^Seeds are whole numbers from 0 to 4294967295; -3 is not\.$"):
        parse_seeds("1,-3")
    with pytest.raises(UserError, match="4294967296 is not"):
        parse_seeds(str(2**32))
    with pytest.raises(UserError, match=r"^Strengths go from -1 to 2, as on Sketch's sliders; 2\.5 is outside\.$"):
        parse_strengths("1, 2.5")
    with pytest.raises(UserError, match="nan is outside"):
        parse_strengths("nan")
    with pytest.raises(UserError, match="like 1,2,3; got “1.5”"):
        parse_seeds("1.5")


def test_a_cut_label_ends_after_a_whole_word():
    """"blkink, a figure i..." read as a typo: a label too long for its cell ends after its last whole word, and
    inside a word only when not even the first word fits."""
    from blk.generate.review import _fit, _label_font

    font = _label_font()
    text = "blkink, a figure in a landscape at dusk"
    width = int(font.getlength("blkink, a figure in...")) + 1
    assert _fit(font, text, width) == "blkink, a figure in..."
    assert _fit(font, text, int(font.getlength("blkink, a figure i...")) + 1) == "blkink, a figure..."
    assert _fit(font, text, int(font.getlength("blkink, a...")) + 1) == "blkink, a..."
    assert _fit(font, text, int(font.getlength("blki...")) + 1) == "blki..."  # no whole word fits
    assert _fit(font, text, 10_000) == text


def test_narrow_column_headers_tell_prompts_that_share_a_trigger_word_apart(tmp_path):
    """At 64 px every prompt used to read "blkstyl...": the words all prompts start with are left out (marked
    "...") when they do not fit, and prompts wrap to two lines; the PNG's parameters keep the full labels."""
    from blk.generate.review import _label_font

    prompts = ["blkstyle, a floating cube", "blkstyle, a floating tower", "blkstyle, a floating cloud at dusk"]
    labels = [Column(prompt, 1).label() for prompt in prompts]
    assert labels[2] == "blkstyle, a floating cloud at dusk\nseed 1"  # the label keeps the whole prompt
    font = _label_font()
    headers = column_headers(font, labels, 64)
    assert len({tuple(lines) for lines in headers}) == 3  # three prompts, three different headers
    assert all(lines[-1] == "seed 1" and len(lines) <= 3 for lines in headers)
    assert all(font.getlength(line) <= 64 for lines in headers for line in lines)
    assert not any("blkstyle" in line for lines in headers for line in lines)  # the shared trigger word left out
    assert headers[:2] == [["...cube", "seed 1"], ["...tower", "seed 1"]]
    wide = column_headers(font, labels, 1024)  # room enough: the prompts as they are
    assert wide == [[prompt, "seed 1"] for prompt in prompts]
    assert column_headers(font, ["a cube\nseed 1", "a cube\nseed 2"], 64) == [["a cube", "seed 1"],
                                                                               ["a cube", "seed 2"]]

    # the sheet as drawn: three distinct header images above three identical cells
    cell = tmp_path / "cell.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(cell)
    sheet = pixels(assemble([[cell] * 3], ["step 8"], labels))
    height, width = sheet.shape[:2]
    left, top = width - 3 * 68, height - 68
    crops = [sheet[:top, left + c * 68:left + c * 68 + 64] for c in range(3)]
    assert all((crop < 128).any() for crop in crops)  # something is written above every column
    assert not np.array_equal(crops[0], crops[1]) and not np.array_equal(crops[1], crops[2])
    assert not np.array_equal(crops[0], crops[2])

    spec = GridSpec("tiny-flux", [], prompts, seeds=[1], width=64, height=64)
    result = GridResult(Image.fromarray(sheet.astype(np.uint8)), [[cell] * 3], ["step 8"], labels, 0, 3)
    parameters = read_parameters(save_grid(result, spec, tmp_path / "grid.png"))
    assert parameters["columns"] == labels and parameters["prompts"] == prompts


def test_an_export_never_replaces_an_earlier_one_of_other_content(trained_run, tmp_path):
    """A resume rewrote step 8 (or a new run took the name): Export replaced the LoRA the artist had kept."""
    import shutil

    run_dir = tmp_path / "inks"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("review", "pinned.json"))
    step8, out = run_dir / "checkpoints" / "step-000008.safetensors", tmp_path / "loras"
    first = export_checkpoint(step8, out)
    kept = first.read_bytes()
    assert export_checkpoint(step8, out) == first  # the same file again: nothing new
    shutil.copy(run_dir / "checkpoints" / "step-000012.safetensors", step8)  # step 8 rewritten
    second = export_checkpoint(step8, out)
    assert second.name == "inks-step-000008-2.safetensors" and first.read_bytes() == kept
    assert export_checkpoint(step8, out) == second  # that content again: its own earlier export
    assert second.read_bytes() == step8.read_bytes() and sorted(p.name for p in out.iterdir()) == [
        "inks-step-000008-2.safetensors", "inks-step-000008.safetensors"]
