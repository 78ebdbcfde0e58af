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
    assert "Pinned step-000012" in review.keep(context, "ui-run", str(checkpoint), "pin")
    assert "(pinned)" in dict(review.checkpoint_choices(context, "ui-run", [])).__repr__()
    exported = review.keep(context, "ui-run", str(checkpoint), "export")
    assert "ui-run-step-000012.safetensors" in exported
    assert "outside the workspace" in review.keep(context, "ui-run", str(tmp_path / "x.safetensors"), "pin")
    assert "outside the workspace" in review.keep(context, "../../", str(checkpoint), "pin")
