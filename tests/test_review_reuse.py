"""Review on Sketch's pipeline: the device setting, Sketch's memory options (no reload when switching tabs),
cells keyed by how they were made, pins and blind tallies of same-named checkpoints from two runs, blind
A/B after a failed generation, cancel, loose LoRA files from the CLI, and SDXL grids."""

import shutil
from dataclasses import replace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.generate.blind import read_tally
from blk.generate.metadata import read_parameters
from blk.generate.review import GridSpec, Reviewer, Row, cell_key
from blk.generate.sketch import Sketcher, SketchRequest
from blk.generate.text_to_image import TextToImage
from blk.models.device import MemoryOptions
from blk.models.pipelines import PipelineCache
from blk.train.pins import pinned_steps
from blk.workspace import Workspace
from tests.conftest import copy_trained_run, run_blk
from tests.support.loras import make_random_lora
from ui.cancels import SessionCancels
from ui.context import StudioContext
from ui.tabs import review

FORM = ("tiny-flux", "a cube", "1", "1.0", False, 64, 1, None)  # model, prompts, seeds, scales, base, size, steps, guidance


def no_progress(*_args, **_kwargs):
    return None


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def studio(shared_workspace, trained_run, tmp_path_factory):
    """A workspace with the tiny models, two runs with the same checkpoint names (run-a, run-b) and a loose
    LoRA file that is also called step-000008.safetensors."""
    workspace = Workspace(tmp_path_factory.mktemp("review-reuse") / "ws")
    shutil.copytree(shared_workspace.models, workspace.models, dirs_exist_ok=True)
    for name in ("run-a", "run-b"):
        copy_trained_run(trained_run, workspace.runs / name)
    loose = workspace.models / "loras" / "mine" / "step-000008.safetensors"
    loose.parent.mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "step-000004.safetensors", loose)
    return workspace


def checkpoint(workspace, run, step):
    return workspace.runs / run / "checkpoints" / f"step-{step:06d}.safetensors"


def cells(folder):
    return sorted((folder / "cells").glob("*.png")) if (folder / "cells").exists() else []


def test_review_runs_on_the_device_setting(studio, monkeypatch):
    context = StudioContext(studio, demo=True, demo_reason="test")
    lora = str(checkpoint(studio, "run-a", 8))
    monkeypatch.setattr(studio.settings, "device", "cuda:7")
    grid, _, status = review.make_grid(context, "", [lora], *FORM, progress=no_progress)
    assert grid == {"__type__": "update"} and "Device cuda:7 is not available here" in status and "\n" not in status
    assert cells(studio.outputs("review")) == [] and context.sketcher.cache.load_count == 0

    monkeypatch.setattr(studio.settings, "device", "cpu")
    grid, _, status = review.make_grid(context, "", [lora], *FORM, progress=no_progress)
    assert "1 rows × 1 columns" in status and context.sketcher.cache._loaded.device == "cpu"
    assert read_parameters(cells(studio.outputs("review"))[0])["device"] == "cpu"


def test_cells_made_on_another_device_or_dtype_or_with_int8_never_share_a_key(studio):
    sketcher = Sketcher(studio)
    loaded, text, _ = sketcher.prepare(SketchRequest("tiny-flux", "a", width=64, height=64, steps=1))
    row = Row(checkpoint(studio, "run-a", 8), 1.0)
    text = TextToImage(**{**text.__dict__, "seed": 1})
    here = cell_key(loaded, row, text)
    assert cell_key(replace(loaded, device="mps"), row, text) != here  # another device, and float16
    assert cell_key(replace(loaded, memory=MemoryOptions(int8=True)), row, text) != here
    assert cell_key(replace(loaded, memory=MemoryOptions(vae_tiling=True)), row, text) != here
    # speed options only change time: a compiled pipeline's cells are the same cells
    assert cell_key(replace(loaded, memory=MemoryOptions(compile=True, cpu_offload=True)), row, text) == here


