"""The Caption tab's handlers with a real context, called as Gradio calls them: few-shot buttons without a
clicked image, switching datasets, the dataset list, creating a dataset, cancel, the wording, and the Words
panel (counts, filtering the grid by a term, counted again after every caption change)."""

import shutil
import threading
import time

import gradio as gr
import pytest
from PIL import Image

from blk.caption.job import NO_CAPTIONER, resolve_vlm
from blk.caption.style import dataset_style_path, promote_example
from blk.data.captions import CaptionStore
from blk.errors import UserError
from blk.workspace import Workspace
from ui.context import StudioContext
from ui.tabs import caption
from ui.tabs.caption import captioning, grid

QUERY = ("all", "", False, "name", False, 1, 50)  # status, text, regex, sort, descending, page, page size
TRANSFORMERS = "transformers, in this process (slow, no server)"


@pytest.fixture(scope="module")
def models(shared_workspace):
    resolve_vlm("tiny-vlm", shared_workspace)
    return shared_workspace.models


@pytest.fixture
def context(tmp_path, models):
    workspace = Workspace(tmp_path / "workspace")
    shutil.copytree(models, workspace.models, dirs_exist_ok=True)
    return StudioContext(workspace, demo=True, demo_reason="test")


def make_dataset(context, name, count=2, caption="a red circle"):
    folder = context.workspace.datasets / name
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (24, 24), (200, 20 * i, 20)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return folder


def is_unchanged(update) -> bool:
    return isinstance(update, dict) and set(update) == {"__type__"}


def test_few_shot_buttons_without_a_clicked_image_or_number_say_one_sentence(context):
    folder = make_dataset(context, "inks")
    store = CaptionStore(folder)
    store.approve("img0.png", store.read("img0.png").hash)
    promote_example(folder, "img0.png")
    before = dataset_style_path(folder).read_bytes()

    with pytest.warns(UserWarning, match="^Click an image in the grid first"):
        assert is_unchanged(captioning.example_action(context, "inks", "promote", 0, None))  # the table stays
    for action in ("up", "down", "drop"):
        with pytest.warns(UserWarning, match="^Type the example's number"):
            assert is_unchanged(captioning.example_action(context, "inks", action, None, "img0.png"))
    with pytest.warns(UserWarning, match="^Choose a dataset first"):
        assert is_unchanged(captioning.example_action(context, None, "promote", 0, "img0.png"))
    assert dataset_style_path(folder).read_bytes() == before
    with pytest.raises(UserError, match="Choose an image"):
        promote_example(folder, None)  # the engine says it too (the CLI and any caller)
    assert captioning.example_action(context, "inks", "drop", 1, None) == []  # a number is all Drop needs (from 1)


def test_switching_datasets_clears_the_editor_and_the_bulk_preview(context):
    a, b = make_dataset(context, "a"), make_dataset(context, "b")  # same names, same captions
    *_, editing = grid.view(context, "a", "img0.png")
    _, pending, _ = grid.bulk_preview(context, "a", "the whole dataset", [], "affix", "", "", False, False, "",
                                      ", ink", "")
    assert editing["dataset"] == "a" and pending["dataset"] == "a"

    table, rows, summary, page, selected, picture, text, title, versions, editing_now, view_note, preview, \
        pending_now, bulk_note, word_filter, term_choice = grid.switch_dataset(context, "b", *QUERY, "circle")
    assert [row[0] for row in table] == ["img0.png", "img1.png"] and {r["dataset"] for r in rows} == {"b"}
    assert (selected, picture, text, title, editing_now) == (None, None, "", "", None)
    assert (preview, pending_now, view_note, bulk_note) == ([], None, "", "")
    assert word_filter is None and term_choice.value is None and term_choice.choices == []  # nothing left of a's terms
    assert "with “" not in summary
    assert grid.editor_action(context, editing_now, "typed after the switch", "save", None) == \
        "**Click an image in the grid first.**"
    assert grid.bulk_apply(context, pending_now) == "Preview a bulk edit first."
    assert (b / "img0.txt").read_text() == "a red circle" and CaptionStore(b).versions("img0.png") == []
    assert (a / "img0.txt").read_text() == "a red circle"  # the dropped preview was never applied to a either


