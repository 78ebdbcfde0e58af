"""Training pixels: bucket crops, alpha-safe augmented variants, and LayerDiffuse-encoded RGBA latents."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from blk.train.config import DataSection, TrainConfig
from blk.train.data import load_items
from blk.train.pixels import Jitter, bucket_pixels, jitter_for, over_background
from tests.conftest import make_noise_dataset


def red_square(size=96) -> Image.Image:
    """An opaque red square on a transparent field whose hidden colour is black."""
    pixels = np.zeros((size, size, 4), np.uint8)
    pixels[size // 4:3 * size // 4, size // 4:3 * size // 4] = (230, 20, 20, 255)
    return Image.fromarray(pixels, "RGBA")


def test_an_opaque_image_is_cropped_and_resized_as_imageops_fit_does():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 140, 3), dtype=np.uint8))
    ours = bucket_pixels(image, 64, 48)
    reference = np.asarray(ImageOps.fit(image, (64, 48), Image.Resampling.LANCZOS), np.float32) / 255
    assert ours.shape == (48, 64, 4) and np.all(ours[..., 3] == 1)
    # the same sub-pixel crop; ours resamples in float, where Pillow's 8-bit path rounds (and clips overshoot)
    # between its two passes, so a few pixels of this noise image differ by more than a level
    difference = np.abs(ours[..., :3] - reference)
    assert difference.mean() < 0.5 / 255 and np.percentile(difference, 99) < 1.5 / 255
    assert np.array_equal(bucket_pixels(image, 64, 48, flip=True), ours[:, ::-1])


def test_augmented_variants_keep_edges_clean_where_a_plain_resample_darkens_them():
    jitter = Jitter(degrees=11.0, scale=0.9, shift_x=0.03)
    ours = bucket_pixels(red_square(), 64, 64, jitter=jitter)
    edge = (ours[..., 3] > 0.2) & (ours[..., 3] < 0.95)
    assert edge.sum() > 20  # rotation made a soft edge …
    assert np.median(ours[..., 0][edge]) > 0.85 and ours[..., 0][edge].min() > 0.8  # … of the square's own red
    assert ours[..., 1][edge].max() < 0.15

    # the same resize and rotation on straight (not premultiplied) channels pulls the hidden black into the edge
    source = np.asarray(red_square(), np.float32) / 255
    straight = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(source[..., i]), "F")
                                    .resize((64, 64), Image.Resampling.LANCZOS).rotate(11.0, Image.Resampling.BICUBIC))
                         for i in range(4)], axis=-1)
    straight_edge = (straight[..., 3] > 0.2) & (straight[..., 3] < 0.95)
    assert np.median(straight[..., 0][straight_edge]) < 0.6


def test_variants_are_fixed_per_image_and_opaque_images_keep_full_frames():
    assert jitter_for("abc", 0, 15, 0.1, 0.05, 0.02) == Jitter()
    first = jitter_for("abc", 1, 15, 0.1, 0.05, 0.02)
    assert first == jitter_for("abc", 1, 15, 0.1, 0.05, 0.02) != jitter_for("abc", 2, 15, 0.1, 0.05, 0.02)
    assert abs(first.degrees) <= 15 and 0.9 <= first.scale <= 1.1 and first != jitter_for("abd", 1, 15, 0.1, 0.05, 0.02)

    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8))
    for degrees, scale in ((14.0, 0.9), (-9.0, 1.1), (0.0, 0.88)):
        out = bucket_pixels(photo, 96, 64, jitter=Jitter(degrees=degrees, scale=scale, shift_x=0.04, shift_y=-0.04))
        assert out.shape == (64, 96, 4) and out[..., 3].min() > 0.99  # zoomed to cover: no empty corner

    grainy = bucket_pixels(red_square(), 64, 64, jitter=Jitter(grain=0.05, seed=3))
    clean = bucket_pixels(red_square(), 64, 64)
    assert np.array_equal(grainy[..., 3], clean[..., 3]) and not np.array_equal(grainy[..., :3], clean[..., :3])


def test_a_zoomed_variant_is_resampled_once_from_the_source_not_enlarged_from_the_bucket():
    """A 1.2× zoom of a large photograph: the variant is the source's middle resized once (the bucket-sized
    pixels enlarged 1.2× were visibly softer: their error against this was many times larger)."""
    from blk.stencil import ops

    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    ours = bucket_pixels(photo, 128, 128, jitter=Jitter(scale=1.2))
    zoomed = 128 + 2 * round(128 * 0.2 / 2)  # the size it is resampled to, before the centred 128 px window
    side = 512 * 128 / zoomed
    expected = ops.resize(ops.image_to_array(photo), 128, 128,
                          box=((512 - side) / 2, (512 - side) / 2, (512 + side) / 2, (512 + side) / 2))
    error = np.abs(ours - expected)[..., :3].mean()
    enlarged = ops.scale(bucket_pixels(photo, 128, 128), zoomed / 128)[13:141, 13:141]
    assert error < 0.01 and np.abs(enlarged - expected)[..., :3].mean() > 5 * error
    assert ours[..., :3].std() > enlarged[..., :3].std() * 1.1  # more of the source's detail


def test_over_background_composites_straight_alpha():
    rgba = np.array([[[1.0, 0.0, 0.0, 0.25]]], np.float32)
    assert np.allclose(over_background(rgba), [[[1.0, 0.75, 0.75]]])


def test_items_repeat_per_variant_and_validation_holds_out_originals_only(tmp_path):
    from blk.train.runner import split_validation

    make_noise_dataset(tmp_path / "set", count=3)
    items = load_items(tmp_path / "set", [64], True, variants=2)
    assert len(items) == 3 * 2 * 3
    assert [(i.variant, i.flip) for i in items[:6]] == [(0, False), (0, True), (1, False), (1, True), (2, False),
                                                         (2, True)]
    training, held = split_validation(items, 1)
    assert len(held) == 1 and held[0].variant == 0 and not held[0].flip and len(training) == 12
    assert load_items(tmp_path / "set", [64], True) == [i for i in items if i.variant == 0]  # off: as before


def test_augmentation_settings_are_checked():
    from pydantic import ValidationError

    assert TrainConfig.model_validate({"data": {"augment": {"variants": 2, "rotate": 12}}}).data.augment.rotate == 12
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"data": {"augment": {"rotate": 90}}})
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"data": {"transparency": "premultiplied"}})


@pytest.fixture(scope="module")
def tiny_flux(shared_workspace):
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.models.registry import resolve
    from blk.train.families import FluxFamily

    model = resolve("tiny-flux", shared_workspace)
    return model, FluxFamily(load_pipeline(model, "text2img", "cpu", MemoryOptions()))


def test_layerdiffuse_latents_carry_the_transparency(tiny_flux, shared_workspace, tmp_path):
    from blk.stencil.layerdiffuse import find_encoder, load_encoder, rgba_to_raw_latent
    from blk.train.cache import TensorCache
    from blk.train.runner import LatentSource

    model, family = tiny_flux
    dataset = tmp_path / "assets"
    dataset.mkdir()
    red_square(64).save(dataset / "square.png")
    (dataset / "square.txt").write_text("a red square, FG")
    item, = load_items(dataset, [64], False)
    encoder = load_encoder(find_encoder(shared_workspace, model), "flux")
    cache = TensorCache(tmp_path / "cache")
    layered = LatentSource(family, cache, dataset, model.path, DataSection(transparency="layerdiffuse", alpha_mask=True),
                           encoder, "test")(item)
    flat = LatentSource(family, cache, dataset, model.path, DataSection(alpha_mask=True))(item)
    mean, logvar = layered["params"].chunk(2, dim=1)
    rgba = torch.from_numpy(np.asarray(red_square(64), np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = rgba_to_raw_latent(family.pipe.vae, "flux", encoder, rgba)
    assert torch.allclose(mean, expected, atol=1e-5) and torch.all(logvar == -30)
    assert not torch.allclose(flat["params"].chunk(2, dim=1)[0], mean, atol=1e-2)  # over white is another latent
    assert torch.equal(layered["mask"], flat["mask"]) and layered["mask"].shape == (1, 1, 8, 8)
    assert cache.misses == 2 and layered["params"].shape == flat["params"].shape


def test_an_augmented_run_encodes_each_variant_once(shared_workspace, tmp_path):
    from blk.train.runner import EventLog, run

    make_noise_dataset(shared_workspace.datasets / "augmented", count=2)
    config = TrainConfig.model_validate({
        "name": "aug", "model": {"name": "tiny-flux"},
        "data": {"dataset": "augmented", "resolutions": [64], "flip": True,
                 "augment": {"variants": 1, "rotate": 10, "scale": 0.1, "grain": 0.02}},
        "adapter": {"rank": 2, "alpha": 2}, "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"steps": 8, "seed": 1}, "sampling": {"every": 0}, "checkpoints": {"every": 8}})
    first = run(config, shared_workspace, tmp_path / "first")
    again = run(config, shared_workspace, tmp_path / "again")
    assert first.status == again.status == "finished"
    assert first.latent_encodes == 2 * 2 * 2 and again.latent_encodes == 0  # images × flips × (original + 1 variant)
    started = next(e for e in EventLog(tmp_path / "first" / "events.jsonl").read() if e["kind"] == "status")
    assert started["images"] == 8


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes with fine texture, as a scan has: what a resample must keep."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    planes = [np.sin(x * (5 + c) + y * (3 - c)) * 0.35 + 0.5 for c in range(3)]
    texture = np.asarray(Image.fromarray(rng.integers(0, 256, (height // 3, width // 3), np.uint8))
                         .resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255 - 0.5
    return np.clip(np.stack(planes, -1) + texture[..., None] * 0.2, 0, 1)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_a_picture_many_times_the_bucket_is_reduced_first_in_little_memory_and_reads_the_same(mode):
    """A 48 MP scan for a 1024 px bucket was converted to float whole: 2 GB and 13 s an image (`bench`-style
    measure in the session note). A whole-factor box reduction first, as Pillow's `reducing_gap`, reads the same
    as the exact filter alone, and an RGBA's hidden colour still does not bleed into its edges."""
    import tracemalloc

    from blk.stencil import ops
    from blk.train.pixels import _centred_box

    pixels = (photo_like(2400, 1800) * 255).round().astype(np.uint8)
    if mode == "RGBA":  # a soft-edged disc whose transparent field hides black
        y, x = np.mgrid[0:1800, 0:2400]
        alpha = np.clip((700 - np.hypot(x - 1200, y - 900)) / 40, 0, 1)
        pixels = np.concatenate([pixels, (alpha * 255).round().astype(np.uint8)[..., None]], -1)
        pixels[alpha == 0, :3] = 0
    image = Image.fromarray(pixels, "RGB" if mode != "RGBA" else "RGBA").convert(mode)
    exact = ops.resize(ops.image_to_array(image), 256, 160, box=_centred_box(image.size, 256, 160))

    tracemalloc.start()
    ours = bucket_pixels(image, 256, 160)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole_in_float = image.width * image.height * 4 * 4
    assert peak < whole_in_float / 3, (peak, whole_in_float)  # the float picture whole: 1×; now about ¼

    premultiplied = ops.premultiply(ours) - ops.premultiply(exact)  # what the VAE sees, flattened over white
    assert np.abs(premultiplied).mean() < 0.5 / 255 and np.percentile(np.abs(premultiplied), 99.9) < 3 / 255
    if mode == "RGBA":
        edge = (ours[..., 3] > 0.05) & (ours[..., 3] < 0.95)
        assert edge.sum() > 50
        assert np.abs(ours[..., :3][edge] - exact[..., :3][edge]).max() < 0.06  # no black halo at the edge
    jittered = bucket_pixels(image, 256, 160, jitter=Jitter(degrees=5.0, scale=1.1))
    assert jittered.shape == (160, 256, 4) and (mode == "RGBA" or jittered[..., 3].min() > 0.99)


