"""Upscale tab handlers and the engine functions behind them: the path follows the suggestion by
size, the before/after region can be placed, and Upscale shows the plan before its tiles and makes
the print copy. The handlers are called directly (no browser): they are plain functions."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from blk.upscale.compare import region_box, region_pair, suggested_path
from tests.test_upscale_esrgan import leftovers, noise, rrdb_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def context(workspace):
    from ui.context import StudioContext

    (workspace.models / "upscalers").mkdir(parents=True)
    rrdb_file(workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    return StudioContext(workspace, demo=True, demo_reason="test")


def save(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray((noise(h, w, seed=seed) * 255).round().astype(np.uint8)).save(path)
    return path


def test_suggested_path_changes_above_8k():
    """RECIPES.md: Real-ESRGAN up to about 8k on the longer side, the diffusion path beyond."""
    assert suggested_path(8192, 100) == suggested_path(6000, 8192) == suggested_path(8192, 8192) == "esrgan"
    assert suggested_path(8193, 100) == suggested_path(100, 8193) == suggested_path(20000, 20000) == "diffusion"


def test_the_path_follows_the_suggestion_when_it_changes(tmp_path):
    """The first image, or a scale or size that crosses 8k, sets the Path radio; a change that keeps the
    same suggestion leaves it alone; a path the artist picked stays, for the next image too."""
    from ui.tabs.upscale import DIFFUSION, ESRGAN, PICKED, follow_suggestion

    image = str(save(tmp_path / "art.png", 900, 1100))
    radio, last = follow_suggestion(image, 4, "", None)  # a new image: 4400×3600
    assert (radio.value, last) == (ESRGAN, "esrgan")
    radio, last = follow_suggestion(image, 8, "", last)  # 8800×7200
    assert (radio.value, last) == (DIFFUSION, "diffusion")
    untouched, same = follow_suggestion(image, 10, "", last)
    assert untouched == {"__type__": "update"} and same == "diffusion"
    radio, last = follow_suggestion(image, 8, "7700x6300", last)  # the exact size wins over the scale
    assert (radio.value, last) == (ESRGAN, "esrgan")
    for bad in ((image, 8, "big", last), (image, 0.5, "", last), (None, 4, "", last)):  # nothing to suggest from
        assert follow_suggestion(*bad) == ({"__type__": "update"}, "esrgan")
    # once the artist picks a path, neither a size across 8k nor a new image moves it any more
    assert follow_suggestion(image, 10, "", PICKED) == ({"__type__": "update"}, PICKED)
    other = str(save(tmp_path / "other.png", 30, 20))
    assert follow_suggestion(other, 4, "", PICKED) == ({"__type__": "update"}, PICKED)


def test_a_picked_path_stays_and_the_last_keystroke_counts(context):
    """Picking a path sets the suggestion state to PICKED (so suggestions stop); a new image's suggestion reads
    that state; the Scale and size boxes suggest on their last keystroke (`always_last`: a key typed while a
    suggestion ran was dropped, and the radio stayed on a path the size no longer suggested)."""
    import gradio as gr

    from ui.tabs import upscale

    with gr.Blocks() as demo:
        upscale.build(context)
    blocks = {getattr(b, "label", None): b for b in demo.blocks.values()}
    radio, scale, size = blocks["Path"], blocks["Scale"], blocks["…or exact size WxH"]
    picked = [f for f in demo.fns.values() if (radio._id, "input") in f.targets]
    assert len(picked) == 1 and picked[0].fn(upscale.DIFFUSION, None)[1] == upscale.PICKED
    suggestion = picked[0].outputs[1]
    image_change = [f for f in demo.fns.values() if f.targets[0][1] == "change" and radio in f.outputs and
                    suggestion in f.inputs]
    assert len(image_change) == 1
    typed = [f for f in demo.fns.values() if any(t[0] in (scale._id, size._id) for t in f.targets)]
    assert len(typed) == 2 and all(f.trigger_mode == "always_last" for f in typed)
    # every handler that reads or writes the path's states runs in one queue, one at a time
    path_handlers = [f for f in demo.fns.values() if suggestion in f.inputs + f.outputs or radio in f.outputs
                     or (radio._id, "change") in f.targets]
    assert len(path_handlers) == 6 and {(f.concurrency_id, f.concurrency_limit) for f in path_handlers} == \
        {("blk-upscale-path", 1)}


def test_the_form_refuses_a_scale_of_0_a_stretched_size_and_a_wall_of_gigapixels(context, tmp_path):
    """A scale of 0 was taken for 4; an exact size of another shape stretched the image without a word;
    10 gigapixels were planned as if nothing were wrong."""
    from ui.tabs.upscale import ESRGAN, estimate

    image = str(save(tmp_path / "art.png", 192, 256))
    model = str(context.workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")

    def said(scale, size):
        return estimate(context, image, ESRGAN, scale, size, model, "tiny-flux", 0, 32, 0, 0.3, 0.2, False, 0.15,
                        False)

    assert said(0, "") == "**The scale must be a number above 0; got 0.**"
    assert said(4, "1000x300") == "**1000×300 would stretch the 256×192 image; 1000x750 or 400x300 keep its shape.**"
    assert said(4, "1024x769").startswith("256×192 → **1024×769**")  # a pixel off by rounding is no stretch
    assert said(400, "") == ("**102400×76800 is 7.9 gigapixels; the studio makes up to 4 (the paper's murals "
                             "reach 3): choose a smaller scale or size.**")


REGION_CHILD = """
import sys
from pathlib import Path

import numpy as np

from blk.errors import UserError
from blk.upscale.compare import region_pair
from blk.upscale.source import open_input

big = Path(sys.argv[1])
before, after = region_pair(big, big, (0.9, 0.9))
print(np.asarray(before).shape, np.asarray(before)[0, 0].tolist())
try:  # the tiles' reader streams it too (`row_stream`): before, libvips decoded it whole to the folder first
    print(np.round(open_input(big).source.read(0, 0, 8, 8) * 255).astype(int)[0, 0].tolist())
except UserError as exc:
    print(exc)
