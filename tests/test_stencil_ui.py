"""The Stencil tab's handlers with a real context: previews, the missing-weights sentence, and composing
generated assets in any order (the browser test covers the main flow)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.models.registry import resolve
from blk.stencil.layerdiffuse import find_weights
from ui.context import StudioContext
from ui.tabs import stencil


def half_clear(path, colour=(200, 30, 30)):
    """Left half opaque `colour`, right half fully clear (its hidden colour green)."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[:, :16] = [*colour, 255]
    Image.fromarray(rgba, "RGBA").save(path)
    return str(path)


def test_preview_over_checkerboard_and_over_a_colour(tmp_path):
    asset = half_clear(tmp_path / "asset.png")
    checker = np.asarray(stencil.preview(asset, "checkerboard", "#000000"))
    plain = np.asarray(stencil.preview(asset, "colour", "#102030"))
    assert checker.shape == plain.shape == (32, 32, 3)
    assert (checker[:, :16] == [200, 30, 30]).all() and (plain[:, :16] == [200, 30, 30]).all()
    assert set(map(tuple, checker[:, 16:].reshape(-1, 3))) == {(204, 204, 204), (255, 255, 255)}  # two tones
    assert checker[0, 16].tolist() != checker[16, 16].tolist()  # they alternate every 16 px
    assert (plain[:, 16:] == [0x10, 0x20, 0x30]).all()  # never the hidden green
    assert stencil.preview(None, "colour", "#ffffff") is None


def test_missing_layerdiffuse_weights_are_said_up_front(shared_workspace, tmp_path):
    import shutil

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    assert stencil.weights_note(context, "tiny-flux") == ""  # tiny models build their own weights
    own = tmp_path / "my-flux"  # a Flux folder of the artist's own, with no LayerDiffuse files beside it
    shutil.copytree(resolve("tiny-flux", shared_workspace).path, own)
    with pytest.raises(UserError) as missing:
        find_weights(shared_workspace, resolve(str(own), shared_workspace))
    note = stencil.weights_note(context, str(own))
    assert note == f"**{missing.value}**"
    assert "TransparentVAE.pth" in note and "layerdiffuse" in note and "ink-to-alpha" in note
    assert "flux-dev" in stencil.weights_note(context, "flux-dev")  # no base model: that sentence first


def test_assets_are_added_to_compose_and_restacked_without_uploading_again(shared_workspace, tmp_path):
    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    red, blue = half_clear(tmp_path / "red.png"), half_clear(tmp_path / "blue.png", colour=(20, 40, 220))
    files, note, tabs, order, generate_note = stencil.add_to_compose(None, red)
    assert generate_note == {"__type__": "update"} and files == [red] and "layer 1 (top)" in note and tabs.selected == "compose"
    assert order == {"__type__": "update"}  # no Order typed: all layers stack as added
    files, note, _, _, _ = stencil.add_to_compose(files, blue)
    assert files == [red, blue] and "layer 2 (top)" in note
    # with none chosen: said in Generate's status, where the button is (Compose's status is out of sight)
    *unchanged, said = stencil.add_to_compose(files, None)
    assert "Click an asset" in said and all(u == {"__type__": "update"} for u in unchanged)
    # a typed Order lists the layers used: the new one joins it on top, or it would be left out
    more, note, _, order, _ = stencil.add_to_compose(files, red, "2,1")
    assert order == "2,1, 3" and stencil.stacking_order(order, 3) == [1, 0, 2] and "Order: 2,1, 3." in note
    assert "Left out" not in stencil.layer_list_text(more, order)
    _, note, _, order, _ = stencil.add_to_compose(files, red, "2,7")  # an Order to mend: said, left as typed
    assert order == {"__type__": "update"} and "layer 3" in note and "no layer 7" in note

    def top_left(order):
        flat, _, status = stencil.compose_layers(context, files, "", "colour", "#ffffff", None, "t", order,
                                                 export=False)
        assert status == "Preview (not saved)."
        return np.asarray(flat)[0, 0, :3].tolist()

    assert top_left("") == [20, 40, 220]  # as added: blue on top
    assert top_left("2, 1") == [200, 30, 30]  # restacked: red on top
    assert top_left("2") == [20, 40, 220] and top_left("1") == [200, 30, 30]  # the other layer left out
    for order, sentence in (("3", "no layer 3"), ("1,1", "once"), ("a,b", "layer numbers")):
        flat, files_out, status = stencil.compose_layers(context, files, "", "colour", "#ffffff", None, "t", order,
                                                         export=False)
        assert flat is None and files_out == [] and sentence in status

    flat, exported, status = stencil.compose_layers(context, files, "0,0\n8,0", "transparent", "#ffffff", None,
                                                    "pair", "2,1", export=True)
    assert "Exported" in status and any(p.endswith(".ora") for p in exported)
    from blk.stencil.ora import read_ora

    layers = read_ora(next(p for p in exported if p.endswith(".ora"))).layers
    assert [layer.name for layer in layers] == ["blue", "red"]  # bottom → top as ordered