def test_sketch_memory_modes_survive_a_grid_and_int8_cells_are_their_own(studio, tmp_path):
    """Sketch → Review → Sketch loads the base once (Review follows Sketch's memory options); int8 weights
    change pixels, so a grid on an int8 pipeline does not reuse the cells of a float one."""
    cache = PipelineCache()
    sketcher = Sketcher(studio, cache)
    tiled = MemoryOptions(vae_tiling=True)
    sketch = SketchRequest("tiny-flux", "an ink cube", seed=3, width=64, height=64, steps=1, out_dir=tmp_path / "s")
    sketcher.run(replace(sketch, memory=tiled))
    spec = GridSpec("tiny-flux", [checkpoint(studio, "run-a", 8)], ["a cube"], seeds=[1, 2], width=64, height=64,
                    steps=1)  # spec.memory is the default: Review has no memory controls
    first = Reviewer(sketcher).grid(spec, tmp_path / "review")
    assert first.generated == 2 and read_parameters(first.cells[0][0])["memory"]["vae_tiling"] is True
    sketcher.run(replace(sketch, memory=tiled))
    assert cache.load_count == 1

    sketcher.run(replace(sketch, memory=MemoryOptions(int8=True)))
    int8 = Reviewer(sketcher).grid(spec, tmp_path / "review")
    assert (int8.generated, cache.load_count) == (2, 2)
    assert not np.array_equal(pixels(int8.cells[0][0]), pixels(first.cells[0][0]))
    sketcher.run(replace(sketch, memory=tiled))
    assert Reviewer(sketcher).grid(spec, tmp_path / "review").generated == 0  # the float cells, as they were


def test_same_named_checkpoints_of_two_runs_pin_label_and_tally_apart(studio):
    context = StudioContext(studio, demo=True, demo_reason="test")
    own, other = checkpoint(studio, "run-a", 8), checkpoint(studio, "run-b", 8)
    loose = studio.models / "loras" / "mine" / "step-000008.safetensors"
    note = review.keep(context, "run-a", str(checkpoint(studio, "run-b", 4)), "pin")
    assert "Pinned step 4 of run run-b" in note
    assert pinned_steps(studio.runs / "run-b") == {4} and pinned_steps(studio.runs / "run-a") == set()
    assert review.keep(context, "run-a", str(loose), "pin") == "Only a run's checkpoints can be pinned."
    labels = dict((path, label) for label, path in review.checkpoint_choices(context, "run-a", [str(other),
                                                                                               str(loose)]))
    assert (labels[str(own)], labels[str(other)], labels[str(loose)]) == (
        "step 8", "run-b/step 8", "models/loras/mine/step-000008.safetensors")  # as the grid labels them

    # the Blind A/B tab says whom it will compare (A and B are chosen on another tab)
    assert review.blind_setup(context, "run-a", str(own), str(other), "a cube", "1,2") == (
        "Pairs of **step 8** (A) and **run-b/step 8** (B), chosen under *Side by side*, for the prompts and seeds at "
        "left: 1 prompt × 2 seeds = 2 pairs, names hidden and sides balanced. The tally is saved with the run.")
    assert "base (no LoRA)** (A)" in review.blind_setup(context, "run-a", review.BASE, str(own), "a\nb\n", "")
    assert "2 prompts × 1 seed = 2 pairs" in review.blind_setup(context, "run-a", review.BASE, str(own), "a\nb\n", "")
    assert review.blind_setup(context, "run-a", str(own), None, "", "1").startswith("Choose **A** and **B**")
    assert "both **step 8**" in review.blind_setup(context, "run-a", str(own), str(own), "", "1")
    assert "1 prompt × 2 seeds = 2 pairs" in review.blind_setup(context, "run-a", review.BASE, str(own), "a", "4 5,4")
    assert review.blind_setup(context, "run-a", review.BASE, str(own), "a", "1,x").startswith("**Seeds are a comma")
    # the curator prefers run-b's step 8 in every pair: the tally says so, and it is the one offered to keep
    state, *_ = review.start_blind(context, "run-a", str(own), str(other), "tiny-flux", "a cube", "1,2", "1.0",
                                   False, 64, 1, None)
    for _ in range(2):
        side = "right" if state["pairs"][state["index"]].left_is_a else "left"
        state, _, _, note, chosen = review.pick(context, "run-a", state, side)
    assert "Done" in note and chosen == str(other)
    tally = read_tally(studio.runs / "run-a" / "review", "step-000008.safetensors", "run-b/step-000008.safetensors")
    assert (tally.a_wins, tally.b_wins) == (0, 2)

    spec = GridSpec("tiny-flux", [own, other], ["a cube"], width=64, height=64, steps=1)
    assert Reviewer(context.sketcher).grid(spec, studio.runs / "run-a" / "review").row_labels == [
        "run-a/step 8", "run-b/step 8"]


