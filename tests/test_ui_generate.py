"""The Sketch and Review tabs' handlers with a real context: paths confined, parameters read back."""

from blk.generate.sketch import Lora, SketchRequest
from ui.context import StudioContext
from ui import lora_stack
from ui.tabs import review, sketch


def test_sketch_form_confines_loras_and_loads_parameters(shared_workspace, trained_run, tmp_path):
    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    items, note = lora_stack.add_lora(context, str(outside), [])
    assert items == [] and "outside the workspace" in note
    items, note = lora_stack.add_lora(context, "../../etc/passwd", [])
    assert items == [] and "outside the workspace" in note
    checkpoint = trained_run / "checkpoints" / "step-000008.safetensors"
    items, note = lora_stack.add_lora(context, str(checkpoint), [])
    assert items == [[str(checkpoint), 1.0]] and note == ""
    assert lora_stack.add_lora(context, str(checkpoint), items)[0] == items  # no duplicates

    result, = context.sketcher.run(SketchRequest("tiny-flux", "a tower", loras=[Lora(checkpoint, 0.7)], seed=11,
                                                 width=64, height=48, steps=2, out_dir=tmp_path))
    form = sketch.load_parameters(context, str(result.path))
    assert form[:4] == ["tiny-flux", "a tower", "", [[str(checkpoint), 0.7]]]
    assert form[4:10] == [sketch.CUSTOM, 64, 48, 2, 3.5, 11] and form[10] is False
    assert "seed 11" in form[-1]
    assert "not a readable image" in sketch.load_parameters(context, str(tmp_path / "missing.png"))[-1]
    assert sketch.model_defaults(context, "flux-schnell") == (4, 0.0)


def test_review_keep_pins_and_exports(shared_workspace, trained_run, tmp_path):
    import shutil

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    shutil.copytree(trained_run, shared_workspace.runs / "ui-run")
    checkpoint = shared_workspace.runs / "ui-run" / "checkpoints" / "step-000012.safetensors"
    assert "Pinned step 12 of run ui-run" in review.keep(context, "ui-run", str(checkpoint), "pin")
    assert "(pinned)" in dict(review.checkpoint_choices(context, "ui-run", [])).__repr__()
    exported = review.keep(context, "ui-run", str(checkpoint), "export")
    assert "ui-run-step-000012.safetensors" in exported
    assert "outside the workspace" in review.keep(context, "ui-run", str(tmp_path / "x.safetensors"), "pin")
    assert "outside the workspace" in review.keep(context, "../../", str(checkpoint), "pin")


def test_sending_a_sketch_on_with_none_clicked_says_so():
    """The three send buttons used to do nothing before a sketch was clicked; now Sketch's note says why,
    and with a sketch they open the tab and leave the note ("Selected …") as it is."""
    from ui import app

    update = {"__type__": "update"}
    assert app.to_compose(None) == (update,) * 4 + ("Click a sketch first.",)
    assert app.to_matting(None) == (update,) * 3 + ("Click a sketch first.",)
    assert app.to_upscale("") == (update,) * 2 + ("Click a sketch first.",)
    main, inner, path, kind, note = app.to_compose("/ws/outputs/sketch/a.png")
    assert (main.selected, inner.selected, path, kind, note) == ("stencil", "compose", "/ws/outputs/sketch/a.png",
                                                                  "image", update)
    main, inner, path, note = app.to_matting("/ws/a.png")
    assert (main.selected, inner.selected, path, note) == ("stencil", "matting", "/ws/a.png", update)
    main, path, note = app.to_upscale("/ws/a.png")
    assert (main.selected, path, note) == ("upscale", "/ws/a.png", update)


def fake_run(workspace, name, steps, age):
    """A run folder as Review sees it: config.yaml and checkpoint files (their contents are never read here)."""
    import os
    import time

    folder = workspace.runs / name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {base: tiny-flux}\n")
    for step in steps:
        (folder / "checkpoints" / f"step-{step:06d}.safetensors").write_bytes(b"lora")
    os.utime(folder, (time.time() - age, time.time() - age))
    return folder


