"""Alpha-safe operations, layer composition, OpenRaster export/import and the compose CLI."""

import zipfile

import numpy as np
import pytest
import pyvips
from PIL import Image

from blk.errors import BadImage, UserError
from blk.stencil import ops
from blk.stencil.compose import Layer, compose, export, over
from blk.stencil.ora import read_ora
from blk.stencil.pngio import to_levels
from tests.conftest import run_blk


def red_square(size=24, inset=6, hidden=(0.0, 1.0, 0.0)):
    """A pure red square on transparent pixels whose hidden colour is green (what would bleed)."""
    rgba = np.zeros((size, size, 4), np.float32)
    rgba[..., :3] = hidden
    rgba[inset:size - inset, inset:size - inset] = [1, 0, 0, 1]
    return rgba


@pytest.mark.parametrize("operation", [
    lambda a: ops.rotate(a, 30),
    lambda a: ops.rotate(a, -12.5, resample="bilinear"),
    lambda a: ops.scale(a, 0.37),
    lambda a: ops.scale(a, 2.3),
    lambda a: ops.resize(a, 17, 40, "bicubic"),
    lambda a: ops.blur(a, 2.0),
], ids=["rotate30", "rotate-bilinear", "shrink", "enlarge-lanczos", "resize-bicubic", "blur"])
def test_resampling_leaves_no_fringe(operation):
    out = operation(red_square())
    visible = out[..., 3] > 0
    assert visible.sum() > 20
    assert (out[..., 3] < 0.99).sum() > 0  # there are soft edge pixels to check
    assert np.abs(out[visible][:, :3] - [1, 0, 0]).max() < 1e-4  # every visible pixel is still pure red
    assert out[..., 3].min() >= 0 and out[..., 3].max() <= 1


def test_naive_resampling_would_fringe():
    """The check above can fail: straight-alpha resampling drags the hidden green into the edge."""
    square = red_square()
    naive = np.stack([np.asarray(Image.fromarray(square[..., i], "F").rotate(30, Image.Resampling.BICUBIC,
                                                                         expand=True)) for i in range(4)], -1)
    visible = naive[..., 3] > 0.01
    assert naive[visible][:, 1].max() > 0.1


def test_flips_and_quarter_turns_are_exact():
    rgba = np.random.default_rng(0).random((5, 7, 4)).astype(np.float32)
    assert np.array_equal(ops.flip_horizontal(ops.flip_horizontal(rgba)), rgba)
    assert np.array_equal(ops.flip_horizontal(rgba)[:, 0], rgba[:, -1])
    assert np.array_equal(ops.flip_vertical(rgba)[0], rgba[-1])
    turned = ops.rotate(rgba, 90)
    assert turned.shape == (7, 5, 4) and np.array_equal(ops.rotate(turned, -90), rgba)


def test_scale_size_and_coverage():
    out = ops.scale(red_square(20, 5), 1.5)
    assert out.shape == (30, 30, 4)
    assert out[..., 3].sum() == pytest.approx(10 * 10 * 1.5 ** 2, rel=0.02)  # premultiplied coverage kept


def test_grain_changes_colour_only():
    rgba = np.random.default_rng(1).random((32, 32, 4)).astype(np.float32) * 0.5 + 0.25
    grained = ops.grain(rgba, 0.05, seed=3)
    assert np.array_equal(grained[..., 3], rgba[..., 3])
    delta = grained[..., :3] - rgba[..., :3]
    assert 0.04 < delta.std() < 0.06
    assert np.allclose(delta[..., 0], delta[..., 1], atol=1e-6)  # mono grain: same on R, G, B
    assert np.array_equal(ops.grain(rgba, 0.05, seed=3), grained)
    assert np.array_equal(ops.grain(rgba, 0.05, seed=3, mono=False)[..., 3], rgba[..., 3])


