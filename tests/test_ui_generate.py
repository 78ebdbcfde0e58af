"""The Sketch and Review tabs' handlers with a real context: paths confined, parameters read back."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from blk.generate.sketch import Lora, SketchRequest
from tests.conftest import copy_trained_run
from ui import lora_stack
from ui.context import StudioContext
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
    assert lora_stack.strength_label(str(checkpoint)) == f"{trained_run.name} · step 8 — strength"
    assert lora_stack.strength_label(str(outside)) == "elsewhere.safetensors — strength"

    result, = context.sketcher.run(SketchRequest("tiny-flux", "a tower", loras=[Lora(checkpoint, 0.7)], seed=11,
                                                 width=64, height=48, steps=2, out_dir=tmp_path))
    form = sketch.load_parameters(context, str(result.path))
    assert form[:4] == ["tiny-flux", "a tower", "", [[str(checkpoint), 0.7]]]
    assert form[4] == {"__type__": "update"} and form[5:11] == [sketch.CUSTOM, 64, 48, 2, 3.5, 11]
    assert form[11] is False
    # a size a budget and an aspect give comes back as them (a 1 MP square came back as a custom size)
    assert sketch.budget_and_aspect(1024, 1024) == (1.0, "1:1 square")
    assert sketch.budget_and_aspect(640, 448) == (0.25, "3:2 landscape")
    assert sketch.budget_and_aspect(64, 48) == (None, sketch.CUSTOM) == sketch.budget_and_aspect(None, None)
    assert "seed 11" in form[-1]
    assert sketch.load_parameters(context, str(tmp_path / "missing.png"))[-1] == "**missing.png is not there any more.**"
    (tmp_path / "gradio-upload").mkdir()
    text = tmp_path / "gradio-upload" / "notimage.png"
    text.write_text("a text file renamed")
    note = sketch.load_parameters(context, str(text))[-1]
    assert note == "**notimage.png is not a readable image: its content is not a PNG (nor any image format).**"
    assert "gradio-upload" not in note  # no temporary folder in the sentence


def test_a_png_names_its_loras_without_the_folders_of_the_machine_and_they_are_found_again(shared_workspace,
                                                                                             trained_run, tmp_path):
    """An image travels: its LoRA is named by its workspace path (a file elsewhere by its name alone), never by an
    absolute path that tells a user name; loading the parameters finds the file by that path, else by hash."""
    import json
    import shutil

    from PIL import Image

    from blk.generate.library import lora_reference
    from blk.generate.metadata import read_parameters
    from blk.workspace import Workspace

    workspace = Workspace(tmp_path / "workspace")
    shutil.copytree(shared_workspace.models / "tiny-flux", workspace.models / "tiny-flux")
    run = copy_trained_run(trained_run, workspace.runs / "tower")
    checkpoint = run / "checkpoints" / "step-000008.safetensors"
    context = StudioContext(workspace, demo=True, demo_reason="test")
    result, = context.sketcher.run(SketchRequest("tiny-flux", "a tower", loras=[Lora(checkpoint, 0.7)], seed=11,
                                                 width=64, height=48, steps=2, out_dir=tmp_path))
    lora, = read_parameters(result.path)["loras"]
    assert lora["path"] == f"runs/{run.name}/checkpoints/step-000008.safetensors"
    assert str(tmp_path) not in json.dumps(dict(Image.open(result.path).text))  # no folder of this machine
    assert sketch.load_parameters(context, str(result.path))[3] == [[str(checkpoint.resolve()), 0.7]]
    assert lora_reference(workspace, tmp_path / "elsewhere" / "ink.safetensors") == "ink.safetensors"

    kept = workspace.models / "loras" / "tower-ink.safetensors"  # the run deleted, its LoRA kept under a new name
    kept.parent.mkdir(parents=True)
    shutil.move(checkpoint, kept)
    shutil.rmtree(run)
    assert sketch.load_parameters(context, str(result.path))[3] == [[str(kept.resolve()), 0.7]]  # found by its hash
    kept.write_bytes(b"another file")  # the same name, another file: not the LoRA the image was made with
    other = workspace.models / "loras" / "unrelated.safetensors"  # another size: never hashed in the search
    other.write_bytes(b"x" * 1000)
    from blk.data import scan

    loaded = sketch.load_parameters(context, str(result.path))
    assert loaded[3] == [] and f"Not found on this machine: {run.name}/step-000008.safetensors" in loaded[-1]
    assert not [key for key in scan._DIGESTS if key[0] == str(other.resolve())]

    # a LoRA kept in a folder allowed besides the workspace: named by its file name, found there again
    shelf = tmp_path / "shelf" / "inks"
    shelf.mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "step-000008.safetensors", shelf / "ink.safetensors")
    workspace.settings.allowed_folders.append(str(tmp_path / "shelf"))
    result, = context.sketcher.run(SketchRequest("tiny-flux", "a tower", loras=[Lora(shelf / "ink.safetensors", 0.5)],
                                                 seed=11, width=64, height=48, steps=2, out_dir=tmp_path))
    assert read_parameters(result.path)["loras"][0]["path"] == "ink.safetensors"
    assert sketch.load_parameters(context, str(result.path))[3] == [[str((shelf / "ink.safetensors").resolve()), 0.5]]
    assert sketch.model_defaults(context, "flux-schnell") == (4, 0.0)


def test_review_keep_pins_and_exports(shared_workspace, trained_run, tmp_path):

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    copy_trained_run(trained_run, shared_workspace.runs / "ui-run")
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
    # matting not set up: Sketch says why and stays (the Matting tab it opened had Cut out greyed)
    *unchanged, note = app.to_matting("/ws/a.png", "Matting needs BiRefNet's weights at /ws/m.onnx.")
    assert unchanged == [update] * 3
    assert note == "Cut out uses Stencil's matting, which is not set up: Matting needs BiRefNet's weights at /ws/m.onnx."
    main, path, note = app.to_upscale("/ws/a.png")
    assert (main.selected, path, note) == ("upscale", "/ws/a.png", update)
    assert app.to_upscale(None, app.PICK_ASSET) == (update,) * 2 + ("Click an asset in the gallery first.",)


@pytest.mark.parametrize("count, after, expected", [
    (1, "", ["step 0 of 4", "step 1 of 4", "step 2 of 4", "step 3 of 4", "step 4 of 4"]),
    (2, "", ["image 1 of 2 · step 0 of 2", "image 1 of 2 · step 1 of 2", "image 1 of 2 · step 2 of 2",
             "image 2 of 2 · step 1 of 2", "image 2 of 2 · step 2 of 2"]),
    (2, "decoding", ["image 1 of 2 · step 0 of 1", "image 1 of 2 · decoding", "image 1 of 2 · done",
                     "image 2 of 2 · decoding", "image 2 of 2 · done"]),
])
def test_progress_says_which_item_and_which_step(count, after, expected):
    """Gradio showed "15/27" for a batch; the words say the item and its own step (and a last stage such as
    decoding the transparency, when an item has one)."""
    from ui.progress_text import batch_step_text

    assert [batch_step_text(done, 4, count, "image", after) for done in range(5)] == expected


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
    listed = [("step 4 (pinned)", four), ("step 8", str(run / "checkpoints" / "step-000008.safetensors"))]
    assert rows.choices == chosen.choices == listed
    assert a.choices == b.choices == [(review.BASE_LABEL, review.BASE)] + listed  # A and B may be the base model
    refused = review.pin_and_relabel(context, "../../../etc", four, [])
    assert "outside the workspace" in refused[0] and refused[1:] == ({"__type__": "update"},) * 4


def test_review_names_checkpoints_as_its_rows_do_in_compare_and_in_the_tally(shared_workspace, trained_run):
    """Rows, Compare's note and the blind tally all say "step 8" (another run's: "RUN/step 8"); the tally file
    keeps its file-based keys, so earlier picks still count."""
    import json

    from blk.generate.blind import BlindPair

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    run = shared_workspace.runs / "label-run"
    copy_trained_run(trained_run, run)
    copy_trained_run(trained_run, shared_workspace.runs / "other-run")
    eight, twelve = (str(run / "checkpoints" / f"step-{s:06d}.safetensors") for s in (8, 12))
    other = str(shared_workspace.runs / "other-run" / "checkpoints" / "step-000008.safetensors")
    assert [name for name, _ in review.checkpoint_choices(context, "label-run", [other])] == [
        "step 4", "step 8", "step 12", "other-run/step 8"]

    form = ["tiny-flux", "a cube", "3", "1.0", False, 64, 2, None]
    _, note = review.compare(context, "label-run", eight, other, "a cube", 3, *form, progress=lambda *a, **k: None)
    assert note == "Left: **A** (step 8) · right: **B** (other-run/step 8) — “a cube”, seed 3."

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


def base_model_fields(demo):
    return [block for block in demo.blocks.values() if getattr(block, "label", None) == "Base model"]


def test_train_and_review_offer_the_base_models_found_and_take_a_typed_one(workspace):
    """"Base model" in Train and Review is a list of the models of the right kind the studio finds (the tiny ones
    in demo mode), fresh when the tab opens; a name or path typed in still reaches the engine, whose sentence
    says what is wrong with it."""
    import json

    import gradio as gr

    from ui.tabs import train

    demo_context = StudioContext(workspace, demo=True, demo_reason="test")
    assert demo_context.base_models() == ["tiny-flux", "tiny-sdxl"]
    with gr.Blocks() as demo:
        trained = train.build(demo_context, lambda: [])
        reviewed = review.build(demo_context)
    fields = base_model_fields(demo)
    assert len(fields) == 2
    for field in fields:
        assert isinstance(field, gr.Dropdown) and field.allow_custom_value
        assert [value for _, value in field.choices] == ["tiny-flux", "tiny-sdxl"]
        assert field.value == "tiny-flux"  # Train's: the preset's model in demo mode; Review's: the default
        assert field.preprocess("/ws/models/my-own-flux") == "/ws/models/my-own-flux"  # typed: passed on as is
    assert train.form_updates_from_preset(demo_context, "conceptor-sdxl")[0] == "tiny-sdxl"  # a preset sets it

    real = StudioContext(workspace, demo=False, demo_reason="")
    assert "flux-schnell" not in real.base_models()
    folder = workspace.models / "flux-schnell"  # a model put in the workspace while the app runs
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    listed = real.base_models()
    assert "flux-schnell" in listed and not {"tiny-flux", "tiny-sdxl"} & set(listed)  # real bases only
    with gr.Blocks():
        trained = train.build(real, lambda: [])
        reviewed = review.build(real)
    for built in (trained, reviewed):  # what opening the tab sends: the list read again
        refresh, outputs = built["on_show"]
        sent = dict(zip((getattr(o, "label", None) for o in outputs), refresh()))
        assert sent["Base model"].choices == [(name, name) for name in real.base_models()]
        assert set(sent["Base model"].constructor_args) == {"choices"}  # the value chosen or typed stays

    *_, status = review.make_grid(demo_context, "", [], "no-such-model", "x", "1", "1.0", True, 64, 1, None,
                                  progress=lambda *a, **k: None)
    assert status.startswith("**Unknown model 'no-such-model': use one of flux-dev") and "\n" not in status
    *_, status = review.make_grid(demo_context, "", [], None, "x", "1", "1.0", True, 64, 1, None,
                                  progress=lambda *a, **k: None)
    assert status == "**Choose a base model.**"  # the list cleared by hand


def test_picking_a_run_in_review_selects_its_base_model(workspace):
    from blk.train.config import TrainConfig, save_config

    context = StudioContext(workspace, demo=True, demo_reason="test")
    folder = fake_run(workspace, "sdxl-run", [4, 8], age=0)
    config = TrainConfig()
    config.model.name = "tiny-sdxl"
    config.sampling.prompts = ["a cube"]
    config.sampling.seed = 7
    save_config(config, folder / "config.yaml")
    updates = review.on_run(context, "sdxl-run", [])
    assert updates[1] == "tiny-sdxl" and updates[2] == "a cube"  # the Base model and Prompts fields
    assert updates[3] == "a cube"  # Side by side's Prompt
    assert updates[4] == "7" and updates[-2] == 7  # the grid's Seeds and Side by side's Seed: the run's
    assert review.on_run(context, "", [])[1] == {"__type__": "update"}  # no run: the model stays as it is
    # nor are A and B emptied: an empty run value passing by (the dropdown re-chosen) left them empty
    assert review.on_run(context, None, []) == ({"__type__": "update"},) * 13


def test_asking_again_for_an_unchanged_grid_writes_no_new_png(shared_workspace, trained_run):

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    run = shared_workspace.runs / "grid-run"
    copy_trained_run(trained_run, run)
    eight = str(run / "checkpoints" / "step-000008.safetensors")
    form = ["tiny-flux", "a cube", "1", "1.0", False, 64, 1, None]
    quiet = {"progress": lambda *a, **k: None}
    grids = run / "review" / "grids"

    image, file, status = review.make_grid(context, "grid-run", [eight], *form, **quiet)
    assert image == file and "1 generated" in status and f"Saved as `{image}`" in status
    assert sorted(grids.iterdir()) == [grids / image.rsplit("/", 1)[-1]]
    again, _, status = review.make_grid(context, "grid-run", [eight], *form, **quiet)
    assert again == image and "0 generated, 1 from the cache" in status
    assert f"Unchanged: already saved as `{image}`" in status and len(list(grids.iterdir())) == 1
    other, _, status = review.make_grid(context, "grid-run", [eight], *form[:2], "1,2", *form[3:], **quiet)
    assert other != image and f"Saved as `{other}`" in status and len(list(grids.iterdir())) == 2
    # empty fields: the defaults are used (the run's sample seed, as its samples and Side by side use) and said
    seed = review.default_seed(context, "grid-run")[0]
    shown, _, status = review.make_grid(context, "grid-run", [eight], *form[:2], " ", "", *form[4:], **quiet)
    typed, _, _ = review.make_grid(context, "grid-run", [eight], *form[:2], str(seed), "1", *form[4:], **quiet)
    assert shown == typed and (f"from the cache. No seeds given: seed {seed} (the run's sample seed). "
                               "No strengths given: strength 1.  \nUnchanged: already saved as") in status
    assert review.defaults_said("3", "0.5") == "" and review.default_seed(context, "") == (1, "")
    grid, png, status = review.make_grid(context, "grid-run", [eight], *form[:3], "0.8, 3", *form[4:], **quiet)
    assert status == "**Strengths go from -1 to 2, as on Sketch's sliders; 3 is outside.**"
    assert grid == png == {"__type__": "update"}  # the last grid stays on screen


def dependencies(demo, block, event):
    """The event handlers wired to `block`'s `event`."""
    return [fn for fn in demo.fns.values() if (block._id, event) in fn.targets]