def test_a_captioned_dataset_becomes_a_captioned_rgba_dataset(workspace):
    from blk.data.check import check_dataset

    folder = workspace.datasets / "scans"
    folder.mkdir(parents=True)
    for index in range(3):
        page = np.full((24, 24, 3), 235, np.uint8)
        page[4:20, 6 + index:9 + index] = 0  # a black ink stroke on off-white paper
        Image.fromarray(page).save(folder / f"scan{index}.png")
    (folder / "scan0.txt").write_text("blkstyle, a stroke")
    (folder / "scan2.txt").write_text("blkstyle, another stroke")
    context = StudioContext(workspace, demo=True, demo_reason="test")
    written, status, estimated = stencil.ink_to_alpha(context, None, "scans", True, "#ffffff", 0.0, 1.0,
                                                      progress=lambda *a, **k: None)
    target = workspace.datasets / "scans-alpha"
    assert len(written) == 3 and "the new dataset `scans-alpha` (2 captions copied)" in status
    assert estimated == "#ebebeb"  # the paper found (235), for the picker: a start for the artist's own colour
    assert (target / "scan0.txt").read_text() == "blkstyle, a stroke" and not (target / "scan1.txt").exists()
    for path in written:
        rgba = np.asarray(Image.open(path))
        assert rgba.shape == (24, 24, 4) and rgba[0, 0, 3] == 0 and rgba[10, 8, 3] == 255  # paper clear, ink solid
    report = check_dataset(target)
    assert (report.images, report.usable, report.captioned) == (3, 3, 2)  # ready to train on


def scans_dataset(workspace, name="scans"):
    folder = workspace.datasets / name
    folder.mkdir(parents=True)
    for index in range(2):
        page = np.full((24, 24, 3), 235, np.uint8)
        page[4:20, 6 + index:9 + index] = 0
        Image.fromarray(page).save(folder / f"scan{index}.png")
    (folder / "scan0.txt").write_text("blkstyle, a stroke")
    return folder


def test_converting_a_dataset_again_never_overwrites_the_first_conversion(workspace, tmp_path):
    """The second conversion goes to NAME-alpha-2 and says so; the caption edited in NAME-alpha and its PNGs
    stay as they were. Scans uploaded while a dataset is chosen are not converted, and the status says so."""
    scans_dataset(workspace)
    context = StudioContext(workspace, demo=True, demo_reason="test")
    quiet = dict(progress=lambda *a, **k: None)
    stencil.ink_to_alpha(context, None, "scans", True, "#ffffff", 0.0, 1.0, **quiet)
    first = workspace.datasets / "scans-alpha"
    (first / "scan0.txt").write_text("blkstyle, a stroke, edited by a curator")
    pixels = (first / "scan1.png").read_bytes()
    upload = tmp_path / "upload.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(upload)
    written, status, estimated = stencil.ink_to_alpha(context, [str(upload)], "scans", False, "#f0f0f0", 0.0, 1.0,
                                                      **quiet)
    assert estimated is None  # a colour given: the picker keeps it
    second = workspace.datasets / "scans-alpha-2"
    assert sorted(p.name for p in second.iterdir() if not p.name.startswith(".")) == \
        ["scan0.png", "scan0.txt", "scan1.png"] and all(path.startswith(str(second)) for path in written)
    assert "the new dataset `scans-alpha-2`" in status and "`scans-alpha` already exists and was left as it is" \
        in status and "The 1 uploaded scan was not converted" in status
    assert "choose (none: convert the uploads) as the dataset" in status
    assert (first / "scan0.txt").read_text() == "blkstyle, a stroke, edited by a curator"
    assert (first / "scan1.png").read_bytes() == pixels  # converted with another paper colour the second time
    assert (second / "scan1.png").read_bytes() != pixels
    assert not (workspace.outputs("stencil") / "alpha").exists()  # the upload went nowhere, as the status says
    _, third, _ = stencil.ink_to_alpha(context, None, "scans", True, "#ffffff", 0.0, 1.0, **quiet)
    assert "`scans-alpha-3`" in third and "uploaded" not in third
    # that choice is in the list, first: a dataset choice could be cleared only by deleting its text
    assert stencil.alpha_dataset_choices(context)[:2] == [stencil.UPLOADS_ONLY, ("scans", "scans")]
    written, status, _ = stencil.ink_to_alpha(context, [str(upload)], stencil.UPLOADS_ONLY[1], False, "#f0f0f0",
                                              0.0, 1.0, **quiet)
    assert len(written) == 1 and "1 converted" in status, status