def test_a_save_goes_into_the_dataset_its_text_came_from(context):
    a, b = make_dataset(context, "a"), make_dataset(context, "b")
    table, rows, *_ = grid.load_page(context, "a", *QUERY)
    *_, editing = grid.view(context, "a", "img1.png")
    _, pending, _ = grid.bulk_preview(context, "a", "rows shown", rows, "replace", "red", "blue", False, False, "",
                                      "", "")
    table[0][1] = "edited in the grid of a"
    # the dropdown says b by now: the edits still came from a, and go there
    assert grid.save_edits(context, "b", table, rows) == "Saved 1 caption(s)."
    assert grid.editor_action(context, editing, "edited in the large view of a", "save", None) == "Saved img1.png."
    assert (a / "img0.txt").read_text() == "edited in the grid of a"
    assert (a / "img1.txt").read_text() == "edited in the large view of a"
    assert grid.bulk_apply(context, pending).startswith("Applied to 0 caption(s) in a")  # both changed meanwhile
    for image in ("img0.png", "img1.png"):
        assert (b / image.replace(".png", ".txt")).read_text() == "a red circle"
        assert CaptionStore(b).versions(image) == []  # no refused version in b's history either
    _, pending, _ = grid.bulk_preview(context, "b", "the whole dataset", [], "affix", "", "", False, False, "",
                                      ", ink", "")
    assert grid.bulk_apply(context, pending).startswith("Applied to 2 caption(s) in b")
    assert (b / "img0.txt").read_text() == "a red circle, ink" and (a / "img1.txt").read_text() == \
        "edited in the large view of a"


def listeners(demo, component, trigger):
    return [f for f in demo.fns.values() if (component._id, trigger) in f.targets
            or (trigger == "load" and any(t[1] == "load" for t in f.targets) and component in f.outputs)]


def test_the_dataset_list_starts_unchosen_and_is_fresh_when_the_tab_is_shown(context):
    from ui.app import build_app

    make_dataset(context, "inks")
    demo = build_app(context)
    tab = next(b for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.label == "Caption")
    dataset = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-caption-dataset")
    assert dataset.value is None  # nothing preselected while the grid is still empty
    make_dataset(context, "inks-alpha")  # made elsewhere (Stencil's ink to alpha) after the page was built
    token_model = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-caption-token-model")
    for event in (listeners(demo, tab, "select"), listeners(demo, dataset, "load")):
        assert len(event) == 1 and event[0].outputs[0] == dataset
        sent = event[0].fn()  # what Gradio sends to the page
        sent = sent if isinstance(sent, tuple) else (sent,)
        assert sent[0].constructor_args == {"choices": ["inks", "inks-alpha"]}  # no value: the choice made stays
    shown = listeners(demo, tab, "select")[0]  # opening the tab also lists base models added since
    assert shown.outputs == [dataset, token_model]
    assert shown.fn()[1].constructor_args == {"choices": ["tiny-flux", "tiny-sdxl"]}


def test_creating_a_dataset_empties_the_name_field(context, tmp_path):
    picture = tmp_path / "red.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(picture)
    chosen, note, uploads, name = caption.create_or_add(context, "reds", None, [str(picture)])
    assert chosen.value == "reds" and name == "" and uploads is None
    chosen, note, _, name = caption.create_or_add(context, "", "reds", [str(picture)])  # the next add goes in
    assert "reds" in note and is_unchanged(name)
    assert "Already in the dataset with the same content" in note  # the same picture is not a second image
    assert len(list((context.workspace.datasets / "reds").glob("*.png"))) == 1
    _, note, _, name = caption.create_or_add(context, "reds", "reds", [str(picture)])
    assert "already exists" in note and is_unchanged(name)  # a refused name stays to be corrected


def test_an_empty_model_field_is_tiny_vlm_in_demo_mode_only(context):
    """Outside demo mode an empty Model field would have written random words into a real dataset."""
    make_dataset(context, "inks")
    real = StudioContext(context.workspace, demo=False, demo_reason="")
    for studio in (real, context):
        said = list(captioning.run_batch(studio, "inks", TRANSFORMERS, "  ", "", "all", True, 1))
        if studio is real:
            assert said == [f"**{NO_CAPTIONER} Type it in Model.**"]
            assert captioning.server_action(real, "start", "") == f"**{NO_CAPTIONER} Type it in Model.**"
            assert (context.workspace.datasets / "inks" / "img0.txt").read_text() == "a red circle"  # untouched
        else:
            assert "Captioned 2" in said[-1], said[-1]
    assert (context.workspace.datasets / "inks" / "img0.txt").read_text() != "a red circle"