"""


def test_the_region_view_of_a_large_png_streams_it_instead_of_decoding_it_whole_to_a_temporary_file(tmp_path):
    """Each move of the before/after view read a region of the input: for a PNG (JPEG, WebP) read by region that
    meant libvips decoding it whole to its temporary folder first — gigabytes for a mural, at every move."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_faults import tmpfs

    big = tmp_path / "mural.png"
    Image.new("L", (6144, 6144), 90).save(big)  # 37.7 MP: read by region (over 32 MP), a 60 KB file
    with tmpfs(tmp_path / "small-tmp", "64k") as small:  # libvips' temporary folder, with no room for 37 MB
        env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(small), VIPS_DISC_THRESHOLD="1k")
        child = subprocess.run([sys.executable, "-c", REGION_CHILD, str(big)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    shown, tiles = child.stdout.strip().splitlines()
    assert shown == "(512, 512, 3) [90, 90, 90]"  # the view: streamed down to its region, no temporary file
    assert tiles == "[90, 90, 90]"  # and the tiles' reader, whose disk-full sentence this line was before


def test_the_region_lies_around_the_chosen_centre(tmp_path):
    """Before and after show the same region, where the user put it, moved inside at the edges."""
    assert region_box(1000, 600, (0.5, 0.5), 100) == (450, 250, 100)
    assert region_box(1000, 600, (0.25, 0.75), 100) == (200, 400, 100)
    assert region_box(1000, 600, (0.0, 1.0), 100) == (0, 500, 100)  # corners: inside the image
    assert region_box(1000, 600, (1.5, -1), 100) == (900, 0, 100)
    assert region_box(80, 60, (0.5, 0.5), 512) == (10, 0, 60)  # a small result: its height
    # an input of four flat quadrants, and its ×4 "result" with a detail of its own in each pixel
    small = np.zeros((40, 60, 3), np.uint8)
    small[:20, :30], small[:20, 30:], small[20:, :30], small[20:, 30:] = (200, 0, 0), (0, 200, 0), (0, 0, 200), (90,) * 3
    Image.fromarray(small).save(tmp_path / "in.png")
    rng = np.random.default_rng(0)
    big = np.clip(small.repeat(4, 0).repeat(4, 1).astype(int) + rng.integers(-20, 21, (160, 240, 3)), 0, 255)
    Image.fromarray(big.astype(np.uint8)).save(tmp_path / "out.png")
    for centre, colour in (((0.2, 0.8), (0, 0, 200)), ((0.8, 0.2), (0, 200, 0)), ((0.75, 0.75), (90, 90, 90))):
        before, after = region_pair(tmp_path / "in.png", tmp_path / "out.png", centre, side=32)
        x, y, side = region_box(240, 160, centre, 32)
        assert np.array_equal(np.asarray(after), big[y:y + side, x:x + side])  # exactly the result's pixels there
        assert before.size == after.size == (32, 32)
        assert np.abs(np.asarray(before, float).mean((0, 1)) - colour).max() < 3  # the same region of the input


def test_the_before_side_is_the_enlarged_input_at_the_same_place_as_the_after_side(tmp_path):
    """"Before" was cut at whole input pixels and stretched to the region: up to one input pixel (here 3 px of
    the ×3 view) off "after". It is now the input's Lanczos enlargement of exactly that region."""
    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "in.png")
    enlarged = np.asarray(Image.fromarray(small).resize((90, 60), Image.Resampling.LANCZOS), float)
    Image.fromarray(enlarged.astype(np.uint8)).save(tmp_path / "out.png")
    for centre in ((0.5, 0.5), (0.3, 0.6), (0.05, 0.95)):
        before, _ = region_pair(tmp_path / "in.png", tmp_path / "out.png", centre, side=32)
        x, y, side = region_box(90, 60, centre, 32)
        assert np.abs(np.asarray(before, float) - enlarged[y:y + side, x:x + side]).max() <= 2, centre


def test_a_transparent_region_shows_over_a_checkerboard_not_the_colour_hidden_under_it(tmp_path):
    """The colour kept under alpha 0 is not part of the picture: shown, it read as lost transparency."""
    from blk.stencil.preview import CHECKER_TONES

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = (250, 20, 20)  # red everywhere, visible only in the left half
    rgba[:, :20, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    Image.fromarray(rgba.repeat(2, 0).repeat(2, 1), "RGBA").save(tmp_path / "out.png")
    before, after = region_pair(tmp_path / "in.png", tmp_path / "out.png", (0.5, 0.5), side=80)
    for shown in (before, after):
        pixels = np.asarray(shown)
        assert shown.mode == "RGB" and pixels.shape == (80, 80, 3)
        assert np.array_equal(pixels[5, 5], (250, 20, 20))  # opaque: the colour
        clear = pixels[:, 50:].reshape(-1, 3)
        assert set(map(int, np.unique(clear))) == set(CHECKER_TONES)  # clear: the checkerboard's two greys


def test_estimate_counts_every_pass_with_the_jobs_tile(context, tmp_path):
    """The Estimate button shows the engine's plan: ×7 with a ×4 model is two passes, 2 + 6 tiles of 32 px."""
    from ui.tabs.upscale import ESRGAN, estimate

    image = str(save(tmp_path / "art.png", 29, 37))
    model = str(context.workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    text = estimate(context, image, ESRGAN, 7, "", model, "tiny-flux", 32, 8, None, 0.3, 0.2, False, 0.15, True)
    assert "37×29 → **259×203**" in text and "8 tiles (2 + 6) of up to 32 px in 2 model passes of ×4." in text
    automatic = estimate(context, image, ESRGAN, 7, "", model, "tiny-flux", None, 8, None, 0.3, 0.2, False, 0.15,
                         True)
    assert "2 tiles (1 + 1) of up to" in automatic and "(automatic tile size" in automatic
    zero = estimate(context, image, ESRGAN, 7, "", model, "tiny-flux", 0, 8, 0, 0.3, 0.2, False, 0.15, True)
    assert zero == automatic  # the field shows 0 for automatic (Gradio's number box is never empty)
    outside = estimate(context, image, ESRGAN, 7, "", str(tmp_path / "elsewhere.pth"), "tiny-flux", 32, 8, None,
                       0.3, 0.2, False, 0.15, True)
    assert "is outside the workspace" in outside


def test_upscale_shows_the_plan_first_and_makes_the_print_copy_and_region(context, tmp_path):
    """Pressing Upscale: the plan is in the progress before the first tile; the print DPI field gives
    OUT.print.tif at that DPI; the region sliders place the before/after pair; the region can be
    moved afterwards on the kept result."""
    from ui.tabs.upscale import ESRGAN, show_region, upscale

    image = str(save(tmp_path / "art.png", 40, 48, seed=3))
    model = str(context.workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    seen = []

    def progress(fraction, desc=None):
        seen.append(desc)

    pair, offered, status, made = upscale(context, threading.Event(), image, ESRGAN, 4, "", model, "tiny-flux",
                                          None, False, 32, 8, None, 0, "", 0.3, 0.2, False, 0.15, False, "TIFF",
                                          False, None, 240, 10, 90, progress=progress)
    plan = "4 tiles of up to 32 px in 1 model pass of ×4."
    assert seen[0].startswith(plan) and seen[-1].startswith("tile 4/4") and plan in status
    assert "Time: shown once the first tiles are done" in seen[0] and "Time:" not in status  # said how long it took
    path = offered[0]
    assert "192×160 in" in status and made == [image, path]
    assert offered == [path, str(Path(path).with_suffix(".print.tif"))]  # what the Result box offers to download
    with tifffile.TiffFile(Path(path).with_suffix(".print.tif")) as tif:
        x, y = tif.pages[0].tags["XResolution"].value
        assert abs(x / y - 240) < 1e-6 and tif.pages[0].shape == (160, 192, 3)
    result = tifffile.imread(path)
    x, y, side = region_box(192, 160, (0.1, 0.9), 512)
    assert np.array_equal(np.asarray(pair[1]), result[y:y + side, x:x + side])
    moved = show_region(made, 100, 0)
    assert np.array_equal(np.asarray(moved[1]), result[0:160, 32:192])
    assert show_region(None, 50, 50) == {"__type__": "update"}
    assert [p for p in context.workspace.root.rglob(".blk-tmp-*")] == [] and leftovers(tmp_path) == []
    again = upscale(context, threading.Event(), image, ESRGAN, 4, "", model, "tiny-flux", None, False, 32, 12, None,
                    0, "", 0.3, 0.2, False, 0.15, False, "TIFF", False, None, None, 50, 50)[1]
    assert [Path(p).name for p in again] == ["art-esrgan-192x160-2.tif"] and Path(path).is_file()  # first kept
    # a PNG master shares its print copy's name with the TIFF of the same name: it skips the name whose print
    # copy is taken (-2's is free: that job made none), and never offers (nor replaces) another job's copy
    printed = Path(path).with_suffix(".print.tif").read_bytes()
    png = upscale(context, threading.Event(), image, ESRGAN, 4, "", model, "tiny-flux", None, False, 32, 12, None,
                  0, "", 0.3, 0.2, False, 0.15, False, "PNG", False, None, 100, 50, 50)[1]
    assert [Path(p).name for p in png] == ["art-esrgan-192x160-2.png", "art-esrgan-192x160-2.print.tif"]
    assert Path(path).with_suffix(".print.tif").read_bytes() == printed
    other = save(tmp_path / "other.png", 20, 16, seed=4)  # a new input chosen: the region still shows the job's
    assert np.array_equal(np.asarray(show_region(made, 100, 0)[1]), result[0:160, 32:192]) and other.is_file()


def test_diffusion_estimate_and_upscale_use_the_engines_plan_and_the_step_scale(context, shared_workspace, tmp_path):
    """The diffusion path's plan comes from the engine (`diffusion.estimate`, `run`'s `on_plan`), not the tab;
    Estimate loads no pipeline; the Largest enlargement per step field reaches the job: ×4 in two ×2 steps."""
    import shutil

    from blk.generate.metadata import read_parameters
    from ui.tabs.upscale import DIFFUSION, estimate, upscale

    shutil.copytree(shared_workspace.models / "tiny-flux", context.workspace.models / "tiny-flux")
    image = str(save(tmp_path / "art.png", 16, 20, seed=5))
    form = (image, DIFFUSION, 4, "", None, "tiny-flux", 32, 8, 4, 0.3, 0.2, False, 0.15, False)
    stepped = estimate(context, *form, 2)
    # Flux's img2img runs 3 of 10 steps at 0.3 (2 of 4 was a strength of 0.5) and 1 of 5 at 0.2: 4 a tile
    plan = "80×64 in 2 steps (40×32, 80×64): 2 passes each of 2 + 9 tiles (44 denoising steps in all)."
    assert "20×16 → **80×64**" in stepped and plan in stepped and "Time: " in stepped
    assert "80×64: 2 passes of 9 tiles (36 denoising steps in all)." in estimate(context, *form)  # default: ×4 steps
    assert context.sketcher.cache.load_count == 0  # Estimate plans from the model's defaults alone
    seen = []
    pair, (path,), status, made = upscale(context, threading.Event(), image, DIFFUSION, 4, "", None, "tiny-flux",
                                          None, False, 32, 8, 4, 0, "", 0.3, 0.2, False, 0.15, False, "PNG", False,
                                          None, None, 50, 50, 2,
                                          progress=lambda fraction, desc=None: seen.append(desc))
    assert seen[0].startswith(plan) and plan in status and "80×64 in" in status, status
    assert "Texture LoRA: none (the base model alone)." in seen[0] and "Texture LoRA: none" in status
    # each step's enlargement shows while it runs (Lanczos: the whole image, one tile), then its passes
    assert seen[1:4] == ["step 1 of 2: enlarging, tile 0 of 1",
                         "step 1 of 2: enlarging, tile 1 of 1, under a second left in this enlargement",
                         "step 1 of 2: pass A, tile 1/22"], seen
    assert re.fullmatch(r"step 1 of 2: pass A, tile 2/22, (about \d+ s|under a second) left", seen[4]), seen[4]
    step2 = seen.index("step 2 of 2: enlarging, tile 0 of 1")
    assert seen[step2 - 1].startswith("step 1 of 2: pass B, tile 4/22") and len(seen) == 1 + 2 * 2 + 22
    assert re.fullmatch(r"step 2 of 2: pass A, tile 5/22, (about \d+ s|under a second) left", seen[step2 + 2])
    assert seen[-1].startswith("step 2 of 2: pass B, tile 22/22, under a second left")
    parameters = read_parameters(Path(path))
    assert parameters["step_sizes"] == [[40, 32], [80, 64]] and Image.open(path).size == (80, 64)
    assert parameters["loras"] == []  # the TIFF/PNG says so too
    assert pair[1].size == (64, 64) and made == [image, path] and leftovers(tmp_path) == []
    # the next job's estimate: its denoising and its two enlargements' time, each kept apart
    again = estimate(context, *form, 2)
    assert re.search(r"Time: (about \d+ s|under a second): .* of denoising and .* of enlarging", again), again


def test_an_empty_scale_is_the_paths_default_in_the_name_the_estimate_and_the_result(context, shared_workspace,
                                                                                     tmp_path):
    """An empty Scale on the diffusion path was ×4 in the file's name and the Estimate, ×2 in the job."""
    import shutil

    from ui.tabs.upscale import DIFFUSION, ESRGAN, estimate, target, upscale

    shutil.copytree(shared_workspace.models / "tiny-flux", context.workspace.models / "tiny-flux")
    image = str(save(tmp_path / "art.png", 16, 20, seed=6))
    assert target(image, None, "", DIFFUSION)[1] == (40, 32) and target(image, "", "", ESRGAN)[1] == (80, 64)
    assert "20×16 → **40×32**" in estimate(context, image, DIFFUSION, None, "", None, "tiny-flux", 32, 8, 4, 0.3, 0.2,
                                           False, 0.15, False)
    _, (path,), status, _ = upscale(context, threading.Event(), image, DIFFUSION, None, "", None, "tiny-flux", None,
                                    False, 32, 8, 4, 0, "", 0.3, 0.2, False, 0.15, False, "PNG", False, None, None,
                                    50, 50, progress=lambda *a, **k: None)
    assert Path(path).name == "art-diffusion-40x32.png" and Image.open(path).size == (40, 32), status


def built_tab(context):
    import gradio as gr

    from ui.tabs import upscale

    with gr.Blocks() as demo:
        upscale.build(context)
    return [block for block in demo.blocks.values() if getattr(block, "label", None)]


def test_suggestions_never_cover_the_path_radio(context):
    """The suggestion runs on every image or size change; its loading cover over the Path radio took the
    artist's click (a CI run: "status-tracker … intercepts pointer events" for a minute)."""
    import gradio as gr

    from ui.tabs import upscale

    with gr.Blocks() as demo:
        upscale.build(context)
    config = demo.get_config_file()
    radio = next(c["id"] for c in config["components"] if c["props"].get("label") == "Path")
    suggesting = [d for d in config["dependencies"] if radio in d["outputs"]]
    assert len(suggesting) == 4 and all(d["show_progress"] == "hidden" for d in suggesting)  # a preset's too
    # a new image's note and its suggested path arrive together: the note never shows before the path is set
    note = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "blk-upscale-input-note")
    on_image, = [d for d in suggesting if d["targets"][0][1] == "change"]
    assert note in on_image["outputs"]


def test_no_texture_lora_unless_the_artist_picks_one(context, tmp_path):
    """The Texture LoRA starts at "(none)" even with LoRAs on disk (it used to preselect the first, which was
    applied); "(none)" stays a choice; the plan names the LoRA in use, or says there is none."""
    from ui.tabs.upscale import DIFFUSION, estimate, upscale

    loras = context.workspace.models / "loras"
    loras.mkdir()
    from safetensors.numpy import save_file  # a whole file (an unreadable one is refused before any work)

    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": np.zeros((4, 32), np.float32)},
              str(loras / "texture.safetensors"))
    lora = next(b for b in built_tab(context) if b.label == "Texture LoRA")
    assert lora.value == "" and lora.choices[0] == ("(none)", "")
    assert ("texture.safetensors", str(loras / "texture.safetensors")) in lora.choices
    image = str(save(tmp_path / "art.png", 16, 20))
    form = (image, DIFFUSION, 2, "", None, "tiny-flux", 32, 8, 4, 0.3, 0.2, False, 0.15, False, None)
    assert "Texture LoRA: none (the base model alone)." in estimate(context, *form, "")
    assert "Texture LoRA: `texture.safetensors`." in estimate(context, *form, str(loras / "texture.safetensors"))
    # its strength (the tab had none: always 1.0), in the plan and in the job's passes
    at_half = estimate(context, *form, str(loras / "texture.safetensors"), False, False, "TIFF", 0, "", 0.5)
    assert "Texture LoRA: `texture.safetensors` at strength 0.5." in at_half, at_half
    from ui.tabs.upscale import diffusion_job

    job = diffusion_job(context, image, tmp_path / "x.tif", 2, "", "tiny-flux", None, None, 32, 8, 4, 0, "", 0.3, 0.2,
                        True, 0.15, False, lora_strength=-0.5)
    assert [p.lora_scale for p in job.passes] == [-0.5, -0.5, -0.5]
    strength = next(b for b in built_tab(context) if b.label == "Texture LoRA strength")
    assert (strength.minimum, strength.maximum, strength.value) == (-1.0, 2.0, 1.0)
    _, path, status, _ = upscale(context, threading.Event(), image, DIFFUSION, 2, "", None, "tiny-flux",
                                 str(tmp_path / "outside.safetensors"), False, 32, 8, 4, 0, "", 0.3, 0.2, False,
                                 0.15, False, "PNG", False, None, progress=lambda *a, **k: None)
    assert path is None and "outside the workspace" in status  # a typed path is still confined


def test_a_typed_region_centre_moves_the_before_and_after_view(context):
    """The region sliders answered a drag's release only: a value typed in their boxes did nothing."""
    import gradio as gr

    from ui.tabs import upscale

    with gr.Blocks() as demo:
        upscale.build(context)
    sliders = [b for b in demo.blocks.values() if getattr(b, "elem_id", "") in ("blk-upscale-region-x",
                                                                                  "blk-upscale-region-y")]
    assert len(sliders) == 2
    for slider in sliders:
        moved = [f for f in demo.fns.values() if (slider._id, "input") in f.targets]
        assert len(moved) == 1 and moved[0].fn is upscale.show_region and moved[0].trigger_mode == "always_last"


def test_number_fields_say_what_they_show(context):
    """Gradio 6's number box shows 0 for an empty value, so a field whose 0 means "automatic" says so, and
    starts at 0: the label is true in the browser (tests/test_browser_upscale.py looks there too)."""
    import gradio as gr

    numbers = {b.label: b.value for b in built_tab(context) if isinstance(b, gr.Number)}
    assert not [label for label in numbers if "empty" in label], numbers
    for label in ("Tile px (0: automatic)", "Steps (0: the model's default)", "DPI (0: the input's)"):
        assert numbers[label] == 0, (label, numbers)


def test_without_an_upscaler_the_tab_starts_on_the_path_that_runs(context, shared_workspace, tmp_path):
    """With no upscaler installed only the diffusion path can run: the tab starts there (its settings, no
    upscaler enlargement ticked), the suggestion stays there, the Real-ESRGAN path says how to install one,
    and a diffusion job told to enlarge with an upscaler it lacks says it used Lanczos."""
    import gradio as gr

    from ui.tabs.upscale import DIFFUSION, ESRGAN, NO_UPSCALER, follow_suggestion, upscale, upscaler_choices

    def defaults():
        blocks = built_tab(context)
        radio = next(b for b in blocks if isinstance(b, gr.Radio) and b.label == "Path")
        enlarge = next(b for b in blocks if isinstance(b, gr.Checkbox) and b.label.startswith("Enlarge with"))
        numbers = {b.label: b.value for b in blocks if isinstance(b, gr.Number)}
        return radio.value, enlarge.value, numbers["Scale"], numbers["Tile px (0: automatic)"]

    assert defaults() == (ESRGAN, True, 4, 0)  # the fixture installs one
    for installed in (context.workspace.models / "upscalers").iterdir():
        installed.unlink()
    assert defaults() == (DIFFUSION, False, 2, 1024)

    image = str(save(tmp_path / "art.png", 16, 20, seed=5))
    radio, last = follow_suggestion(image, 4, "", None, upscalers=False)  # 80×64: Real-ESRGAN's size, but none
    assert (radio.value, last) == (DIFFUSION, "diffusion")
    form = (4, "", None, "tiny-flux", None, True, 32, 8, 1, 0, "", 0.3, 0.2, False, 0.15, False, "PNG", False, None,
            None, 50, 50)
    assert upscale(context, threading.Event(), image, ESRGAN, *form, progress=lambda *a, **k: None)[2] == \
        f"**{NO_UPSCALER}**"
    # a damaged file is no upscaler: not offered, not the default path, and the sentence names it
    (context.workspace.models / "upscalers" / "4x-Broken.pth").write_bytes(b"not a model")
    assert upscaler_choices(context) == [] and defaults()[0] == DIFFUSION
    said = upscale(context, threading.Event(), image, ESRGAN, *form, progress=lambda *a, **k: None)[2]
    assert said.startswith(f"**{NO_UPSCALER} Found but unusable: 4x-Broken.pth is damaged or not a model file"), said
    (context.workspace.models / "upscalers" / "4x-Broken.pth").unlink()
    import shutil

    shutil.copytree(shared_workspace.models / "tiny-flux", context.workspace.models / "tiny-flux")
    diffusion = (image, DIFFUSION, 2, "", None, "tiny-flux", None, True, 32, 8, 1, 0, "", 0.3, 0.2, False, 0.15,
                 False, "PNG", False, None, None, 50, 50)
    status = upscale(context, threading.Event(), *diffusion, progress=lambda *a, **k: None)[2]
    assert "No upscaler chosen, so each step enlarges with Lanczos" in status and "40×32 in" in status, status
    from ui.tabs.upscale import estimate

    planned = estimate(context, image, DIFFUSION, 2, "", None, "tiny-flux", 32, 8, 1, 0.3, 0.2, False, 0.15, False)
    assert "suggested for this size: the diffusion path (no upscaler is installed)." in planned, planned


def test_opening_upscale_chooses_an_installed_upscaler_when_none_is_chosen(context):
    """An upscaler put in upscalers/ while the app ran (or a sketch sent to the Real-ESRGAN path) left the
    Upscaler list blank: "Choose an upscaler model to count its tiles"."""
    from ui.app import build_app
    from ui.tabs.upscale import upscaler_kept_or_default

    folder = context.workspace.models / "upscalers"
    first, = [str(p) for p in folder.iterdir()]
    assert upscaler_kept_or_default(context, None).value == first
    rrdb_file(folder / "A-second.pth")
    second = str(folder / "A-second.pth")
    assert upscaler_kept_or_default(context, first).value == first  # a choice is kept
    assert upscaler_kept_or_default(context, str(folder / "gone.pth")).value == second  # the first listed ×4
    rrdb_file(folder / "0-RealESRGAN_x2plus.pth", in_ch=12)  # ×2 (pixel-unshuffled input), first in the alphabet
    assert upscaler_kept_or_default(context, None).value == second  # Scale starts at 4: a ×4 model, not the ×2
    assert next(b for b in built_tab(context) if b.label.startswith("Upscaler")).value == second
    for path in folder.iterdir():
        path.unlink()
    assert upscaler_kept_or_default(context, first).value is None

    demo = build_app(context)
    upscaler = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "blk-upscale-model")
    choosers = [f for f in demo.fns.values() if f.outputs == [upscaler] and f.inputs == [upscaler]]
    assert len(choosers) == 4  # on opening the tab, and after a sketch, a Stencil asset or a collage is sent


def test_the_input_view_is_made_from_the_file_with_its_bits_and_transparency(tmp_path):
    from ui.tabs.upscale import show_input

    rgba = tmp_path / "stencil.png"
    Image.new("RGBA", (300, 200), (200, 30, 30, 0)).save(rgba)
    deep = tmp_path / "scan16.png"
    Image.fromarray((np.arange(200 * 600).reshape(200, 600) % 65536).astype(np.uint16)).save(deep)
    view, note = show_input(str(rgba))
    assert view.shape == (200, 300, 4) and view[..., 3].max() == 0 and note == "stencil.png: 300×200, 8-bit, " \
        "with transparency."
    view, note = show_input(str(deep))
    assert view.shape == (160, 480, 3) and view.dtype == np.uint8 and note == "scan16.png: 600×200, 16-bit."
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    view, note = show_input(str(tmp_path / "broken.png"))
    assert view is None and note.startswith("**broken.png") and note.count(".") >= 1
    assert show_input(None) == (None, "")


def test_sizes_are_said_in_megapixels_that_are_never_zero():
    from ui.tabs.upscale import megapixels

    assert [megapixels(n) for n in (256 * 192, 999_999, 1_000_000, 8000 * 6000, 3_000_000_000)] == \
        ["0.049 MP", "1 MP", "1.0 MP", "48.0 MP", "3.0 GP"]


def test_an_overlap_of_0_is_kept_and_an_empty_one_is_the_default(context, tmp_path):
    """Overlap 0 (tiles side by side, e.g. to see what the blend hides) was silently the default."""
    from ui.tabs import upscale

    made = [upscale.esrgan_job(context, tmp_path / "in.png", tmp_path / "out.tif", 64, 64, tmp_path / "x4.pth", 0,
                               overlap).overlap for overlap in (0, None, 8)]
    assert made == [0, 32, 8]
    made = [upscale.diffusion_job(context, tmp_path / "in.png", tmp_path / "out.tif", 2, "", "tiny-flux", None, None,
                                  512, overlap, 4, 0, "", 0.3, 0.2, False, 0.1, True).overlap for overlap in (0, None)]
    assert made == [0, 96]


def test_the_size_a_keystroke_shows_comes_from_the_header_without_decoding(tmp_path):
    """Scale and Size ask for the target on every keystroke: a 12 MP input was decoded each time (0.44 s)."""
    import tracemalloc

    from ui.tabs import upscale

    Image.fromarray(np.zeros((2000, 3000, 3), np.uint8)).save(tmp_path / "wide.png")
    tracemalloc.start()
    try:
        sizes = upscale.target(tmp_path / "wide.png", 2, "")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == ((3000, 2000), (6000, 4000))
    assert peak < 1_000_000  # the decoded pixels alone would be 18 MB
    assert upscale.target(tmp_path / "wide.png", None, "9000x6000")[1] == (9000, 6000)


def test_each_path_keeps_its_own_scale_tile_and_overlap():
    """Switching the Path radio used to reset Scale, Tile and Overlap to the path's defaults, so a look at the
    diffusion path lost the overlap typed for Real-ESRGAN. Each path now gets back what it had."""
    from ui.tabs.upscale import DIFFUSION, ESRGAN, PATH_DEFAULTS, path_settings, switch_path

    kept = {"shown": ESRGAN}
    shown, kept, values = switch_path(DIFFUSION, 8, 256, 48, kept)  # the artist's Real-ESRGAN settings
    assert shown is True and values == PATH_DEFAULTS[DIFFUSION]  # the first visit: the path's defaults
    shown, kept, values = switch_path(ESRGAN, 3, 1536, 128, kept)  # diffusion settings typed, then back
    assert shown is False and values == {"scale": 8, "tile": 256, "overlap": 48}
    assert path_settings(DIFFUSION, kept) == {"scale": 3, "tile": 1536, "overlap": 128}
    assert path_settings(ESRGAN, kept) == {"scale": 8, "tile": 256, "overlap": 48}  # the scale the radio's pick gives
    assert switch_path(ESRGAN, 5, 0, 16, kept)[2] == {"scale": 5, "tile": 0, "overlap": 16}  # no move: the form


def test_the_form_speaks_in_its_own_words_and_shows_progress_once(context, tmp_path):
    """16-bit with PNG is refused before any work on both paths, in the form's words (Real-ESRGAN's refusal
    said "--16bit", the diffusion path wrote 8 bits silently); the diffusion plan says how each step enlarges;
    Pass C's slider moves only with Pass C on; the job's progress shows once, over the view (three bars
    covered the plan)."""
    import gradio as gr

    from ui.tabs import upscale as tab

    image = str(save(tmp_path / "art.png", 16, 20))
    deep = tmp_path / "deep.png"
    Image.fromarray((np.arange(16 * 20).reshape(16, 20) * 200).astype(np.uint16)).save(deep)
    model = str(context.workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    for kind in (tab.ESRGAN, tab.DIFFUSION):
        said = tab.upscale(context, threading.Event(), str(deep), kind, 2, "", model, "tiny-flux", None, True, 32, 8,
                           None, 0, "", 0.3, 0.2, False, 0.15, False, "PNG", True, None,
                           progress=lambda *a, **k: None)
        assert said[2] == f"**{tab.SIXTEEN_BITS_NEED_TIFF}**" and "--16bit" not in said[2], kind
    assert not list(context.workspace.outputs("upscale").rglob("*.png"))
    # an 8-bit input has no 16 bits to keep: the box changes nothing, and a PNG is made as before
    made = tab.upscale(context, threading.Event(), image, tab.ESRGAN, 2, "", model, "tiny-flux", None, True, 32, 8,
                       None, 0, "", 0.3, 0.2, False, 0.15, False, "PNG", True, None, progress=lambda *a, **k: None)
    assert made[1] and made[1][0].endswith(".png") and Image.open(made[1][0]).mode == "RGB", made[2]
    form = (image, tab.DIFFUSION, 2, "", model, "tiny-flux", 32, 8, 4, 0.3, 0.2, False, 0.15, False, None, None)
    assert "Each step enlarges with `RealESRGAN_x4plus_tiny.pth` before its passes." in tab.estimate(context, *form,
                                                                                                     True)
    assert "Each step enlarges with Lanczos before its passes." in tab.estimate(context, *form, False)

    with gr.Blocks() as demo:
        tab.build(context)
    blocks = {getattr(b, "label", None): b for b in demo.blocks.values()}
    pass_c, slider = blocks["Pass C (edges)"], blocks["Pass C denoise"]
    assert slider.interactive is False
    toggle, = [f for f in demo.fns.values() if (pass_c._id, "change") in f.targets]
    assert toggle.fn(True).constructor_args["interactive"] is True
    config = demo.get_config_file()
    job, = [d for d in config["dependencies"] if d.get("api_name") == "upscale"]
    view = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "blk-upscale-slider")
    assert job["show_progress_on"] == [view]


def test_the_compile_box_reaches_both_paths_and_keeps_its_own_pace(context, tmp_path):
    """The box is an input of Upscale and of Estimate (last, as their handlers take it). Ticked, the ESRGAN
    job runs compiled (the result says so) and its pace is kept apart from uncompiled jobs' (its first
    tiles wait for the compiler); the diffusion job gets it as its memory option."""
    import json

    import gradio as gr
    import torch._dynamo

    from blk.upscale.rates import _path
    from ui.tabs import upscale as tab
    from ui.tabs.upscale import ESRGAN, diffusion_job, upscale

    with gr.Blocks() as demo:
        tab.build(context)
    config = demo.get_config_file()
    box = next(c for c in config["components"] if c["props"].get("elem_id") == "blk-upscale-compile")
    assert box["props"]["value"] is context.workspace.settings.compile is False
    estimate_button = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "blk-upscale-estimate")
    job, = [d for d in config["dependencies"] if d.get("api_name") == "upscale"]
    estimating, = [d for d in config["dependencies"] if d["targets"][0][0] == estimate_button]
    named = {c["id"]: c["props"].get("label") for c in config["components"]}
    # both end as their signatures do: Estimate with the format, seed, prompt and strength Start's job is keyed by
    assert [named[i] for i in job["inputs"][-2:]] == [box["props"]["label"], "Texture LoRA strength"]
    assert [named[i] for i in estimating["inputs"][-5:]] == [box["props"]["label"], "Format (TIFF: tiled, any size)",
                                                          "Seed (same for every tile)", "Prompt (usually empty)",
                                                          "Texture LoRA strength"]

    image = str(save(tmp_path / "art.png", 40, 48, seed=3))
    model = str(context.workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    form = [image, ESRGAN, 4, "", model, "tiny-flux", None, False, 32, 8, None, 0, "", 0.3, 0.2, False, 0.15, False,
            "TIFF", False, None, None, 50, 50, None]
    _, (path,), status, _ = upscale(context, threading.Event(), *form, compile_models=True,
                                    progress=lambda *a, **k: None)
    with tifffile.TiffFile(path) as tif:
        assert json.loads(tif.pages[0].description)["compile"] is True, status
    assert list(json.loads(_path(context.workspace).read_text())) == ["esrgan|RealESRGAN_x4plus_tiny.pth|32|compiled"]
    torch._dynamo.reset()
    job = diffusion_job(context, image, tmp_path / "x.tif", 2, "", "tiny-flux", None, None, 64, 16, 4, 0, "", 0.3,
                        0.2, False, 0.15, True, None, True)
    assert job.memory.compile and not diffusion_job(context, image, tmp_path / "x.tif", 2, "", "tiny-flux", None,
                                                    None, 64, 16, 4, 0, "", 0.3, 0.2, False, 0.15, True).memory.compile


def test_a_job_cancelled_before_midnight_continues_after_it_in_its_own_days_folder(context, tmp_path, monkeypatch):
    """The result folder is dated: a job cancelled (or killed) one day and started again the next looked in the
    new day's folder, started afresh, and left the first day's hidden canvases behind for good."""
    import time

    from ui.tabs.upscale import ESRGAN, upscale

    image = str(save(tmp_path / "wall.png", 40, 48, seed=5))
    model = str(context.workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    form = [image, ESRGAN, 4, "", model, "tiny-flux", None, False, 16, 4, None, 0, "", 0.3, 0.2, False, 0.15, False,
            "TIFF", False, None, None, 50, 50]
    cancel = threading.Event()

    def progress(fraction, desc=None):
        if fraction > 0:
            cancel.set()  # Cancel clicked once a tile is done: the finished rows are kept for a resume

    real_strftime = time.strftime
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "2026-01-01" if fmt == "%Y-%m-%d" else real_strftime(fmt, *a))
    _, offered, status, _ = upscale(context, cancel, *form, progress=progress)
    assert offered is None and "ancel" in status, status
    monkeypatch.undo()  # midnight passes
    upscales = context.workspace.outputs("upscale")
    yesterday, today = upscales / "2026-01-01", upscales / time.strftime("%Y-%m-%d")
    assert [p.name for p in yesterday.glob(".blk-tmp-*.journal.json")] == [
        ".blk-tmp-wall-esrgan-192x160.tif.journal.json"]
    _, offered, status, _ = upscale(context, threading.Event(), *form, progress=lambda f, desc=None: None)
    assert [Path(p).parent for p in offered] == [yesterday] and "resum" in status.lower(), status
    assert list(upscales.rglob(".blk-tmp-*")) == []  # nothing hidden left behind
    assert not today.exists() or list(today.iterdir()) == []

    fresh = upscale(context, threading.Event(), *form)[1]  # that job finished: the next goes into today's folder
    assert [Path(p).parent for p in fresh] == [today]


def test_diffusion_without_a_base_model_or_with_a_vanished_upscaler_is_one_sentence(context, tmp_path):
    """A cleared Base model read "/work/… is not a diffusers model folder" (the studio's own folder), and
    None a TypeError; an upscaler file gone since it was chosen escaped from the first enlargement as the
    operating system's error, while Estimate promised to enlarge with it."""
    import shutil

    from ui.tabs.upscale import DIFFUSION, estimate, upscale

    image = str(save(tmp_path / "art.png", 16, 20, seed=5))
    quiet = {"progress": lambda *a, **k: None}
    for model in ("", None):
        form = (2, "", None, model, None, False, 32, 8, 1, 0, "", 0.3, 0.2, False, 0.15, False, "PNG", False, None,
                None, 50, 50)
        assert upscale(context, threading.Event(), image, DIFFUSION, *form, **quiet)[2] == "**Choose a base model.**"
        planned = estimate(context, image, DIFFUSION, 2, "", None, model, 32, 8, 1, 0.3, 0.2, False, 0.15, False)
        assert planned.endswith("**Choose a base model.**"), planned

    upscalers = context.workspace.models / "upscalers"
    gone = upscalers / "4x-Gone.pth"
    shutil.copy(next(upscalers.glob("*.pth")), gone)
    gone.unlink()  # chosen in the dropdown, then removed
    said = f"**The upscaler model {gone} does not exist.**"
    form = (2, "", str(gone), "tiny-flux", None, True, 32, 8, 1, 0, "", 0.3, 0.2, False, 0.15, False, "PNG", False,
            None, None, 50, 50)
    assert upscale(context, threading.Event(), image, DIFFUSION, *form, **quiet)[2] == said
    planned = estimate(context, image, DIFFUSION, 2, "", str(gone), "tiny-flux", 32, 8, 1, 0.3, 0.2, False, 0.15,
                       False, enlarge_first=True)
    assert planned.endswith(said), planned
    assert not list(context.workspace.outputs("upscale").rglob("*.png"))


def test_estimate_says_where_start_resumes_a_cancelled_diffusion_job(context, shared_workspace, tmp_path):
    """Estimate planned a fresh job while Start would resume the cancelled one: it now says where Start
    continues, for the output Start writes (another format is another job)."""
    import shutil

    from ui.tabs.upscale import DIFFUSION, estimate, upscale

    shutil.copytree(shared_workspace.models / "tiny-flux", context.workspace.models / "tiny-flux")
    image = str(save(tmp_path / "art.png", 16, 20, seed=5))
    plan_form = (image, DIFFUSION, 4, "", None, "tiny-flux", 32, 8, 4, 0.3, 0.2, False, 0.15, False, None, None, False,
                 False)
    keyed = (7, "ink wash")  # the job's seed and prompt: Estimate read them as 0 and "" and found no resume
    assert "resumes" not in estimate(context, *plan_form, "PNG", *keyed)
    cancel = threading.Event()

    def progress(fraction, desc=None):
        if desc and "pass A, tile 3/" in desc:
            cancel.set()  # Cancel clicked in pass A: the finished rows are kept

    status = upscale(context, cancel, image, DIFFUSION, 4, "", None, "tiny-flux", None, False, 32, 8, 4, *keyed, 0.3,
                     0.2, False, 0.15, False, "PNG", False, None, None, 50, 50, progress=progress)[2]
    assert "ancel" in status, status
    from blk.upscale.rates import record

    record(context.workspace, "diffusion|tiny-flux|32|per-step", 36.0, 36)  # 1 s a tile-step
    assert "Time: about 36 s of denoising" in estimate(context, *plan_form, "TIFF", *keyed)  # 9 tiles × (3 + 1) steps
    assert "resumes" not in estimate(context, *plan_form, "PNG", 8, "ink wash")  # another seed: another job
    planned = estimate(context, *plan_form, "PNG", *keyed)
    resumes = re.search(r"Starting resumes the interrupted job at step 1 of 1, pass A, tile (\d+) of 18 \(tiles of at "
                        r"most 32 px\)\.", planned)
    assert resumes, planned
    left = 36 - (int(resumes.group(1)) - 1) * 3  # pass A's finished tiles (3 steps each at 0.3) take no time
    assert 27 <= left < 36 and f"Time: about {left} s of denoising" in planned, planned
    assert "resumes" not in estimate(context, *plan_form, "TIFF", *keyed)  # a TIFF is another job, started afresh
    notes = []
    upscale(context, threading.Event(), image, DIFFUSION, 4, "", None, "tiny-flux", None, False, 32, 8, 4, *keyed, 0.3,
            0.2, False, 0.15, False, "PNG", False, None, None, 50, 50, progress=lambda f, desc=None: notes.append(desc))
    assert any(desc and desc.startswith("Resuming an interrupted job at step 1 of 1, pass A") for desc in notes), notes
    assert any(desc and f"Time: about {left} s of denoising" in desc for desc in notes), notes  # what is left


def test_estimate_says_where_start_resumes_a_cancelled_esrgan_job_and_counts_only_whats_left(context, tmp_path):
    """Real-ESRGAN's Estimate planned for a made-up output, so it never saw the cancelled job Start would resume,
    and both it and Start timed the whole job again."""
    from blk.upscale.rates import rate_key, record
    from ui.tabs.upscale import ESRGAN, estimate, upscale

    image = str(save(tmp_path / "wall.png", 40, 48, seed=6))
    model = str(context.workspace.models / "upscalers" / "RealESRGAN_x4plus_tiny.pth")
    plan_form = (image, ESRGAN, 4, "", model, "tiny-flux", 16, 4, None, 0.3, 0.2, False, 0.15, True, None, None,
                 False, False)
    fresh = estimate(context, *plan_form, "TIFF")
    total = int(re.search(r"(\d+) tiles of up to 16 px in 1 model pass", fresh).group(1))
    assert "resumes" not in fresh and total > 6
    record(context.workspace, rate_key("esrgan", model, 16), total, total)  # 1 s a tile
    assert f"Time: about {total} s" in estimate(context, *plan_form, "TIFF")
    cancel = threading.Event()

    def progress(fraction, desc=None):
        if desc and re.search(r"tile [4-9]/", desc):
            cancel.set()  # Cancel clicked after a few tiles: the finished rows are kept

    form = (image, ESRGAN, 4, "", model, "tiny-flux", None, False, 16, 4, None, 0, "", 0.3, 0.2, False, 0.15, False)
    status = upscale(context, cancel, *form, "TIFF", False, None, None, 50, 50, progress=progress)[2]
    assert "ancel" in status, status
    planned = estimate(context, *plan_form, "TIFF")
    resumes = re.search(rf"Starting resumes the interrupted job at pass 1, tile (\d+) of {total} \(after the row "
                        r"ending at input y=\d+, tiles of at most 16 px\)\.", planned)
    assert resumes, planned
    left = total - (int(resumes.group(1)) - 1)
    assert 0 < left < total and f"Time: about {left} s" in planned, planned
    assert "resumes" not in estimate(context, *plan_form, "PNG")  # a PNG is another output: another job
    notes = []
    upscale(context, threading.Event(), *form, "TIFF", False, None, None, 50, 50,
            progress=lambda f, desc=None: notes.append(desc))
    assert any(desc and desc.startswith("Resuming an interrupted job at pass 1, tile") for desc in notes), notes
    assert any(desc and f"Time: about {left} s" in desc for desc in notes), notes  # the time left, not the job's
