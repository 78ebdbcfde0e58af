"""The Stencil tab's handlers with a real context: previews, the missing-weights sentence, and composing
generated assets in any order (the browser test covers the main flow)."""

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
    files, note, tabs = stencil.add_to_compose(None, red)
    assert files == [red] and "layer 1 (top)" in note and tabs.selected == "compose"
    files, note, _ = stencil.add_to_compose(files, blue)
    assert files == [red, blue] and "layer 2 (top)" in note
    assert "Click an asset" in stencil.add_to_compose(files, None)[1]

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
    written, status = stencil.ink_to_alpha(context, None, "scans", True, "#ffffff", 0.0, 1.0,
                                           progress=lambda *a, **k: None)
    target = workspace.datasets / "scans-alpha"
    assert len(written) == 3 and "the new dataset `scans-alpha` (2 captions copied)" in status
    assert (target / "scan0.txt").read_text() == "blkstyle, a stroke" and not (target / "scan1.txt").exists()
    for path in written:
        rgba = np.asarray(Image.open(path))
        assert rgba.shape == (24, 24, 4) and rgba[0, 0, 3] == 0 and rgba[10, 8, 3] == 255  # paper clear, ink solid
    report = check_dataset(target)
    assert (report.images, report.usable, report.captioned) == (3, 3, 2)  # ready to train on