def test_cancel_answers_and_the_batch_still_ends_with_its_own_status(context):
    make_dataset(context, "inks", count=6, caption="")
    for txt in (context.workspace.datasets / "inks").glob("*.txt"):
        txt.unlink()
    assert context.captioning.cancel_batch() == "No caption batch is running."
    lines = captioning.run_batch(context, "inks", TRANSFORMERS, "tiny-vlm", "", "missing", False, 1)
    assert next(lines) == "Preparing the model and the examples…"
    deadline = time.time() + 60
    while not context.captioning.running and time.time() < deadline:
        time.sleep(0.01)
    assert context.captioning.cancel_batch().startswith("Cancelling…")
    rest: list[str] = []
    drain = threading.Thread(target=lambda: rest.extend(lines))
    drain.start()
    drain.join(timeout=300)
    assert "Stopped early: Stopped by the user." in rest[-1] and "failed 0" in rest[-1]
    assert not context.captioning.running
    assert len(list((context.workspace.datasets / "inks").glob("*.txt"))) < 6  # it did stop


def test_labels_say_which_images(context):
    with gr.Blocks() as demo:
        caption.build(context)
    buttons = [b.value for b in demo.blocks.values() if isinstance(b, gr.Button)]
    assert "Promote the clicked image (approved caption)" in buttons
    mode = next(b for b in demo.blocks.values() if isinstance(b, gr.Radio) and b.label == "Caption")
    assert ("images shown in the grid", "selected") in mode.choices
    assert not [label for label, _ in mode.choices if label == "selected"]
    assert not [text for text in buttons if "selected" in str(text)]


def words_dataset(context):
    folder = context.workspace.datasets / "words"
    folder.mkdir(parents=True)
    captions = {"a.png": "blkstyle, red hair, smiling", "b.png": "blkstyle, Red Hair, frekles",
                "c.png": "red hair, smiling", "d.png": None, "e.png": "A red umbrella in the rain."}
    for i, (image, text) in enumerate(captions.items()):
        Image.new("RGB", (24, 24), (200, 20 * i, 20)).save(folder / image)
        if text is not None:
            (folder / image).with_suffix(".txt").write_text(text)
    return folder


def test_the_words_panel_counts_terms_and_filters_the_grid_by_one(context):
    from blk.caption.style import CaptionStyle, PostProcess, save_style

    folder = words_dataset(context)
    save_style(CaptionStyle(post=PostProcess(trigger="blkstyle")), dataset_style_path(folder))
    summary, top, rare, choices = grid.word_panel(context, "words")
    assert top[:3] == [["red hair", "tag", 3, "75%"], ["blkstyle", "tag", 2, "50%"], ["smiling", "tag", 2, "50%"]]
    assert rare == [["frekles", "tag", "b.png"], ["rain", "word", "e.png"], ["red", "word", "e.png"],
                    ["umbrella", "word", "e.png"]]  # "red umbrella", a phrase of one caption, is neither
    assert "**4 caption(s)**: 3 read as tags, 1 as prose; 1 image(s) without a caption: d.png." in summary
    assert "Trigger word “blkstyle” (the caption style's): in 2 of 4 captions; without it: c.png, e.png." in summary
    assert choices.constructor_args["choices"][:2] == ["red hair", "blkstyle"] and "frekles" in \
        choices.constructor_args["choices"]

    table, rows, summary, page, term, picker = grid.filter_by_word(context, " Red  HAIR ", "words", "all", "", False,
                                                                   "name", False, 2, 2)  # was on page 2
    assert [row[0] for row in table] == ["a.png", "b.png"] and page == 1  # from the first page
    assert [r["image"] for r in rows] == ["a.png", "b.png"] and term == "red hair"
    assert picker == gr.update(value="red hair") and "Page 1 of 2 — 3 matching with “red hair”" in summary
    table, *_ = grid.load_page(context, "words", "all", "smil", False, "name", False, 1, 50, term)  # with the text
    assert [row[0] for row in table] == ["a.png", "c.png"]
    table, _, summary, _, term, picker = grid.filter_by_word(context, None, "words", *QUERY)  # Show all captions
    assert len(table) == 5 and term is None and picker == gr.update(value=None) and "with “" not in summary
    assert grid.filter_by_word(context, "frekles", "words", *QUERY)[0][0][0] == "b.png"  # a rare one: its image

    assert grid.word_panel(context, None)[0] == "Choose a dataset to see how its captions use words."
    assert grid.word_panel(context, "../outside")[1:3] == ([], [])