def test_uploads_with_the_same_name_are_all_kept_and_16bit_scans_say_16bit(workspace, tmp_path):
    """scan.png and scan.jpg uploaded together become scan.png and scan-2.png (the status says which scan each
    came from); the same scan converted again later becomes scan-3.png, the earlier files untouched. A 16-bit
    RGB PNG (no EXIF chunk, as GIMP writes it) stays 16-bit and the status says so."""
    import pyvips

    context = StudioContext(workspace, demo=True, demo_reason="test")
    quiet = dict(progress=lambda *a, **k: None)
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((6, 6, 3), 20, np.uint8)).save(tmp_path / "a" / "scan.png")
    Image.fromarray(np.full((6, 6, 3), 200, np.uint8)).save(tmp_path / "b" / "scan.jpg")
    deep = np.random.default_rng(4).integers(0, 65536, (6, 6, 3)).astype(np.uint16)
    pyvips.Image.new_from_array(deep, interpretation="rgb16").write_to_file(str(tmp_path / "c" / "scan16rgb.png"),
                                                                            strip=True)
    uploads = [str(tmp_path / "a" / "scan.png"), str(tmp_path / "b" / "scan.jpg"), str(tmp_path / "c" / "scan16rgb.png")]
    written, status, _ = stencil.ink_to_alpha(context, uploads, None, False, "#ffffff", 0.0, 1.0, **quiet)
    assert [Path(p).name for p in written] == ["scan.png", "scan-2.png", "scan16rgb.png"]
    assert "3 converted" in status and "- scan.png: 8-bit, paper #ffffff" in status
    assert "- scan-2.png (from scan.jpg): 8-bit" in status and "- scan16rgb.png: 16-bit, paper #ffffff" in status
    assert [int(np.asarray(Image.open(p))[0, 0, 3]) for p in written[:2]] == [235, 55]  # each its own scan
    assert np.asarray(Image.open(written[2])).dtype == np.uint16 or Image.open(written[2]).tile[0][3] == "RGBA;16B"
    kept = {p: Path(p).read_bytes() for p in written}
    again, status, _ = stencil.ink_to_alpha(context, uploads[:1], None, False, "#ffffff", 0.0, 1.0, **quiet)
    assert [Path(p).name for p in again] == ["scan-3.png"] and Path(again[0]).parent == Path(written[0]).parent
    assert "- scan-3.png (from scan.png): 8-bit" in status
    assert all(Path(p).read_bytes() == data for p, data in kept.items())