@pytest.mark.parametrize("size, bucket", [((2399, 1799), (256, 192)), ((1025, 1025), (256, 256)),
                                          ((2047, 1500), (128, 128))])
def test_a_reduced_picture_of_any_size_keeps_its_geometry(size, bucket):
    """A side that is no multiple of the reduction factor lost its last partial block, and the rest was
    stretched over the bucket by up to half a pixel (1025² to 256²: 2.2/255 on average, 15/255 at worst)."""
    from blk.stencil import ops
    from blk.train.pixels import _centred_box

    image = Image.fromarray((photo_like(*size) * 255).round().astype(np.uint8))
    exact = ops.resize(ops.image_to_array(image), *bucket, box=_centred_box(image.size, *bucket))
    difference = np.abs(bucket_pixels(image, *bucket) - exact)[..., :3]
    assert difference.mean() < 0.5 / 255 and np.percentile(difference, 99.9) < 3 / 255, size


def test_an_rgb_picture_with_a_transparent_colour_is_reduced_with_its_transparency():
    """Pillow keeps a PNG's transparent colour of an RGB picture in `info`: such a picture took the RGB path
    and its three channels met the alpha channel's arithmetic (a numpy broadcast error)."""
    from blk.stencil import ops
    from blk.train.pixels import _centred_box

    pixels = (photo_like(1200, 900) * 255).round().astype(np.uint8)
    pixels[:, :300] = (10, 20, 30)
    image = Image.fromarray(pixels)
    image.info["transparency"] = (10, 20, 30)
    ours = bucket_pixels(image, 128, 96)
    exact = ops.resize(ops.image_to_array(image), 128, 96, box=_centred_box(image.size, 128, 96))
    assert ours[:, :20, 3].max() == 0 and ours[:, 40:, 3].min() == 1  # the keyed colour is transparent
    assert np.abs(ops.premultiply(ours) - ops.premultiply(exact)).mean() < 0.5 / 255