def built_review(context):
    import gradio as gr

    with gr.Blocks() as demo:
        built = review.build(context)
    blocks = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    return demo, built, blocks


def test_side_by_side_prompt_comes_from_the_run_and_its_note_says_prompt_and_seed(shared_workspace, trained_run):
    """Picking a run fills Side by side's Prompt with the run's first sample prompt (as the grid's Prompts), and
    Compare's note says which prompt (shortened) and seed it used; an empty prompt is allowed and said."""
    from blk.generate.review import run_review_defaults

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    run = shared_workspace.runs / "compare-run"
    copy_trained_run(trained_run, run)
    first = run_review_defaults(run)["prompts"][0]
    demo, _, blocks = built_review(context)
    picked, = dependencies(demo, blocks["blk-review-run"], "change")
    sent = dict(zip((getattr(o, "label", None) for o in picked.outputs), picked.fn("compare-run", [])))
    assert sent["Prompt"] == first and sent["Prompts (columns, one per line)"].startswith(first)

    eight, twelve = (str(run / "checkpoints" / f"step-{s:06d}.safetensors") for s in (8, 12))
    form = ["tiny-flux", "", "1", "1.0", False, 64, 1, None]
    quiet = {"progress": lambda *a, **k: None}
    images, note = review.compare(context, "compare-run", eight, twelve, "", 5, *form, **quiet)
    assert images is not None and note == "Left: **A** (step 8) · right: **B** (step 12) — empty prompt, seed 5."
    long = "blkstyle, a *floating* cube over a quiet harbour at dawn, thin ink lines, wide margins"
    _, note = review.compare(context, "compare-run", eight, twelve, long, 2, *form, **quiet)
    assert note == ("Left: **A** (step 8) · right: **B** (step 12) — "
                    "“blkstyle, a \\*floating\\* cube over a quiet harbour at dawn…”, seed 2.")