def test_the_words_panel_is_counted_again_after_an_edit_and_a_bulk_apply_and_only_while_open(context):
    words_dataset(context)
    assert all(is_unchanged(update) for update in grid.refresh_words(context, False, "words"))  # closed
    table, rows, *_ = grid.load_page(context, "words", *QUERY)
    table[1][1] = "blkstyle, red hair, freckles"  # the typo corrected in the grid
    assert grid.save_edits(context, "words", table, rows) == "Saved 1 caption(s)."
    _, top, rare, _ = grid.refresh_words(context, True, "words")
    assert ["freckles", "tag", "b.png"] in rare and not [r for r in rare if r[0] == "frekles"]
    _, pending, _ = grid.bulk_preview(context, "words", "the whole dataset", [], "replace", "red hair", "auburn hair",
                                      False, True, "", "", "")
    assert grid.bulk_apply(context, pending).startswith("Applied to 3 caption(s)")
    _, top, _, _ = grid.refresh_words(context, True, "words")
    counts = {row[0]: row[2] for row in top}
    assert counts["auburn hair"] == 3 and "red hair" not in counts


def test_every_change_of_captions_or_of_the_trigger_word_counts_the_words_again(context):
    with gr.Blocks() as demo:
        caption.build(context)
    blocks = list(demo.blocks.values())

    def by_id(elem_id):
        return next(b for b in blocks if getattr(b, "elem_id", None) == elem_id)

    table, words_summary, panel = by_id("blk-caption-grid"), by_id("blk-words-summary"), by_id("blk-words")
    pickers = {by_id(name)._id for name in ("blk-words-top", "blk-words-rare", "blk-words-term", "blk-words-all")}
    fns = list(demo.fns.values())
    grid_shown = [f for f in fns if table in f.outputs and not {t[0] for t in f.targets if t} & pickers
                  and f.outputs != [table]]  # (that one only makes the table editable when it has rows)
    assert len(grid_shown) >= 9  # Show, a dataset chosen, a batch, Save edits, Save/Approve/Restore, Apply, Undo
    for f in grid_shown:
        after = [g for g in fns if g.trigger_after == f._id]
        assert [g for g in after if words_summary in g.outputs], f.name
    opened = [f for f in fns if (panel._id, "expand") in f.targets]
    assert len(opened) == 1 and words_summary in opened[0].outputs
    assert not panel.open  # closed until asked for
    style_saved = next(f for f in fns if f.api_name == "caption_style_save")  # the trigger word may be new
    assert [g for g in fns if g.trigger_after == style_saved._id and words_summary in g.outputs]
    # the few-shot examples' text follows their captions: shown again after each of those changes too
    examples = by_id("blk-caption-examples")
    chained = [f for f in grid_shown if f.trigger_after is not None]  # Save edits, Save/Approve/Restore, Apply…
    assert len(chained) >= 7
    for f in chained:
        assert [g for g in fns if g.trigger_after == f.trigger_after and examples in g.outputs], f.name


def test_a_bulk_edit_reaches_the_few_shot_examples_and_its_undo_too(context):
    """An example shows its image's caption as it reads now: renaming the trigger word in bulk renamed it in
    the examples the model is shown (they kept the old word, and taught it back)."""
    folder = make_dataset(context, "fs", count=2, caption="oldword, a red circle")
    store = CaptionStore(folder)
    store.approve("img0.png", store.read("img0.png").hash)
    promote_example(folder, "img0.png")
    _, pending, _ = grid.bulk_preview(context, "fs", "the whole dataset", [], "replace", "oldword", "newword",
                                      False, True, "", "", "")
    assert grid.bulk_apply(context, pending) == (
        "Applied to 2 caption(s) in fs; undo is available. 1 of them was approved and is now *edited*: check and "
        "approve again (Status › edited lists them).")
    assert captioning.examples_rows(context, "fs") == [["1", "img0.png", "newword, a red circle"]]
    assert grid.bulk_undo(context, "fs") == "Undone for 2 caption(s)."
    assert captioning.examples_rows(context, "fs") == [["1", "img0.png", "oldword, a red circle"]]
    assert captioning.examples_rows(context, "") == []


