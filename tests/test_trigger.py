"""A dataset's trigger word, set once in its caption style: Check checks it, Train's sample prompts use it."""

import gradio as gr
import pytest
from PIL import Image

from blk.caption.style import CaptionStyle, PostProcess, dataset_style_path, save_style
from blk.data.check import check_dataset
from blk.data.trigger import leading_word, style_trigger, with_trigger
from ui.context import StudioContext
from ui.tabs import train

PRESET = ["blkstyle, a cube, medium line, [FG]", "blkstyle, a stylized cloud, thin line, [BG-overlay]"]


def dataset_with_trigger(folder, trigger, mode="prefix", captions=("x, a cube", "a cloud")):
    folder.mkdir(parents=True)
    for i, caption in enumerate(captions):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption.replace("x", trigger), encoding="utf-8")
    save_style(CaptionStyle(post=PostProcess(trigger=trigger, trigger_mode=mode)), dataset_style_path(folder))
    return folder


def test_the_style_trigger_is_the_one_the_captions_are_written_with(tmp_path):
    assert style_trigger(dataset_with_trigger(tmp_path / "a", "mira_ink")) == "mira_ink"
    assert style_trigger(dataset_with_trigger(tmp_path / "b", "mira_ink", mode="none")) == ""  # not written
    bare = tmp_path / "c"
    bare.mkdir()
    assert style_trigger(bare) == ""
    damaged = dataset_with_trigger(tmp_path / "d", "ink")
    dataset_style_path(damaged).write_text("post: [unclosed", encoding="utf-8")
    assert style_trigger(damaged) == ""  # the Caption tab reports a damaged style; no word here


def test_a_preset_word_is_replaced_and_the_artists_own_prompts_are_not():
    assert leading_word(PRESET) == "blkstyle"
    assert leading_word(["a figure in a landscape, dusk"]) is None  # a phrase, not a trigger word
    assert with_trigger(PRESET, "mira_ink", "blkstyle") == [
        "mira_ink, a cube, medium line, [FG]", "mira_ink, a stylized cloud, thin line, [BG-overlay]"]
    own = ["portrait, a woman at dusk", "portrait, a man"]  # a shared first word, but not the trigger written
    assert with_trigger(own, "mira_ink", "blkstyle") == own
    assert with_trigger(["mira ink, a cube", "", "mira ink, a cloud"], "blk2", "mira ink") == [
        "blk2, a cube", "", "blk2, a cloud"]  # a trigger with a space, and an empty line kept
    assert with_trigger(PRESET, "", "blkstyle") == PRESET


def test_check_uses_the_caption_styles_trigger_unless_one_is_given(tmp_path):
    folder = dataset_with_trigger(tmp_path / "inks", "mira_ink")
    report = check_dataset(folder)
    assert report.trigger == "mira_ink" and report.trigger_from_style
    assert report.trigger_missing == ["1.png"]  # "a cloud" was written without it
    assert "Trigger word 'mira_ink' (the caption style's): in 1 of 2 captions" in report.to_text()
    given = check_dataset(folder, trigger="cube")
    assert given.trigger == "cube" and not given.trigger_from_style and given.trigger_missing == ["1.png"]
    assert "(the caption style's)" not in given.to_text()


@pytest.fixture
def context(workspace):
    return StudioContext(workspace, demo=True, demo_reason="test")


def test_train_sample_prompts_follow_the_chosen_datasets_trigger(context):
    datasets = context.workspace.datasets
    dataset_with_trigger(datasets / "inks", "mira_ink")
    dataset_with_trigger(datasets / "clay", "clay style")
    dataset_with_trigger(datasets / "plain", "", mode="none")
    text = "\n".join(PRESET)

    update, written = train.prompts_for_dataset(context, "inks", text, train.preset_trigger(text))
    assert update["value"].splitlines()[0] == "mira_ink, a cube, medium line, [FG]" and written == "mira_ink"
    update, written = train.prompts_for_dataset(context, "clay", update["value"], written)
    assert update["value"].splitlines() == ["clay style, a cube, medium line, [FG]",
                                            "clay style, a stylized cloud, thin line, [BG-overlay]"]
    # a dataset without a trigger leaves the prompts, and remembers what they start with for the next one
    kept, still = train.prompts_for_dataset(context, "plain", update["value"], written)
    assert kept == gr.update() and still == "clay style"
    again, _ = train.prompts_for_dataset(context, "inks", update["value"], still)
    assert again["value"].startswith("mira_ink, a cube")
    # the artist's own prompts stay as they wrote them
    own, _ = train.prompts_for_dataset(context, "inks", "portrait, a woman at dusk", "blkstyle")
    assert own == gr.update()
    missing, _ = train.prompts_for_dataset(context, "no such set", text, "blkstyle")
    assert missing == gr.update()


def test_the_dataset_and_preset_choices_rewrite_the_sample_prompts(context):
    with gr.Blocks() as demo:
        train.build(context, lambda: ["inks", "clay"])
    config = demo.get_config_file()
    name = {c["id"]: c["props"].get("label") for c in config["components"]}
    dataset = next(c for c in config["components"] if c["props"].get("label") == "Dataset")
    assert dataset["props"].get("value") is None  # a dataset chosen at build time never sent a change
    dataset_change = [d for d in config["dependencies"] for target, event in d["targets"]
                      if (name.get(target), event) == ("Dataset", "change")]
    assert any("Sample prompts (one per line)" in [name.get(o) for o in d["outputs"]] for d in dataset_change)
    preset_chain = [d for d in config["dependencies"] if d.get("trigger_after") is not None
                    and "Sample prompts (one per line)" in [name.get(o) for o in d["outputs"]]
                    and "Dataset" in [name.get(i) for i in d["inputs"]]]
    assert preset_chain  # after a preset fills the form, its prompts take the dataset's word


def test_bulk_edits_trigger_box_starts_with_the_datasets_trigger(context):
    from ui.tabs.caption import build as build_caption
    from ui.tabs.caption.grid import style_trigger_of

    dataset_with_trigger(context.workspace.datasets / "inks", "mira_ink")
    assert style_trigger_of(context, "inks") == "mira_ink"
    assert style_trigger_of(context, None) == "" and style_trigger_of(context, "../outside") == ""
    with gr.Blocks() as demo:
        build_caption(context)
    config = demo.get_config_file()
    label = {c["id"]: c["props"].get("label") for c in config["components"]}
    filled = [d for d in config["dependencies"] if [label.get(o) for o in d["outputs"]] == ["Trigger word"]]
    assert len(filled) == 2  # on choosing a dataset, and after its caption style is saved
