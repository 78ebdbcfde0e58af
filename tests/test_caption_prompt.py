"""Caption styles, the few-shot messages and post-processing (no model needed)."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blk.caption.postprocess import clean_caption
from blk.caption.prompt import build_messages, count_images, flatten, prepare_image
from blk.caption.style import CaptionStyle, Example, PostProcess, dataset_style, dataset_style_path, load_style, save_style
from blk.errors import UserError


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    Image.new("RGB", (800, 400), (200, 30, 30)).save(folder / "ex1.png")
    Image.new("RGB", (300, 600), (30, 200, 30)).save(folder / "ex2.jpg")
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 255), (0, 0, 32, 64))
    rgba.save(folder / "stencil.png")
    return folder


def decode(url):
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_messages_are_system_then_examples_then_target(dataset):
    style = CaptionStyle(examples=[Example(image="ex1.png", caption="a red field"),
                                   Example(image="ex2.jpg", caption="a green field")],
                         instruction="Caption it.", image_size=128)
    target = prepare_image(dataset / "stencil.png", style.image_size, style.background)
    messages = build_messages(style, dataset, target)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert count_images(messages) == 3
    assert messages[2]["content"][0]["text"] == "a red field"
    assert all(m["content"][-1]["text"] == "Caption it." for m in messages if m["role"] == "user")
    first = decode(messages[1]["content"][0]["image_url"]["url"])
    assert first.size == (128, 64)  # longest edge at the style's size
    again = build_messages(style, dataset, target)
    assert again[1] == messages[1] and again[3] == messages[3]  # identical prefix, byte for byte


def test_rgba_is_flattened_on_the_chosen_background(dataset):
    rgba = Image.open(dataset / "stencil.png")
    grey = np.asarray(flatten(rgba, "grey"))
    assert grey.shape == (64, 64, 3) and grey[0, 0].tolist() == [255, 255, 255] and grey[0, 63].tolist() == [128] * 3
    checker = np.asarray(flatten(rgba, "checkerboard"))
    assert {tuple(checker[0, 40]), tuple(checker[0, 56])} == {(204,) * 3, (153,) * 3}
    sent = decode("x," + base64.b64encode(prepare_image(dataset / "stencil.png", 512, "black")).decode())
    assert sent.mode == "RGB" and np.asarray(sent)[0, 63].tolist() == [0, 0, 0]


@pytest.mark.parametrize("raw, post, expected", [
    ("  This image shows a cube in ink.\n\nThin lines. ", PostProcess(), "A cube in ink. Thin lines."),
    ("The image depicts: two spheres", PostProcess(trigger="blkstyle"), "blkstyle, Two spheres"),
    ("blkstyle, a cloud", PostProcess(trigger="blkstyle"), "blkstyle, a cloud"),
    ("[trigger] cloud over hills", PostProcess(trigger="blkstyle", trigger_mode="placeholder"), "blkstyle cloud over hills"),
    ("a cloud\nover hills", PostProcess(one_line=False, strip_openings=[]), "a cloud\nover hills"),
])
def test_clean_caption(raw, post, expected):
    assert clean_caption(raw, post) == expected


def test_style_round_trip_and_bad_files(dataset, tmp_path):
    style = CaptionStyle(name="ink", examples=[Example(image="ex1.png", caption="a red field")])
    save_style(style, dataset_style_path(dataset))
    assert dataset_style(dataset) == style
    broken = tmp_path / "broken.yaml"
    broken.write_text("examples: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_style(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("sampling:\n  temperature: 9\n")
    with pytest.raises(UserError, match="sampling.temperature"):
        load_style(wrong)
    misplaced = tmp_path / "misplaced.yaml"  # the trigger belongs under post: it was ignored without a word
    misplaced.write_text("trigger: blkstyle\n")
    with pytest.raises(UserError, match="misplaced.yaml: trigger is not a setting here"):
        load_style(misplaced)
    with pytest.raises(UserError, match="is not a setting here"):  # a training preset is not a style
        load_style(Path(__file__).resolve().parents[1] / "presets" / "conceptor-flux-dev.yaml")


def test_presets_load():
    from pathlib import Path

    presets = sorted(Path("presets").glob("caption-*.yaml"))
    assert presets, "no caption presets"
    for preset in presets:
        style = load_style(preset)
        assert style.system_prompt and style.instruction


def test_examples_are_promoted_reordered_and_dropped(dataset):
    from blk.caption.style import drop_example, move_example, promote_example
    from blk.data.captions import CaptionStore

    store = CaptionStore(dataset)
    for name, text in (("ex1.png", "a red field"), ("ex2.jpg", "a green field")):
        saved = store.save(name, text, "")
        if name == "ex1.png":
            with pytest.raises(UserError, match="Approve the caption"):
                promote_example(dataset, name)
        store.approve(name, saved.hash)
        promote_example(dataset, name)
    assert [e.image for e in dataset_style(dataset).examples] == ["ex1.png", "ex2.jpg"]
    assert [e.image for e in move_example(dataset, 1, -1).examples] == ["ex2.jpg", "ex1.png"]
    assert [e.image for e in move_example(dataset, 0, -1).examples] == ["ex2.jpg", "ex1.png"]
    assert [e.caption for e in drop_example(dataset, 0).examples] == ["a red field"]
    assert [e.image for e in dataset_style(dataset).examples] == ["ex1.png"]



def test_an_example_follows_its_caption_and_keeps_its_text_when_the_file_is_gone(dataset):
    """What the model is shown is the example image's caption as it reads now (an edit by hand or in bulk
    after promoting reaches it); a caption file removed since, or a machine's caption put back, leaves the
    promoted text, not an empty example nor a model's words."""
    from blk.caption.style import move_example, promote_example
    from blk.data.captions import CaptionStore

    store = CaptionStore(dataset)
    store.approve("ex1.png", store.save("ex1.png", "inkcat, a red field", "").hash)
    promote_example(dataset, "ex1.png")
    store.save("ex1.png", "blkcat, a red field", store.read("ex1.png").hash)
    style = dataset_style(dataset)
    assert [e.caption for e in style.examples] == ["blkcat, a red field"]
    answers = [m["content"][0]["text"] for m in build_messages(style, dataset, b"") if m["role"] == "assistant"]
    assert answers == ["blkcat, a red field"]
    assert load_style(dataset_style_path(dataset)).examples[0].caption == "inkcat, a red field"  # file unchanged
    store.approve("ex2.jpg", store.save("ex2.jpg", "inkcat, a green field", "").hash)
    promote_example(dataset, "ex2.jpg")  # a change to the style writes the examples as promoted, not as read now
    move_example(dataset, 0, +1)
    assert [(e.image, e.caption) for e in load_style(dataset_style_path(dataset)).examples] == [
        ("ex2.jpg", "inkcat, a green field"), ("ex1.png", "inkcat, a red field")]
    assert [e.caption for e in dataset_style(dataset).examples] == ["inkcat, a green field", "blkcat, a red field"]
    (dataset / "ex1.txt").unlink()
    assert [e.caption for e in dataset_style(dataset).examples] == ["inkcat, a green field", "inkcat, a red field"]
    store.save("ex2.jpg", "a green field, grass, sky", store.read("ex2.jpg").hash, source="model")  # a machine's
    assert store.status("ex2.jpg") == "machine"
    assert [e.caption for e in dataset_style(dataset).examples] == ["inkcat, a green field", "inkcat, a red field"]