def test_history_shows_a_version_before_restoring_it_and_names_edits_and_approvals(context):
    """Choosing a History version shows its whole text (Restore then puts it back); the list says edited and
    approved, not the source twice; moving to another image clears the last image's note."""
    folder = make_dataset(context, "h", count=2, caption="a red circle")
    store = CaptionStore(folder)
    first = store.read("img0.png")
    edited = store.save("img0.png", "a red circle, thin ink line", first.hash)
    store.approve("img0.png", edited.hash)
    _, _, _, versions, editing = grid.view(context, "h", "img0.png")
    labels = [label for label, _ in versions.choices]
    assert [label.split(" — ")[1] for label in labels] == ["approved", "edited", "edited (found on disk)"], labels
    import re

    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d — ", label) for label in labels), labels  # not ISO's T…+0000
    oldest = versions.choices[-1][1]
    note = grid.preview_version(context, editing, oldest)
    assert "edited (found on disk):** a red circle  \n*Restore this version* puts it back." in note
    assert grid.preview_version(context, editing, None) == "" and grid.preview_version(None, None, oldest) == ""
    assert "no longer in the history" in grid.preview_version(context, editing, "0123456789ab")

    with gr.Blocks() as demo:
        caption.build(context)
    view_notes = [c for c in demo.blocks.values() if isinstance(c, gr.Markdown)]
    history = next(c for c in demo.blocks.values() if getattr(c, "label", None) == "History (newest first)")
    previewers = listeners(demo, history, "input")
    assert len(previewers) == 1 and previewers[0].outputs[0] in view_notes
    note_box = previewers[0].outputs[0]
    selected = [f for f in demo.fns.values() if note_box in f.outputs and len(f.outputs) == 1 and not f.inputs]
    assert selected and selected[0].fn() == ""  # a new image clears it


def test_the_grid_shows_thumbnails_of_its_page_and_a_click_opens_one(context):
    """The page's images as small thumbnails in the grid's order; clicking one opens that image in the large view
    (found by its name: a file that cannot be read has no thumbnail, so positions may differ from rows)."""
    folder = make_dataset(context, "t", count=3)
    _, rows, *_ = grid.load_page(context, "t", *QUERY)
    *_, shown = grid.page_thumbnails(context, rows)
    assert [name for _, name in shown] == ["img0.png", "img1.png", "img2.png"]
    for path, name in shown:
        with Image.open(path) as im:
            assert max(im.size) <= grid.THUMBNAIL_SIZE
            source = Image.open(folder / name).convert("RGB").resize(im.size)
            assert im.convert("RGB").getpixel((0, 0)) == source.getpixel((0, 0))  # that image, not another
    assert list(grid.page_thumbnails(context, [])) == [[]]
    assert grid.thumbnail_image(rows, {"image": {"path": shown[1][0]}, "caption": "img1.png"}) == "img1.png"
    assert grid.thumbnail_image(rows, {"caption": "elsewhere.png"}) is None and grid.thumbnail_image(rows, None) is None

    with gr.Blocks() as demo:
        caption.build(context)
    strip = next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "blk-caption-thumbs")
    rows_states = [f for f in demo.fns.values() if strip in f.outputs]
    assert len(rows_states) == 1 and rows_states[0].targets[0][1] == "change"
    assert rows_states[0].fn.__code__.co_flags & 0x20  # a generator: Gradio shows each batch as it comes
    assert len(listeners(demo, strip, "select")) == 1


def test_a_page_of_new_thumbnails_arrives_in_batches_in_the_grids_order(context, monkeypatch):
    make_dataset(context, "many", count=23)
    _, rows, *_ = grid.load_page(context, "many", *QUERY)
    batches = list(grid.page_thumbnails(context, rows))
    assert [len(batch) for batch in batches] == [10, 20, 23]  # every 10 made, then all
    assert [name for _, name in batches[-1]] == [row["image"] for row in rows]  # made 2 at a time, kept in order
    assert batches[0] == batches[-1][:10]