def test_opening_review_chooses_the_newest_run_when_none_is_chosen(workspace):
    """A run trained after the page loaded (with no run then) is chosen when the tab is opened again, as on page
    load; a run the artist chose stays chosen."""
    from ui.app import build_app

    context = StudioContext(workspace, demo=True, demo_reason="test")
    assert review.on_load(context).value is None
    fake_run(workspace, "older", [4], age=600)
    fake_run(workspace, "trained-now", [4], age=10)
    demo = build_app(context)
    run = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-review-run")
    tab = next(b for b in demo.blocks.values() if type(b).__name__ == "Tab" and b.label == "Review")
    chooser, = [fn for fn in dependencies(demo, tab, "select") if fn.outputs == [run]]
    assert chooser.inputs[0] is run and len(chooser.inputs) == 2  # the run and the loose LoRA files
    assert chooser.fn(None, []).value == "trained-now"
    assert chooser.fn("older", []) == {"__type__": "update"}  # the artist's choice stays
    assert chooser.fn(None, ["models/loras/loose.safetensors"]) == {"__type__": "update"}  # a loose-file review too


def test_a_pick_after_a_finished_blind_test_keeps_the_tally(shared_workspace, trained_run):
    """Pressing a pick button after "Done." says the test is finished and repeats the tally; nothing is recorded."""
    from blk.generate.blind import BlindPair

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    run = shared_workspace.runs / "done-run"
    copy_trained_run(trained_run, run)
    eight, twelve = (str(run / "checkpoints" / f"step-{s:06d}.safetensors") for s in (8, 12))
    form = ["tiny-flux", "a cube", "3", "1.0", False, 64, 2, None]
    state = {"a": eight, "b": twelve, "pairs": [BlindPair("a cube", 3, False)], "index": 0, "shown": 0, "form": form}
    state, *_, done, chosen = review.pick(context, "done-run", state, "left")
    tally = "Tally so far, saved with the run: step 8: 0 · step 12: 1 · ties: 0 — step 12 is preferred."
    assert done == f"Done. {tally}" and chosen == twelve
    saved = (run / "review" / "ab.json").read_bytes()
    for side in ("left", "tie", "right"):
        again, left, right, note, kept = review.pick(context, "done-run", state, side)
        assert note == f"This blind test is finished. {tally} Start a new test to judge more pairs."
        assert (left, right, kept) == ({"__type__": "update"},) * 3 and again == state
    assert (run / "review" / "ab.json").read_bytes() == saved