def test_blind_pick_after_a_failed_generation_is_a_sentence_and_counts_once(studio):
    context = StudioContext(studio, demo=True, demo_reason="test")
    a, b = checkpoint(studio, "run-a", 4), checkpoint(studio, "run-a", 12)
    aside = b.with_suffix(".moved")
    form = ("tiny-flux", "a tower", "5,6", "1.0", False, 64, 1, None)
    folder = studio.runs / "run-a" / "review"

    try:
        b.rename(aside)  # B's file is gone while the test starts: a sentence, not an error page
        state, left, right, note = review.start_blind(context, "run-a", str(a), str(b), *form)
        assert left is None and "does not exist" in note and "nothing was recorded" in note
        assert all(button.interactive for button in review.pick_buttons(state))  # a pick click retries the pair
        assert not any(button.interactive for button in review.pick_buttons(None))  # before any test
        aside.rename(b)
        state, left, right, note, _ = review.pick(context, "run-a", state, "left")  # shows pair 1, records nothing
        assert "Pair 1 of 2" in note and left and read_tally(folder, a.name, b.name).votes == 0

        b.rename(aside)  # the pick is recorded, then the next pair fails to generate
        state, left, right, note, _ = review.pick(context, "run-a", state, "left")
        assert left is None and "does not exist" in note and read_tally(folder, a.name, b.name).votes == 1
        state, _, _, note, _ = review.pick(context, "run-a", state, "left")  # a retry that fails again
        assert "does not exist" in note and read_tally(folder, a.name, b.name).votes == 1
        aside.rename(b)
    finally:
        if aside.exists():
            aside.rename(b)
    state, left, _, note, _ = review.pick(context, "run-a", state, "left")  # the retry shows pair 2
    assert "Pair 2 of 2" in note and left and read_tally(folder, a.name, b.name).votes == 1
    state, _, _, note, _ = review.pick(context, "run-a", state, "tie")
    tally = read_tally(folder, a.name, b.name)
    assert "Done" in note and tally.votes == 2 and tally.ties == 1
    assert not any(button.interactive for button in review.pick_buttons(state))  # the tally stands


def test_grid_cancel_keeps_the_cells_made_so_far(studio, tmp_path):
    context = StudioContext(Workspace(tmp_path / "ws"), demo=True, demo_reason="test")
    shutil.copytree(studio.models, context.workspace.models, dirs_exist_ok=True)
    lora = context.workspace.models / "loras" / "a.safetensors"
    shutil.copy(checkpoint(studio, "run-a", 8), lora)
    cancels, window = SessionCancels(), gr.Request(session_hash="window")
    grid = cancels.job(lambda cancel, *a, progress: review.make_grid(context, *a, cancel=cancel, progress=progress))
    cancels.cancel(window)  # a Cancel clicked while no grid ran does not stop the next one
    form = ("tiny-flux", "a cube", "1,2,3", "1.0", False, 64, 1, None)

    def progress(fraction, desc=""):
        if fraction >= 1 / 3:  # the first cell is done
            cancels.cancel(window)

    cancels.arm(window)  # the click
    _, _, status = grid(window, "", [str(lora)], *form, progress=progress)
    assert "Cancelled; 1 of 3 cells are cached" in status
    assert len(cells(context.workspace.outputs("review"))) == 1
    cancels.arm(window)
    _, _, status = grid(window, "", [str(lora)], *form, progress=no_progress)
    assert "2 generated, 1 from the cache" in status