def test_pil_wrapper():
    image = ops.array_to_image(red_square())
    rotated = ops.apply_to_image(image, ops.rotate, 45)
    array = np.asarray(rotated).astype(int)
    visible = array[..., 3] > 0
    assert rotated.mode == "RGBA" and np.abs(array[visible][:, :3] - [255, 0, 0]).max() <= 1


def test_over_and_order():
    canvas = np.zeros((2, 2, 4), np.float32)
    canvas[..., 2:] = 1  # opaque blue
    over(canvas, np.array([[[1, 0, 0, 0.5]]], np.float32), 1, 1)
    assert np.allclose(canvas[1, 1], [0.5, 0, 0.5, 1]) and np.allclose(canvas[0, 0], [0, 0, 1, 1])
    green = Layer(np.tile([0, 1, 0, 1], (4, 4, 1)).astype(np.float32), "green", order=2)
    red = Layer(np.tile([1, 0, 0, 1], (4, 4, 1)).astype(np.float32), "red", x=2, order=1)
    flat = compose([green, red], "#000000").flat
    assert flat.shape == (4, 6, 4)
    assert np.allclose(flat[0, 3], [0, 1, 0, 1])  # green is on top where they overlap
    assert np.allclose(flat[0, 5], [1, 0, 0, 1])
    half = compose([Layer(np.tile([1, 1, 1, 1], (2, 2, 1)).astype(np.float32), opacity=0.25)], "#000000")
    assert np.allclose(half.flat[0, 0], [0.25, 0.25, 0.25, 1])
    with pytest.raises(UserError, match="#RRGGBB"):
        compose([green], "bluish")


def sample_layers():
    rng = np.random.default_rng(4)
    return [
        Layer(rng.random((20, 30, 4)).astype(np.float32), "paper & ink", x=0, y=0),
        Layer(red_square(16, 4), "red square", x=40, y=10, opacity=0.75),
        Layer(rng.random((12, 12, 4)).astype(np.float32), "étoile <3>", x=260, y=100, scale=1.5),
    ]


def test_ora_round_trip(tmp_path):
    layers = sample_layers()
    composition = compose(layers, "#f0e8d6", size=(300, 140))
    exported = export(composition, tmp_path / "piece.ora")
    image = read_ora(exported.ora)
    assert (image.width, image.height) == (300, 140)
    assert [layer.name for layer in image.layers] == ["background", "paper & ink", "red square", "étoile <3>"]
    assert [(layer.x, layer.y) for layer in image.layers] == [(0, 0), (0, 0), (40, 10), (260, 100)]
    assert image.layers[2].opacity == pytest.approx(0.75)
    assert np.array_equal(image.layers[1].pixels, to_levels(layers[0].pixels, 8))
    assert np.array_equal(image.layers[2].pixels, to_levels(layers[1].pixels, 8))
    assert image.layers[3].pixels.shape == (18, 18, 4)  # scaled by 1.5 (fits inside the canvas)
    assert np.all(image.layers[0].pixels == [240, 232, 214, 255])

    flat_png = np.asarray(Image.open(exported.flat).convert("RGBA"))
    assert np.array_equal(image.merged, flat_png)  # mergedimage.png is the flattened picture
    assert np.array_equal(flat_png, to_levels(composition.flat, 8))

    with zipfile.ZipFile(exported.ora) as archive:
        infos = archive.infolist()
        assert infos[0].filename == "mimetype" and infos[0].compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        stack = archive.read("stack.xml").decode()
        assert stack.index("étoile") < stack.index("red square") < stack.index("paper &amp; ink")  # top first
        thumbnail = Image.open(archive.open("Thumbnail/thumbnail.png"))
        assert max(thumbnail.size) == 256 and thumbnail.size == (256, 119)
        assert {"stack.xml", "mergedimage.png"} <= set(archive.namelist())
    raw = exported.ora.read_bytes()
    assert raw[30:38] == b"mimetype" and raw[38:54] == b"image/openraster"  # no extra field, readable in place