def test_long_jobs_grey_their_button_while_they_run_and_give_it_back_however_they_end(workspace):
    """A click during a job was dropped without a word: each long job's button now says it is working."""
    from ui.app import build_app

    demo = build_app(StudioContext(workspace, demo=True, demo_reason="test"))
    fns = list(demo.fns.values())
    buttons = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    busy_labels = {"blk-sketch-generate": "Generating…", "blk-stencil-generate": "Generating…",
                   "blk-review-grid": "Making the grid…", "blk-review-compare": "Comparing…",
                   "blk-upscale-go": "Upscaling…"}
    for elem_id, busy_label in busy_labels.items():
        button = buttons[elem_id]
        clicked = [f for f in fns if (button._id, "click") in f.targets]
        assert len(clicked) == 1 and clicked[0].outputs == [button], elem_id  # the click greys the button first
        session = SimpleNamespace(session_hash=f"window-{elem_id}")  # what Gradio passes as gr.Request
        busy = clicked[0].fn(session)
        assert busy.interactive is False and busy.value == busy_label
        job = next(f for f in fns if f.trigger_after == clicked[0]._id)
        after = [f for f in fns if f.trigger_after == job._id and button in f.outputs]
        # Gradio runs `.then` after a job that returned (finished, cancelled, a sentence) and `.failure` after
        # one that raised or whose inputs could not be read (a damaged upload): the button comes back after both
        assert sorted(f.trigger_only_on_failure for f in after) == [False, True], elem_id
        assert not any(f.trigger_only_on_success for f in after)
        for restore in after:
            idle = restore.fn(session)
            assert idle.interactive is True and idle.value == button.value


