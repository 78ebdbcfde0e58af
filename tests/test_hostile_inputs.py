"""Bad input: a corpus of hostile files (made here, see tests/support/hostile.py) through every entry point
that takes files — the engine (dataset scan/check, captions, thumbnails), the CLI (`dataset check`,
`train`, `sketch --lora`, `stencil alpha`, `upscale`) and the UI handlers (called directly with a real
StudioContext). Each file is either used correctly or refused with ONE sentence naming it; nothing
crashes, no caption is lost, no temporary or half-written file is left.

Counts printed by these tests (run with -s) are the ones quoted in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from blk.atomic import TEMP_PREFIX
from blk.errors import BadImage
from tests.conftest import ROOT
from tests.support.hostile import BAD_PRESETS, CAPTIONS, bad_model_files, encoded, make_image_corpus, noise

HIDDEN = {"..dots.png"}  # starts with a dot: a hidden file, skipped by scans like .blk/ (by design)


def one_sentence(text: str) -> bool:
    text = text.strip()
    return bool(text) and "\n" not in text and "Traceback" not in text and len(text) < 600


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob(f"{TEMP_PREFIX}*"))


@pytest.fixture(scope="module")
def hostile(shared_workspace, tmp_path_factory):
    """A workspace of its own (tiny models copied from the session's) holding the corpus as a dataset."""
    from blk.workspace import Workspace

    root = tmp_path_factory.mktemp("hostile")
    (root / "ws" / "models").mkdir(parents=True)
    for name in ("tiny-flux", "tiny-sdxl"):
        shutil.copytree(shared_workspace.models / name, root / "ws" / "models" / name)
    workspace = Workspace(root / "ws")
    dataset = workspace.datasets / "hostile"
    made = make_image_corpus(dataset)
    # a 16-bit PNG cut in half goes down read_pixels' own 16-bit branch
    grey16 = Image.fromarray(np.random.default_rng(0).integers(0, 65535, (64, 64)).astype(np.uint16))
    data = encoded(grey16, "PNG")
    (dataset / "bad_truncated_grey16.png").write_bytes(data[: len(data) // 2])
    made["bad_truncated_grey16.png"] = ("bad", "16-bit PNG cut in half")
    return {"root": root, "workspace": workspace, "dataset": dataset, "made": made}


# -- engine: open, scan, check, thumbnails ----------------------------------------------------------

def test_every_file_is_an_image_or_one_sentence(hostile):
    from blk.data import images

    dataset, made = hostile["dataset"], hostile["made"]
    outcomes = {"ok": 0, "refused": 0}
    for rel, (expected, what) in made.items():
        path = dataset / rel
        try:
            image = images.open_image(path)
            pixels = images.read_pixels(path)
            info = images.read_info(path)
        except BadImage as exc:
            assert expected == "bad", f"{rel} ({what}) was refused: {exc}"
            assert one_sentence(str(exc)) and Path(rel).name in str(exc), (rel, str(exc))
            outcomes["refused"] += 1
            continue
        assert expected == "ok", f"{rel} ({what}) was accepted"
        assert image.mode in ("RGB", "RGBA") and (info.width, info.height) == image.size, rel
        assert pixels.shape[:2] == (image.height, image.width) and 0 <= pixels.min() <= pixels.max() <= 1, rel
        outcomes["ok"] += 1
    # EXIF orientations 5–8 swap the sides; content decides, not the name
    assert images.open_image(dataset / "exif_6.jpg").size == (20, 40)
    assert images.open_image(dataset / "exif_2.jpg").size == (40, 20)
    assert images.read_info(dataset / "jpeg_named.png").format == "JPEG"
    assert outcomes["ok"] + outcomes["refused"] == len(made)
    folder = dataset.parent / "folder.png"  # a folder named like an image read "is damaged ([Errno 21] …)"
    folder.mkdir(exist_ok=True)
    with pytest.raises(BadImage, match=r"^folder\.png is a folder, not an image file\.$"):
        images.open_image(folder)
    print(f"\n[corpus] images tried: {len(made)}, usable: {outcomes['ok']}, refused with a sentence: "
          f"{outcomes['refused']}")


def test_scan_check_and_thumbnails_name_every_bad_file(hostile):
    from blk.data.check import check_dataset
    from blk.data.scan import scan
    from blk.data.thumbnails import thumbnail

    dataset, made = hostile["dataset"], hostile["made"]
    bad = {rel for rel, (expected, _) in made.items() if expected == "bad"}
    good = {rel for rel, (expected, _) in made.items() if expected == "ok"} - HIDDEN
    report = check_dataset(dataset, {}, [], "none")
    reasons = dict(report.bad_files)
    assert set(reasons) == bad
    assert all(one_sentence(reason) and Path(rel).name in reason for rel, reason in reasons.items())
    assert report.usable == len(good) and report.images == len(good) + len(bad)
    records = scan(dataset)
    assert scan(dataset) == records  # the cached rescan says the same
    thumbs = 0
    for record in records:
        if record.ok:
            with Image.open(thumbnail(dataset, record, size=64)) as thumb:
                assert max(thumb.size) <= 64 and min(thumb.size) >= 1
            thumbs += 1
        else:
            with pytest.raises(BadImage):
                thumbnail(dataset, record)
    assert thumbs == len(good)
    assert leftovers(dataset) == []
    print(f"\n[check] scanned {len(records)}: usable {report.usable}, bad {len(reasons)} (each named), "
          f"thumbnails {thumbs}; hidden and skipped: {len(HIDDEN)}")


def test_hostile_captions_are_read_warned_and_never_lost(tmp_path):
    from blk.data.captions import CaptionStore
    from blk.data.check import check_dataset
    from blk.errors import CaptionConflict, UnsafePath

    dataset = tmp_path / "captions"
    dataset.mkdir()
    for index, (stem, (data, _)) in enumerate(CAPTIONS.items()):
        noise(16, 16, index).save(dataset / f"{stem}.png")
        (dataset / f"{stem}.txt").write_bytes(data)
    store = CaptionStore(dataset)
    report = check_dataset(dataset, {}, [], "none")
    warned = {Path(rel).stem for rel, _ in report.caption_warnings}
    assert warned == {"cp1252", "latin1", "utf16", "binary"}  # not UTF-8: read with a warning
    assert {Path(rel).stem for rel in report.uncaptioned} == {"blank", "empty"}
    outcomes = {"saved": 0, "conflicts refused": 0}
    for stem, (data, _) in CAPTIONS.items():
        caption = store.read(f"{stem}.png")
        assert caption.exists
        # someone else's stale edit is refused; the file keeps its bytes, the refused text is in the history
        with pytest.raises(CaptionConflict):
            store.save(f"{stem}.png", "a stale edit", base_hash="0" * 64)
        outcomes["conflicts refused"] += 1
        assert (dataset / f"{stem}.txt").read_bytes() == data
        saved = store.save(f"{stem}.png", caption.text + " (edited)", caption.hash)
        outcomes["saved"] += 1
        assert (dataset / f"{stem}.txt").read_bytes() == (caption.text + " (edited)").encode("utf-8")
        texts = [v["text"] for v in store.versions(f"{stem}.png")]
        assert "a stale edit" in texts and saved.text in texts
        if data:
            assert caption.text in texts  # what was on disk before the studio, kept as "original"
    assert store.read("bom.png").text.startswith("blkstyle")  # the BOM is not part of the caption
    assert len(store.read("huge.png").text) > 1_000_000
    for escape in ("../outside.png", "/etc/passwd", ".blk/history.png", "sub/../../x.png"):
        with pytest.raises(UnsafePath):
            store.read(escape)
    assert leftovers(dataset) == []
    print(f"\n[captions] files tried: {len(CAPTIONS)}; {outcomes}")


# -- CLI: one child process runs every case (tests/support/cli_batch.py) ----------------------------

def _cli_cases(h) -> dict[str, list[str]]:
    ws, dataset, root = str(h["workspace"].root), h["dataset"], h["root"]
    cases = {"check": ["dataset", "check", str(dataset), "--model", "tiny-flux"],
             "alpha": ["stencil", "alpha", str(dataset), "--out", str(root / "alpha-out")]}
    for name in BAD_PRESETS:
        cases[f"train:{name}"] = ["train", str(root / "presets" / name), "--dataset", str(root / "small"),
                                  "--model", "tiny-flux", "--steps", "1", "--run-dir", str(root / "runs" / name)]
    cases["train:missing.yaml"] = ["train", str(root / "presets" / "missing.yaml")]
    cases["train:folder"] = ["train", str(root / "presets")]
    for name in ("sdxl_for_flux.safetensors", "random.safetensors", "list_header.safetensors", "empty.safetensors",
                 "evil_zip.pth", "missing.safetensors"):
        cases[f"sketch:{name}"] = ["sketch", "--model", "tiny-flux", "--prompt", "x", "--size", "64x64", "--steps", "1",
                                   "--lora", f"{root / 'loras' / name}:0.8", "--out", str(root / "sketch-out")]
    for name in ("evil_zip.pth", "evil_raw.pth", "text.pth", "empty.pth", "list.pth"):
        cases[f"upscale-model:{name}"] = ["upscale", str(dataset / "good_png.png"), "--model",
                                          str(root / "upscalers" / name), "--scale", "2",
                                          "--out", str(root / "upscale-out" / f"{name}.tif")]
    for name in ("bad_truncated_jpeg.jpg", "bad_text_named.jpg", "bad_empty_tiff.tif", "bad_bomb_webp.webp",
                 "bad_crc_png.png", "bad_bomb_png.png", "bad_bomb_tiff.tif"):
        cases[f"upscale-image:{name}"] = ["upscale", str(dataset / name), "--model", str(root / "x4.pth"),
                                          "--scale", "2", "--out", str(root / "upscale-out" / f"{name}.tif")]
    return {key: ["--workspace", ws, *argv] for key, argv in cases.items()}


CLI_EXPECTED_ERRORS = [f"train:{n}" for n in BAD_PRESETS if n not in ("empty.yaml", "unknown_key.yaml")] + \
    ["train:missing.yaml", "train:folder"] + \
    [f"sketch:{n}" for n in ("sdxl_for_flux.safetensors", "random.safetensors", "list_header.safetensors",
                             "empty.safetensors", "evil_zip.pth", "missing.safetensors")] + \
    [f"upscale-model:{n}" for n in ("evil_zip.pth", "evil_raw.pth", "text.pth", "empty.pth", "list.pth")] + \
    [f"upscale-image:{n}" for n in ("bad_truncated_jpeg.jpg", "bad_text_named.jpg", "bad_empty_tiff.tif",
                                    "bad_bomb_webp.webp", "bad_crc_png.png", "bad_bomb_png.png", "bad_bomb_tiff.tif")]
KNOWN_BUGS: dict[str, str] = {}  # command lines that misbehave today (none: each one found was fixed)


@pytest.fixture(scope="module")
def cli_results(hostile, shared_workspace):
    """Make the model files and presets, then run every case in one child process."""
    import torch

    from tests.support.loras import make_random_lora
    from tests.test_upscale_esrgan import rrdb_state

    root = hostile["root"]
    (root / "presets").mkdir()
    for name, data in BAD_PRESETS.items():
        (root / "presets" / name).write_bytes(data)
    small = root / "small"
    small.mkdir()
    noise(64, 64, 0).save(small / "a.png")
    (small / "a.txt").write_text("blkstyle, noise")
    marker = root / "PWNED"
    bad_model_files(root / "loras", marker, ".safetensors")
    bad_model_files(root / "upscalers", marker, ".pth")
    shutil.copy(root / "upscalers" / "evil_zip.pth", root / "loras" / "evil_zip.pth")
    sdxl = make_random_lora(hostile["workspace"].models / "tiny-sdxl", "sdxl", root / "sdxl-lora")
    shutil.copy(sdxl, root / "loras" / "sdxl_for_flux.safetensors")
    torch.save(rrdb_state(), root / "x4.pth")
    cases = _cli_cases(hostile)
    (root / "cases.json").write_text(json.dumps(list(cases.values())))
    subprocess.run([sys.executable, str(ROOT / "tests/support/cli_batch.py"), str(root / "cases.json"),
                    str(root / "results.json")], cwd=ROOT, check=True, timeout=600)
    results = json.loads((root / "results.json").read_text())
    assert not marker.exists(), "a pickle ran code"
    outcomes = {}
    for key, result in zip(cases, results):
        outcomes[result["rc"]] = outcomes.get(result["rc"], 0) + 1
    print(f"\n[cli] command lines run: {len(cases)}; exit codes: {outcomes}")
    return dict(zip(cases, results))


def _error_line(result) -> str:
    """The stderr of a failed command without progress lines (\\r-separated)."""
    return result["stderr"].replace("\r", "\n").strip()


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[k]))
                                 if k in KNOWN_BUGS else k for k in CLI_EXPECTED_ERRORS])