def test_review_preselects_the_newest_run_on_page_load(workspace):
    context = StudioContext(workspace, demo=True, demo_reason="test")
    assert review.on_load(context).value is None  # no runs yet: nothing to choose
    fake_run(workspace, "older", [4], age=600)
    fake_run(workspace, "newest", [4], age=10)
    loaded = review.on_load(context)
    assert loaded.value == "newest" and loaded.choices == [("newest", "newest"), ("older", "older")]


def test_pinning_relabels_the_checkpoint_lists_at_once(workspace):
    """Pin marks the checkpoint "(pinned)" in every list (rows, A, B, Checkpoint to keep) without re-picking."""
    context = StudioContext(workspace, demo=True, demo_reason="test")
    run = fake_run(workspace, "r1", [4, 8], age=0)
    four = str(run / "checkpoints" / "step-000004.safetensors")
    note, rows, a, b, chosen = review.pin_and_relabel(context, "r1", four, [])
    assert note == "Pinned step 4 of run r1: the run's pruning keeps it."
    for listed in (rows, a, b, chosen):
        assert listed.choices == [("step 4 (pinned)", four),
                                  ("step 8", str(run / "checkpoints" / "step-000008.safetensors"))]
    refused = review.pin_and_relabel(context, "../../../etc", four, [])
    assert "outside the workspace" in refused[0] and refused[1:] == ({"__type__": "update"},) * 4


def test_review_names_checkpoints_as_its_rows_do_in_compare_and_in_the_tally(shared_workspace, trained_run):
    """Rows, Compare's note and the blind tally all say "step 8" (another run's: "RUN/step 8"); the tally file
    keeps its file-based keys, so earlier picks still count."""
    import json
    import shutil

    from blk.generate.blind import BlindPair

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    run = shared_workspace.runs / "label-run"
    fresh = shutil.ignore_patterns("review", "pinned.json")  # other tests' picks and pins in the shared run
    shutil.copytree(trained_run, run, ignore=fresh)
    shutil.copytree(trained_run, shared_workspace.runs / "other-run", ignore=fresh)
    eight, twelve = (str(run / "checkpoints" / f"step-{s:06d}.safetensors") for s in (8, 12))
    other = str(shared_workspace.runs / "other-run" / "checkpoints" / "step-000008.safetensors")
    assert [name for name, _ in review.checkpoint_choices(context, "label-run", [other])] == [
        "step 4", "step 8", "step 12", "other-run/step 8"]

    form = ["tiny-flux", "a cube", "3", "1.0", False, 64, 2, None]
    _, note = review.compare(context, "label-run", eight, other, "a cube", 3, *form, progress=lambda *a, **k: None)
    assert note == "Left: **A** (step 8) · right: **B** (other-run/step 8)."

    state = {"a": eight, "b": twelve, "pairs": [BlindPair("a cube", 3, True)], "index": 0, "shown": 0, "form": form}
    *_, sentence, chosen = review.pick(context, "label-run", state, "left")
    assert sentence == ("Done. Tally so far, saved with the run: step 8: 1 · step 12: 0 · ties: 0 — "
                        "step 8 is preferred.")
    assert chosen == eight
    tally = json.loads((run / "review" / "ab.json").read_text())
    assert list(tally) == ["step-000008.safetensors vs step-000012.safetensors"]


def test_review_says_include_the_base_model_as_its_checkbox_does(workspace):
    """The grid's refusal and the checkbox use the same words."""
    import gradio as gr

    context = StudioContext(workspace, demo=True, demo_reason="test")
    with gr.Blocks() as demo:
        review.build(context)
    labels = [block.label for block in demo.blocks.values() if isinstance(block, gr.Checkbox)]
    assert "Include the base model (a row without LoRA)" in labels
    *_, status = review.make_grid(context, "", [], "tiny-flux", "x", "1", "1.0", False, 64, 2, None,
                                  progress=lambda *a, **k: None)
    assert status == "**Choose at least one checkpoint (or include the base model).**"