def test_the_lora_pickers_start_empty_though_loras_exist(shared_workspace, trained_run, tmp_path):
    """Gradio selects a dropdown's first choice unless told otherwise: Sketch and Stencil showed the newest
    checkpoint in the picker, not added, so the artist believed it was used (the PNG said no LoRA)."""
    from blk.workspace import Workspace
    from ui.app import build_app

    workspace = Workspace(tmp_path / "workspace")
    copy_trained_run(trained_run, workspace.runs / "tower")
    demo = build_app(StudioContext(workspace, demo=True, demo_reason="test"))
    pickers = [b for b in demo.blocks.values() if str(getattr(b, "elem_id", "")).endswith("-lora-pick")]
    assert {p.elem_id for p in pickers} == {"blk-sketch-lora-pick", "blk-stencil-lora-pick"}
    for picker in pickers:
        assert picker.choices and picker.value is None, picker.elem_id


def test_a_and_b_may_be_the_base_model(shared_workspace, trained_run):
    """A run with one checkpoint left A empty ("Choose checkpoints A and B"); it is compared with the base model,
    in Side by side and in a blind test, where a win of the base model chooses nothing to keep."""
    from blk.generate.blind import BlindPair

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    run = shared_workspace.runs / "one-checkpoint-run"
    copy_trained_run(trained_run, run)
    for step in (4, 8):
        (run / "checkpoints" / f"step-{step:06d}.safetensors").unlink()
    twelve = str(run / "checkpoints" / "step-000012.safetensors")
    updates = review.on_run(context, "one-checkpoint-run", [])
    a, b = updates[8], updates[9]
    assert (a.value, b.value) == (review.BASE, twelve) and a.choices[0] == (review.BASE_LABEL, review.BASE)

    form = ["tiny-flux", "a cube", "3", "1.0", False, 64, 2, None]
    quiet = {"progress": lambda *a, **k: None}
    (left, right), note = review.compare(context, "one-checkpoint-run", review.BASE, twelve, "a cube", 3, *form,
                                         **quiet)
    assert note == "Left: **A** (base (no LoRA)) · right: **B** (step 12) — “a cube”, seed 3."
    base_pixels, lora_pixels = (np.asarray(Image.open(path)) for path in (left, right))
    assert base_pixels.shape == lora_pixels.shape and not np.array_equal(base_pixels, lora_pixels)
    (again, _), _ = review.compare(context, "one-checkpoint-run", review.BASE, review.BASE, "a cube", 3, *form, **quiet)
    assert np.array_equal(np.asarray(Image.open(again)), base_pixels)  # the same base cell

    state = {"a": review.BASE, "b": twelve, "pairs": [BlindPair("a cube", 3, True)], "index": 0, "shown": 0,
             "form": form}
    _, left_after, right_after, sentence, chosen = review.pick(context, "one-checkpoint-run", state, "left")
    assert left_after == right_after == {"__type__": "update"}  # the pair judged last stays in view
    assert sentence == ("Done. Tally so far, saved with the run: base (no LoRA): 1 · step 12: 0 · ties: 0 — "
                        "base (no LoRA) is preferred.")
    assert chosen == {"__type__": "update"}  # nothing to pin or export