def test_the_grid_shows_the_captions_drifting_from_the_examples_with_how(context):
    from blk.caption.style import CaptionStyle, Example, save_style

    folder = make_dataset(context, "drift", count=3, caption="ink cube, cross-hatching, paper")
    (folder / "img1.txt").write_text("This image shows a cube drawn in ink on paper")
    query = ("drifting",) + QUERY[1:]
    table, rows, summary, _ = grid.load_page(context, "drift", *query)
    assert table == [] and "no few-shot examples, so no caption can drift" in summary
    save_style(CaptionStyle(examples=[Example(image="img0.png", caption="ink cube, cross-hatching, paper")]),
               dataset_style_path(folder))
    table, rows, summary, _ = grid.load_page(context, "drift", *query)
    assert [(row[0], row[2]) for row in table] == [
        ("img1.png", "edited: prose where the examples are tags; opens with “This image shows”, which no example does")]
    assert "1 matching" in summary and "**" not in summary and rows[0]["image"] == "img1.png"
    assert ("drifting from the examples", "drifting") in grid.STATUSES


def test_tokens_are_counted_for_the_model_chosen_in_the_grid_and_the_check(context):
    """A curator training SDXL saw Flux's budgets (T5 512) and its counts: "Count tokens for" picks the model
    whose tokenizers count, in the grid and the check; a page load shows the model in use."""
    from tests.test_models import page_load_outputs
    from ui.app import build_app
    from ui.tabs.caption import check

    make_dataset(context, "budget", count=1, caption="ink " * 100)  # over CLIP's 77, under T5's 512
    assert caption.base_model_names(context) == ["tiny-flux", "tiny-sdxl"]
    assert context.captioning.token_model_name() == "tiny-flux"  # the default model until one is chosen
    table, _, summary, _ = grid.load_page(context, "budget", *QUERY)
    assert "Tokens per text encoder: CLIP-L (/77) · T5-XXL (/512), counted by tiny-flux's demo tokenizers" in summary
    assert " · " in table[0][3] and "/" not in table[0][3]  # "46 / 45" read as 46 of 45 allowed
    assert table[0][4] == "⚠ over" and "a real model's count far fewer" in summary
    assert grid.demo_tokens_note("flux-dev") == ""
    flux_counts = table[0][3]
    grid.use_token_model(context, "tiny-sdxl")
    table, _, summary, _ = grid.load_page(context, "budget", *QUERY)
    assert "Tokens per text encoder: CLIP-L (/77) · OpenCLIP-bigG (/77), counted by tiny-sdxl's" in summary
    assert table[0][3] != flux_counts
    report = check.check(context, "budget", "", progress=lambda *a, **k: None)[0]
    assert "tokens counted for tiny-sdxl" in report and "OpenCLIP-bigG" in report and "T5" not in report
    assert page_load_outputs(build_app(context))["blk-caption-token-model"]() == "tiny-sdxl"
    grid.use_token_model(context, None)
    assert context.captioning.token_model_name() == "tiny-flux"


def test_the_grid_is_editable_only_with_rows_to_edit(context):
    """An empty editable table offered "+" rows and "drop a CSV" to a dataset with no images yet."""
    from ui.app import build_app

    demo = build_app(context)
    table = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-caption-grid")
    assert table.interactive is False
    follow = [f for f in demo.fns.values() if f.outputs == [table] and len(f.inputs) == 1]
    assert len(follow) == 1 and [t[1] for t in follow[0].targets] == ["change"]
    assert follow[0].fn([{"image": "a.png"}]).constructor_args == {"interactive": True}
    assert follow[0].fn([]).constructor_args == {"interactive": False}


def test_saving_the_style_says_its_trigger_word(context):
    from blk.caption.style import CaptionStyle, PostProcess
    from ui.tabs.caption.captioning import saved_style_note

    said = saved_style_note(CaptionStyle(post=PostProcess(trigger="mira_ink")))
    assert said == ("Style saved with the dataset: 0 example(s), trigger word “mira_ink” (prefix; Check and Train's "
                    "sample prompts use it), transparent pixels shown on grey.")
    assert "no trigger word" in saved_style_note(CaptionStyle(post=PostProcess(trigger="x", trigger_mode="none")))


def test_the_backend_offered_first_is_one_that_runs_here(context, monkeypatch, tmp_path):
    """Without vLLM's environment the transformers backend is chosen (vLLM's first answer was how to install it);
    with it, the studio's own vLLM server."""
    monkeypatch.setenv("BLK_VLLM_VENV", str(tmp_path / "none"))
    monkeypatch.delenv("BLK_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(context.workspace.settings, "vllm_python", None)
    assert captioning.default_backend(context) == TRANSFORMERS
    python = tmp_path / "vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    monkeypatch.setenv("BLK_VLLM_PYTHON", str(python))
    assert captioning.default_backend(context) == "vLLM, started by the studio"