def test_a_dataset_with_a_png_and_a_jpg_of_the_same_name_keeps_both_with_their_captions(workspace):
    from blk.data.check import check_dataset

    folder = workspace.datasets / "pair"
    folder.mkdir(parents=True)
    for name, column in (("a.png", 4), ("a.jpg", 16), ("b.png", 10)):
        page = np.full((24, 24, 3), 235, np.uint8)
        page[4:20, column:column + 3] = 0
        Image.fromarray(page).save(folder / name)
    (folder / "a.txt").write_text("blkstyle, a")
    (folder / "b.txt").write_text("blkstyle, b")
    context = StudioContext(workspace, demo=True, demo_reason="test")
    written, status, _ = stencil.ink_to_alpha(context, None, "pair", True, "#ffffff", 0.0, 1.0,
                                           progress=lambda *a, **k: None)
    target = workspace.datasets / "pair-alpha"
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == \
        ["a-2.png", "a-2.txt", "a.png", "a.txt", "b.png", "b.txt"]
    assert "(3 captions copied)" in status and "- a-2.png (from a.png)" in status
    def strokes(name):  # which of the three strokes' centres is inked in this PNG
        alpha = np.asarray(Image.open(target / name))[12, :, 3]
        return [column for column in (5, 11, 17) if alpha[column] > 200]

    assert {name: strokes(name) for name in ("a.png", "a-2.png", "b.png")} == \
        {"a.png": [17], "a-2.png": [5], "b.png": [11]}  # a.png from a.jpg, a-2.png from a.png
    assert [(target / n).read_text() for n in ("a.txt", "a-2.txt", "b.txt")] == ["blkstyle, a"] * 2 + ["blkstyle, b"]
    report = check_dataset(target)
    assert (report.images, report.usable, report.captioned) == (3, 3, 3)


@pytest.mark.parametrize("size, expected", [((80, 60), (64, 64)), ((200, 100), (256, 128)), ((100, 96), (128, 128)),
                                            ((64, 100), (64, 128)), ((30, 20), (64, 64)), ((640, 128), (640, 128))])
def test_an_asset_started_from_an_image_takes_its_size_on_the_grid(size, expected):
    """Each side on the 64 px grid within one step of the image's, the aspect ratio as close as the grid allows
    (200×100 stays 2:1, where rounding each side alone gave 192×128); a notice when the size changes."""
    from blk.stencil.generate import start_size

    width, height, notice = start_size(*size, 64)
    assert (width, height) == expected
    assert (notice == "") == (size == expected)
    assert not notice or f"{size[0]}×{size[1]}" in notice and f"{width}×{height}" in notice


def test_a_generation_previews_its_newest_asset_and_a_start_image_sets_the_size(workspace, shared_workspace,
                                                                               tmp_path):
    """After Generate the newest asset is the chosen one (the Preview follows it); a 200×100 starting image
    gives a 256×128 asset whatever Width and Height say, and the status says why; "Start from the chosen
    asset" with nothing chosen is a sentence."""
    import shutil
    import threading

    shutil.copytree(shared_workspace.models / "tiny-flux", workspace.models / "tiny-flux")
    context = StudioContext(workspace, demo=True, demo_reason="test")
    start = tmp_path / "wide.png"
    rgba = np.zeros((100, 200, 4), np.uint8)
    rgba[20:80, 40:160] = (30, 30, 40, 255)
    Image.fromarray(rgba, "RGBA").save(start)
    quiet = lambda *a, **k: None  # noqa: E731
    form = ("tiny-flux", "a bar", "FG", [], 1024, 1024, 2, None, 3, False, 1, False)
    shown, session, status, seed, chosen, *size = stencil.generate(context, threading.Event(), [], *form,
                                                                   start=str(start), strength=0.5, progress=quiet)
    assert chosen == shown[0][0] and Image.open(chosen).size == (256, 128), status
    assert size == [{"__type__": "update"}] * 2  # Width and Height are not used with a start: left as typed
    assert "200×100" in status and "256×128 RGBA" in status
    assert seed == {"__type__": "update"}  # a fixed seed stays as typed, as in Sketch
    form = ("tiny-flux", "a bar", "FG", [], 100, 70, 2, None, 4, False, 1, False)  # off the 64 px grid
    shown, _, status, _, newer, *size = stencil.generate(context, threading.Event(), session, *form, progress=quiet)
    assert len(shown) == 2 and newer == shown[0][0] != chosen and Image.open(newer).size == (128, 64)
    assert size == [128, 64]  # the fields show the size used, as the status does
    assert stencil.start_from_chosen(newer) == (newer, f"Starting from `{Path(newer).name}`: Generate redraws it "
                                                      "at the chosen strength.")
    assert stencil.chosen_line(newer) == f"Chosen: `{Path(newer).name}` — what *Add to Compose*, *Upscale* and " \
                                         "*Start from the chosen asset* use." and "-s4" in Path(newer).name
    assert stencil.chosen_line(None).startswith("No asset chosen yet")
    kept, sentence = stencil.start_from_chosen(None)
    assert kept == {"__type__": "update"} and sentence.startswith("Click an asset in the gallery first")
    opaque = tmp_path / "flat.jpg"  # no transparency: allowed, and said; with no descriptor, that is said too
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(opaque)
    form = ("tiny-flux", "", "none", [], 64, 64, 2, None, 5, False, 1, False)
    status = stencil.generate(context, threading.Event(), [], *form, start=str(opaque), strength=0.5,
                              progress=quiet)[2]
    assert "flat.jpg has no transparency" in status and "Ink to alpha first" in status
    assert "The descriptor was empty: the asset was drawn without a text prompt." in status
    assert "no transparency" not in stencil.generate(context, threading.Event(), [], *form, start=str(start),
                                                     strength=0.5, progress=quiet)[2]
    failed = stencil.generate(context, threading.Event(), session, "no-such-model", *form[1:], progress=quiet)
    assert failed[3:] == ({"__type__": "update"},) * 4 and "no-such-model" in failed[2]  # nothing new: kept