def test_a_model_held_on_a_gpu_is_let_go_before_training_or_captioning_start(shared_workspace):
    """The captioning server, a training run and its probe are other processes on the same GPU: the model Sketch
    keeps loaded (FLUX: about 24 GB) is let go first, and said; on the CPU nothing is let go."""
    from blk.models.registry import resolve

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    loaded = context.sketcher.cache.get(resolve("tiny-flux", shared_workspace), device="cpu")
    context.stenciler._modules["decoder"] = object()
    assert context.release_gpu("the training run") == ""
    assert context.sketcher.cache.held() == ("tiny-flux", "cpu") and context.stenciler._modules
    loaded.device = "cuda:0"  # where a workstation holds it
    with context.sketcher.lock:  # an image being made: its run would keep the model alive anyway
        assert context.release_gpu("the training run") == (
            "The tiny-flux model stays on cuda:0 while an image is being made; the training run shares the GPU "
            "with it until it ends.")
    assert context.sketcher.cache.held() == ("tiny-flux", "cuda:0")
    assert context.release_gpu("the training run") == (
        "The tiny-flux model that Sketch, Review, Stencil and Upscale share was let go from cuda:0, to leave the "
        "GPU to the training run; the next image loads it again.")
    assert context.sketcher.cache.held() is None and not context.stenciler._modules
    assert context.release_gpu("the captioner") == ""  # nothing held any more