def test_cli_refuses_with_one_error_line(cli_results, key):
    result = cli_results[key]
    lines = [line for line in _error_line(result).splitlines() if line.strip() and not line.startswith("tile ")]
    assert result["rc"] in (1, 2), (key, result["rc"], result["stderr"][-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (key, lines)
    assert one_sentence(lines[0])
    argv = result["argv"]
    if key.startswith("upscale-image:"):
        assert Path(argv[argv.index("upscale") + 1]).name in lines[0]


def test_cli_dataset_check_and_stencil_alpha_name_each_bad_file(cli_results, hostile):
    made = hostile["made"]
    bad = sorted(rel for rel, (expected, _) in made.items() if expected == "bad")
    check = cli_results["check"]
    assert check["rc"] == 1 and check["stderr"].strip() == "", check["stderr"][-2000:]
    for rel in bad:
        assert any(line.strip().startswith(Path(rel).name) for line in check["stdout"].splitlines()), rel
    alpha = cli_results["alpha"]
    assert alpha["rc"] == 1 and "Traceback" not in alpha["stderr"]
    failed = [line for line in alpha["stdout"].splitlines() if line.strip().startswith("failed:")]
    for rel in bad:
        assert any(Path(rel).name in line for line in failed), rel
    out = hostile["root"] / "alpha-out"
    written = {p.name for p in out.rglob("*.png")}
    assert not any(name.startswith("bad_") for name in written)  # nothing half-written for a refused file
    for path in out.rglob("*.png"):
        with Image.open(path) as image:
            image.load()
            assert image.mode in ("RGBA", "I;16", "LA") or image.mode.startswith("RGBA"), path
    assert leftovers(hostile["root"]) == []
    print(f"\n[cli] dataset check named {len(bad)} bad files; stencil alpha converted {len(written)}, "
          f"refused {len(failed)}")


def test_cli_stencil_alpha_failures_name_the_file(cli_results):
    failed = [line for line in cli_results["alpha"]["stdout"].splitlines() if line.strip().startswith("failed:")]
    assert all(".png" in line or ".jp" in line or ".tif" in line or ".bmp" in line or ".webp" in line
               for line in failed), failed


def test_train_refuses_unknown_sections_in_a_preset(cli_results):
    """A misspelt section must not be silently ignored (the run would train with defaults)."""
    result = cli_results["train:unknown_key.yaml"]
    if result["rc"] == 2 and "bogus_section" in result["stderr"]:
        return
    pytest.xfail("blk/train/config.py accepts a preset with an unknown top-level key (bogus_section) and "
                 "trains with the defaults: " + _error_line(result)[:200])


# -- UI handlers, called as Gradio calls them ---------------------------------------------------------

def no_progress(*_args, **_kwargs):
    return None


@pytest.fixture(scope="module")
def context(hostile):
    from ui.context import StudioContext

    return StudioContext(hostile["workspace"], demo=True, demo_reason="test")


def forged_pngs(folder: Path) -> dict[Path, str]:
    """PNGs whose embedded parameters are hostile."""
    from blk.generate.metadata import PARAMETERS_KEY

    folder.mkdir(parents=True, exist_ok=True)
    payloads = {"not_json": "{nope", "a_list": "[1, 2, 3]", "a_string": '"hello"',
                "loras_not_list": '{"loras": "x", "seed": 1}',
                "lora_without_keys": '{"loras": [{}], "seed": 2}',
                "lora_outside": '{"loras": [{"path": "/etc/hostname", "name": "x", "scale": 1}], "seed": 3}',
                "huge_prompt": json.dumps({"prompt": "x" * 2_000_000, "seed": 4})}
    made = {}
    for stem, text in payloads.items():
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_KEY, text, zip=True)
        path = folder / f"{stem}.png"
        noise(8, 8, 0).save(path, pnginfo=info)
        made[path] = stem
    return made


def test_ui_load_parameters_never_raises(context, hostile, tmp_path):
    from ui.tabs.sketch import load_parameters

    dataset, made = hostile["dataset"], hostile["made"]
    files = [dataset / rel for rel in made] + list(forged_pngs(tmp_path))
    crashes = []
    for path in files:
        try:
            values = load_parameters(context, str(path))
        except Exception as exc:  # noqa: BLE001  (this is what the user would see as an error popup)
            crashes.append(f"{path.name}: {type(exc).__name__}: {exc}"[:200])
            continue
        assert len(values) == 14 and isinstance(values[-1], str)
        lora_rows = values[3] if isinstance(values[3], list) else []
        for row in lora_rows:  # a path read from a file is only a suggestion; generate() confines it
            assert isinstance(row, list)
    print(f"\n[ui] load_parameters: {len(files)} files, {len(crashes)} raised")
    if crashes:
        pytest.xfail("ui/tabs/sketch.py load_parameters / blk/generate/metadata.py read_parameters raise on: "
                     + "; ".join(crashes))


def test_ui_import_keeps_content_type_and_refuses_the_rest(context, hostile):
    from ui.tabs.caption import import_images

    dataset, made = hostile["dataset"], hostile["made"]
    files = [str(dataset / rel) for rel in made]
    _, status, _ = import_images(context, "imported", None, files)
    assert "Traceback" not in status
    folder = context.workspace.datasets / "imported"
    names = {p.name for p in folder.iterdir() if p.is_file()}
    bad = [rel for rel, (expected, _) in made.items() if expected == "bad"]
    assert not any(name.startswith("bad_") for name in names)
    assert "png_named.png" in names and "jpeg_named.jpg" in names  # stored under their content's type
    for rel in bad:
        assert Path(rel).name in status, rel
    assert leftovers(folder) == []
    print(f"\n[ui] import: {len(files)} uploaded, {len(names)} kept, {len(bad)} refused by name")


def test_ui_ink_to_alpha_and_upscale_answer_with_a_status(context, hostile):
    from ui.tabs import stencil, upscale

    dataset, made = hostile["dataset"], hostile["made"]
    bad = [dataset / rel for rel, (expected, _) in made.items() if expected == "bad"]
    outputs, status, _ = stencil.ink_to_alpha(context, [str(p) for p in bad] + [str(dataset / "good_png.png")], None,
                                           True, "#ffffff", 0.0, 1.0, progress=no_progress)
    assert len(outputs) == 1 and all(p.name in status for p in bad)
    cancel = threading.Event()
    upscalers = hostile["root"] / "upscalers"
    statuses = 0
    for image, model in [(p, hostile["root"] / "x4.pth") for p in bad[:12]] + \
                        [(dataset / "good_png.png", upscalers / n) for n in ("evil_zip.pth", "text.pth", "empty.pth")]:
        model_in_ws = context.workspace.models / "upscalers" / model.name
        model_in_ws.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model, model_in_ws)
        pair, path, text, _ = upscale.upscale(context, cancel, str(image), upscale.ESRGAN, 2, "", str(model_in_ws), None,
                                           None, False, 64, 8, None, 0, "", 0.3, 0.2, False, 0.15, False, "TIFF",
                                           False, None, progress=no_progress)
        assert pair is None and path is None and one_sentence(text.strip("*")), (image.name, text)
        statuses += 1
        estimate = upscale.estimate(context, str(image), upscale.ESRGAN, 2, "", None, None, 64, 8, None, 0.3,
                                    0.2, False, 0.15, False)
        assert isinstance(estimate, str)
    assert leftovers(context.workspace.root) == []
    assert not list(context.workspace.outputs("upscale").rglob("*.tif"))
    print(f"\n[ui] ink_to_alpha: {len(bad)} bad + 1 good; upscale: {statuses} refusals, each one status line")


def test_ui_bad_lora_is_one_status_line(context, hostile, cli_results):
    from ui.lora_stack import add_lora
    from ui.tabs.sketch import generate

    loras = context.workspace.models / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    cancel = threading.Event()
    for name in ("random.safetensors", "sdxl_for_flux.safetensors", "list_header.safetensors"):
        shutil.copy(hostile["root"] / "loras" / name, loras / name)
        items, message = add_lora(context, str(loras / name), [])
        assert message == "" and items == [[str(loras / name), 1.0]]
        _, _, status, _ = generate(context, cancel, [], "tiny-flux", "x", "", items, 0.25, "custom size", 64, 64, 1,
                                   None, 1, False, 1, False, False, False, progress=no_progress)
        assert name in status and one_sentence(status.strip("*")), status
    for bad in ("", str(loras), str(loras / "missing.safetensors")):
        items, message = add_lora(context, bad, [])
        assert items == [] and message
    assert not list(context.workspace.outputs("sketch").rglob("*.png"))