def test_cli_review_of_loose_lora_files_with_a_device(studio, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(studio.models, workspace.models, dirs_exist_ok=True)
    loras = []
    for name, step in (("ink.safetensors", 4), ("wash.safetensors", 12)):
        loras.append(workspace.models / "loras" / name)
        shutil.copy(checkpoint(studio, "run-a", step), loras[-1])
    out = tmp_path / "grid.png"
    common = ("--workspace", str(workspace.root), "review", *map(str, loras), "--model", "tiny-flux", "--seeds", "1",
              "--size", "64x64", "--steps", "1", "--out", str(out))
    bad = run_blk(*common, "--device", "cuda:7")
    assert bad.returncode == 2 and "Device cuda:7 is not available here" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not out.exists()

    result = run_blk(*common, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "2×1 grid (2 generated, 0 from the cache)" in result.stdout
    made = cells(workspace.outputs("review"))
    assert len(made) == 2 and {read_parameters(p)["loras"][0]["name"] for p in made} == {"ink.safetensors",
                                                                                       "wash.safetensors"}
    assert read_parameters(out)["rows"] == ["ink", "wash"] and Image.open(out).size[1] > 64


def test_sdxl_grid_two_loras_one_load_and_a_flux_lora_is_refused(studio, tmp_path):
    sdxl = [make_random_lora(studio.models / "tiny-sdxl", "sdxl", tmp_path / f"sdxl{seed}", seed=seed)
            for seed in (1, 2)]
    cache = PipelineCache()
    reviewer = Reviewer(Sketcher(studio, cache))
    spec = GridSpec("tiny-sdxl", sdxl, ["an ink cube"], seeds=[1], include_base=True, width=64, height=64, steps=2)
    result = reviewer.grid(spec, tmp_path / "review")
    assert (result.generated, cache.load_count) == (3, 1)
    base, one, two = (pixels(row[0]) for row in result.cells)
    assert np.abs(one - base).mean() > 0.5 and np.abs(two - one).mean() > 0.5

    flux_lora = checkpoint(studio, "run-a", 8)
    with pytest.raises(UserError, match="is a FLUX LoRA and the base model is SDXL") as caught:
        reviewer.grid(replace(spec, checkpoints=[flux_lora], include_base=False), tmp_path / "refused")
    assert "\n" not in str(caught.value) and cells(tmp_path / "refused") == []
    assert cache.load_count == 1


def test_a_blind_test_counts_each_pair_once_keeps_its_run_and_shows_no_names(studio):
    """Two pick buttons clicked before the next pair showed recorded two picks for one pair; choosing another run
    in the dropdown mid-test split the tally over two runs; the pair's files named their LoRA in their PNG text."""
    context = StudioContext(studio, demo=True, demo_reason="test")
    a, b = checkpoint(studio, "run-a", 8), checkpoint(studio, "run-a", 12)
    form = ("tiny-flux", "a lantern\na lantern", "7", "1.0", False, 64, 1, None)  # a repeated prompt: one case
    state, left, right, note = review.start_blind(context, "run-a", str(a), str(b), *form)
    assert len(state["pairs"]) == 1 and "Pair 1 of 1" in note
    for shown in (left, right):
        assert isinstance(shown, Image.Image) and not shown.info  # pixels only: no text, no file name
    stale = dict(state)  # what a second button's click reads while the first one's pick runs
    state, *_ = review.pick(context, "run-b", state, "left")  # the dropdown moved to run-b meanwhile
    assert review.pick(context, "run-b", stale, "right") == (review.gr.update(),) * 5
    assert read_tally(studio.runs / "run-a" / "review", a.name, b.name).votes == 1
    assert not (studio.runs / "run-b" / "review" / "ab.json").exists()

    with review.gr.Blocks() as demo:
        review.build(context)
    picks = [fn for fn in demo.fns.values() if fn.concurrency_id == "blk-blind-pick"]  # one queue for the three
    assert len(picks) == 3


def test_a_removed_run_is_a_sentence_not_a_ghost_run(studio):
    """A run removed while the tab was open is still a choice: its grid, comparison and blind test recreated
    runs/NAME/review/, which the Train tab then listed as a run of status "unknown"."""
    context = StudioContext(studio, demo=True, demo_reason="test")
    gone = copy_trained_run(studio.runs / "run-a", studio.runs / "run-gone")
    a, b = str(gone / "checkpoints" / "step-000004.safetensors"), str(gone / "checkpoints" / "step-000008.safetensors")
    shutil.rmtree(gone)
    sentence = f"There is no run called run-gone in {studio.runs} (removed? ↻ lists the runs again)."
    _, _, status = review.make_grid(context, "run-gone", [a], *FORM, progress=no_progress)
    assert status == f"**{sentence}**"
    assert review.compare(context, "run-gone", a, b, "a cube", 1, *FORM, progress=no_progress)[1] == f"**{sentence}**"
    assert review.start_blind(context, "run-gone", a, b, *FORM)[3] == f"**{sentence}**"
    assert not gone.exists()


def test_side_by_sides_seed_is_in_the_grids_range(studio):
    context = StudioContext(studio, demo=True, demo_reason="test")
    a, b = checkpoint(studio, "run-a", 4), checkpoint(studio, "run-a", 8)
    for seed in (-1, -2**70):
        note = review.compare(context, "run-a", str(a), str(b), "a cube", seed, *FORM, progress=no_progress)[1]
        assert note.startswith("**Seed is a whole number from 0 to ") and f"; {seed} is not.**" in note


def test_two_files_of_one_content_in_a_stack_add_their_strengths(studio, tmp_path):
    """A checkpoint and its exported copy are one adapter: the last row's strength alone won."""
    from blk.generate.sketch import Lora

    original = checkpoint(studio, "run-a", 12)
    copy = tmp_path / "copy-of-12.safetensors"
    shutil.copy(original, copy)
    sketcher = Sketcher(studio)
    request = SketchRequest("tiny-flux", "a kite", seed=3, width=64, height=64, steps=1, out_dir=tmp_path / "s")

    def image(*loras):
        return pixels(sketcher.run(replace(request, loras=list(loras)))[0].path)

    once = image(Lora(original, 1.0))
    assert np.array_equal(image(Lora(original, 0.5), Lora(copy, 0.5)), once)
    assert np.array_equal(image(Lora(original, 1.0), Lora(copy, -1.0)), image()) and not np.array_equal(once, image())


def test_unloaded_loras_leave_no_private_copy_behind(studio, tmp_path):
    """Every LoRA version loaded stayed copied in the temporary folder until the app ended (GBs for a grid of
    FLUX checkpoints, in RAM where /tmp is a tmpfs)."""
    from blk.generate.sketch import Lora
    from blk.models import pipelines

    def copies() -> set:  # this process's copies; other tests' pipelines may hold adapters (and copies) of theirs
        return {path for path in pipelines._PRIVATE_COPIES.values() if path.is_file()}

    before = copies()
    sketcher = Sketcher(studio, PipelineCache())
    request = SketchRequest("tiny-flux", "a kite", seed=3, width=64, height=64, steps=1, out_dir=tmp_path / "s")
    for step in (4, 8, 12):
        sketcher.run(replace(request, loras=[Lora(checkpoint(studio, "run-a", step), 1.0)]))
    assert [(path.parent.name[:8], path.name) for path in copies() - before] == [
        (pipelines.lora_sha256(checkpoint(studio, "run-a", 12))[:8], "step-000012.safetensors")]
    sketcher.run(request)
    assert copies() - before == set()