def test_an_empty_descriptor_is_said_with_what_drew_the_asset():
    assert stencil.empty_descriptor_note("a cube", "FG") == ""
    assert stencil.empty_descriptor_note("  ", "MG") == ("The descriptor was empty: the asset was drawn from the "
                                                         "Z-role tag (MG) alone.")
    assert "without a text prompt" in stencil.empty_descriptor_note(None, stencil.ROLE_NONE)


def test_the_layer_list_numbers_layers_as_order_and_positions_count_them():
    """Gradio's file list shows names only; the list says each layer's number, bottom → top as stacked."""
    files = ["/ws/a/ink.png", "/ws/b/cube.png", "/ws/c/sky.png"]
    assert stencil.layer_list_text([], "").startswith("No layers yet")
    assert stencil.layer_list_text(files, "").splitlines()[1:] == [
        "layer 1: `ink.png` — bottom  ", "layer 2: `cube.png`  ", "layer 3: `sky.png` — top"]
    restacked = stencil.layer_list_text(files, "3, 1").splitlines()
    assert restacked[1:] == ["layer 3: `sky.png` — bottom  ", "layer 1: `ink.png` — top  ",
                             "Left out: layer 2 (`cube.png`)"]
    assert stencil.layer_list_text(files, "4") == ("**There is no layer 4: the layers are numbered 1 to 3 in the "
                                                   "order added.**")
    assert stencil.layer_list_text(files[:1], "").splitlines()[1] == "layer 1: `ink.png`"


def test_the_starting_image_field_takes_a_jpeg(workspace, tmp_path):
    """Gradio converted an upload to the field's RGBA mode and saved it under its own format: a JPEG start was
    "cannot write mode RGBA as JPEG" in a popup. The field now hands over the file as it is (the engine reads
    any mode), so a JPEG, a CMYK JPEG and a grey PNG all reach `starting_image` as RGBA."""
    import gradio as gr
    from gradio.data_classes import ImageData

    from blk.stencil.generate import starting_image

    context = StudioContext(workspace, demo=True, demo_reason="test")
    with gr.Blocks() as demo:
        stencil.build(context)
    field = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-stencil-start")
    Image.new("RGB", (40, 30), (200, 90, 30)).save(tmp_path / "photo.jpg")
    Image.new("CMYK", (40, 30), (0, 80, 200, 10)).save(tmp_path / "print.jpg")
    Image.new("L", (40, 30), 128).save(tmp_path / "grey.png")
    for name in ("photo.jpg", "print.jpg", "grey.png"):
        handed = field.preprocess(ImageData(path=str(tmp_path / name), orig_name=name))
        rgba, notice = starting_image(Path(handed))
        assert rgba.mode == "RGBA" and rgba.size == (40, 30) and "no transparency" in notice, name