def test_layer_pngs_restack_to_the_flat_picture(tmp_path):
    composition = compose(sample_layers(), "#203040")
    exported = export(composition, tmp_path / "piece.ora")
    assert [p.name for p in exported.layers] == ["00-background.png", "01-paper_ink.png", "02-red_square.png",
                                                 "03-étoile_3.png"]
    stacked = np.zeros((composition.height, composition.width, 4), np.float32)
    for path in exported.layers:
        layer = np.asarray(Image.open(path).convert("RGBA"), np.float32) / 255
        assert layer.shape == stacked.shape
        over(stacked, layer, 0, 0)
    flat = np.asarray(Image.open(exported.flat).convert("RGBA"), np.float32)
    assert np.abs(stacked * 255 - flat).max() <= 2.0
    assert not any(p.name.startswith(".blk-tmp-") for p in tmp_path.rglob("*"))


def test_16bit_layer_keeps_a_16bit_flat_export(tmp_path):
    high = np.random.default_rng(6).integers(0, 65536, (8, 8, 4)).astype(np.uint16)
    path = tmp_path / "high.png"
    pyvips.Image.new_from_array(high, interpretation="rgb16").write_to_file(str(path))
    from blk.stencil.compose import load_layer

    layer = load_layer(path)
    assert layer.bits == 16 and layer.name == "high"
    exported = export(compose([layer]), tmp_path / "out.ora")
    flat = pyvips.Image.new_from_file(str(exported.flat)).numpy()
    assert flat.dtype == np.uint16
    assert np.abs(flat.astype(int) - high).max() <= 1  # one layer over transparency is itself


def test_read_ora_refuses_other_files(tmp_path):
    (tmp_path / "fake.ora").write_bytes(b"not a zip")
    with pytest.raises(BadImage, match="fake.ora"):
        read_ora(tmp_path / "fake.ora")
    with zipfile.ZipFile(tmp_path / "other.ora", "w") as archive:
        archive.writestr("mimetype", "application/zip")
    with pytest.raises(BadImage, match="not an OpenRaster"):
        read_ora(tmp_path / "other.ora")


def test_cli_compose(tmp_path):
    Image.fromarray(to_levels(red_square(10, 2), 8)).save(tmp_path / "red.png")
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(tmp_path / "grey.png")
    background = tmp_path / "sketch.png"
    Image.fromarray(np.full((50, 60, 3), 250, np.uint8)).save(background)
    done = run_blk("stencil", "compose", str(tmp_path / "grey.png"), str(tmp_path / "red.png"),
                   "--background", str(background), "--at", "3,4", "--at", "20,25", "--out", str(tmp_path / "c.ora"))
    assert done.returncode == 0, done.stderr
    image = read_ora(tmp_path / "c.ora")
    assert [(layer.name, layer.x, layer.y) for layer in image.layers] == [
        ("background", 0, 0), ("grey", 3, 4), ("red", 20, 25)]
    flat = np.asarray(Image.open(tmp_path / "c.png"))
    assert flat.shape == (50, 60, 4)
    assert tuple(flat[25 + 5, 20 + 5]) == (255, 0, 0, 255) and tuple(flat[5, 5]) == (90, 90, 90, 255)
    assert tuple(flat[0, 0]) == (250, 250, 250, 255)
    assert len(list((tmp_path / "c-layers").glob("*.png"))) == 3

    wrong = run_blk("stencil", "compose", str(tmp_path / "red.png"), "--at", "1,1", "--at", "2,2",
                    "--out", str(tmp_path / "d.ora"))
    assert wrong.returncode == 2 and "once per layer" in wrong.stderr
    assert not (tmp_path / "d.ora").exists()
    clobber = run_blk("stencil", "compose", str(tmp_path / "red.png"), "--out", str(tmp_path / "red.ora"))
    assert clobber.returncode == 2 and "would replace one of the inputs" in clobber.stderr
    assert np.asarray(Image.open(tmp_path / "red.png")).shape == (10, 10, 4)
