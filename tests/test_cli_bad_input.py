"""The command line's answer to bad input is one sentence (`error: …`, exit 2) before any work, never a traceback,
and it loses nothing: cases from an audit of every command (a finished run trained over, a run resumed on the
other family and left unresumable, absurd numbers that ran until memory ran out, NaNs that drew black images,
folders given for files, a second upscale that replaced the first)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blk.cli import main
from tests.conftest import copy_trained_run


def said(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of `python -m blk ARGV`, in this process; argparse's refusals exit 2 as well."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_folder_is_never_trained_over_nor_resumed_on_another_model(shared_workspace, trained_run, tmp_path,
                                                                         capsys):
    run = copy_trained_run(trained_run, tmp_path / "run")
    before = fingerprint(run)
    ws = str(shared_workspace.root)
    code, err = said(capsys, "--workspace", ws, "train", str(run / "config.yaml"), "--steps", "2",
                     "--run-dir", str(run))
    assert code == 2 and f"already holds a run: continue it with --resume {run}" in err, err
    code, err = said(capsys, "--workspace", ws, "train", "--resume", str(run), "--model", "tiny-sdxl",
                     "--steps", "14")
    assert code == 2 and "run was trained on tiny-flux and resumes only on it" in err, err
    assert fingerprint(run) == before  # nothing of the run changed, its config.yaml included
    code, err = said(capsys, "--workspace", ws, "train", str(run / "config.yaml"), "--steps", "-5")
    assert code == 2 and "argument --steps: -5 is outside the range (1 or more)" in err, err
    (tmp_path / "not-a-run").mkdir()
    for folder in (tmp_path / "not-a-run", tmp_path / "nowhere"):  # it read "…/config.yaml cannot be read"
        code, err = said(capsys, "--workspace", ws, "train", "--resume", str(folder))
        assert code == 2 and err == (f"error: {folder} is not a training run's folder (it has no config.yaml); "
                                     f"--resume takes a folder under {shared_workspace.runs}.\n"), err
    assert list((tmp_path / "not-a-run").iterdir()) == [] and not (tmp_path / "nowhere").exists()
    preset = str(Path(__file__).resolve().parents[1] / "presets" / "conceptor-flux-dev.yaml")
    for model, notice in (("tiny-sdxl", True), ("tiny-flux", False)):  # a Flux preset on SDXL trained without a word
        code, err = said(capsys, "--workspace", ws, "train", preset, "--model", model, "--dataset",
                         str(tmp_path / "none"), "--run-dir", str(tmp_path / "other-family"))
        assert code == 2 and err.endswith(f"error: {tmp_path / 'none'} is not a folder (nor a dataset in "
                                          f"{shared_workspace.datasets}).\n"), err
        assert err.startswith("notice: conceptor was made for flux-dev (Flux) and now trains tiny-sdxl (SDXL): its "
                              "values were chosen for Flux") == notice, err
    code, err = said(capsys, "--workspace", ws, "train", "--model", "tiny-sdxl", "--dataset", str(tmp_path / "none"))
    assert code == 2 and err.startswith("error: "), err  # no preset: the defaults' tiny-flux is no preset's family
    code, err = said(capsys, "--workspace", ws, "train", "--steps", "2", "--run-dir", str(tmp_path / "no-data"))
    assert code == 2 and "Choose a dataset to train on (data.dataset in the config, or --dataset on the command " \
                         "line)." in err, err


@pytest.mark.parametrize("argv, expected", [
    (["sketch", "--model", "tiny-flux", "--steps", "100000000"], "argument --steps: 100000000 is outside the range"),
    (["sketch", "--model", "tiny-flux", "--count", "1000000000"], "argument --count: 1000000000 is outside"),
    (["sketch", "--model", "tiny-flux", "--guidance", "nan"], "argument --guidance: nan is not a finite number"),
    (["sketch", "--model", "tiny-flux", "--seed", "-5"], "argument --seed: -5 is outside the range (from 0 to"),
    (["sketch", "--model", "tiny-flux", "--megapixels", "-1"], "argument --megapixels: -1 is outside"),
    (["stencil", "generate", "--model", "tiny-flux", "--count", "0"], "argument --count: 0 is outside"),
    (["stencil", "compose", "a.png", "--scale", "nan", "--out", "a.ora"], "argument --scale: nan is not a finite"),
    (["upscale", "a.png", "--model", "x.pth", "--scale", "inf"], "argument --scale: inf is not a finite number"),
    (["upscale", "a.png", "--model", "x.pth", "--dpi=-1"], "argument --dpi: -1 is outside the range (above 0)"),
    (["caption", "ds", "--concurrency", "0"], "argument --concurrency: 0 is outside the range (from 1 to 256)"),
    (["stencil", "generate", "--model", "tiny-flux", "--strength", "0.3"], "--strength is how much of a starting "
                                                                         "image is redrawn: give the image"),
])
def test_numbers_out_of_every_range_are_refused_when_the_command_is_read(argv, expected, capsys):
    code, err = said(capsys, *argv)
    assert code == 2 and expected in err, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "usage:" not in err, err  # one line


def test_a_command_line_the_parser_refuses_is_one_line_naming_the_help(capsys):
    code, err = said(capsys, "sketch", "--model", "tiny-flux", "--count", "0")
    assert code == 2 and err == ("error: argument --count: 0 is outside the range (from 1 to 1000) "
                                 "(`python -m blk sketch --help` lists the options)\n")
    code, err = said(capsys, "upscale", "a.png", "--model", "x.pth", "--pth", "x")  # the command's options, not the top's
    assert code == 2 and err == ("error: unrecognized arguments: --pth x (`python -m blk upscale --help` lists the "
                                 "options)\n")
    code, err = said(capsys, "models", "list", "--bogus")
    assert code == 2 and err == ("error: unrecognized arguments: --bogus (`python -m blk models list --help` lists "
                                 "the options)\n")


def test_through_the_launcher_help_and_refusals_name_the_launcher(capsys, monkeypatch):
    monkeypatch.setenv("BLK_CLI_NAME", "python3 studio.py")  # as `studio.run_cli` sets it
    code, err = said(capsys, "sketch", "--model", "tiny-flux", "--count", "0")
    assert code == 2 and err.endswith("(`python3 studio.py sketch --help` lists the options)\n"), err


def test_the_engine_says_one_sentence_for_sizes_strengths_and_lora_names(shared_workspace, tmp_path, capsys):
    """What argparse cannot see: a 0×0 size, a NaN or huge LoRA strength (a black image, exit 0), a strength
    that is not a number ("LoRA file LF:x does not exist"), a folder given as a LoRA ("does not exist")."""
    ws = str(shared_workspace.root)
    sketch = ["--workspace", ws, "sketch", "--model", "tiny-flux", "--steps", "2", "--out", str(tmp_path / "o")]
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"not read before the numbers are checked")
    strength = "A LoRA's strength goes from -1 to 2; style.safetensors has"
    cases = [
        (["--size", "0x0"], "A width and a height are at least 1 px; 0×0 is not a size."),
        (["--size", "64x64", "--lora", f"{lora}:nan"], f"{strength} nan."),
        (["--size", "64x64", "--lora", f"{lora}:1e9"], f"{strength} 1e+09."),
        (["--size", "64x64", "--lora", f"{lora}:abc"], f"{lora}:abc: the LoRA's strength after the last colon is a "
                                                       f"number, like {lora}:0.8."),
        (["--size", "64x64", "--lora", str(tmp_path)], f"LoRA file {tmp_path} is a folder; give the file itself."),
    ]
    for extra, expected in cases:
        code, err = said(capsys, *sketch, *extra)
        assert code == 2 and err.strip() == f"error: {expected}", (extra, err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing was drawn


def test_paths_that_cannot_be_used_are_one_sentence(tmp_path, capsys):
    """A workspace that is a file raised NotADirectoryError with a traceback; any such failure is now one line."""
    (tmp_path / "file").write_text("not a folder")
    code, err = said(capsys, "--workspace", str(tmp_path / "file"), "models", "list")
    assert code == 2 and err.startswith("error: ") and str(tmp_path / "file") in err and len(err.splitlines()) == 1


def test_an_empty_dataset_is_said_and_fails_the_check(workspace, capsys):
    (workspace.datasets / "empty").mkdir(parents=True)
    code = main(["--workspace", str(workspace.root), "dataset", "check", "empty"])
    assert code == 1 and "No images in this folder" in capsys.readouterr().out


def test_a_second_upscale_keeps_the_first_and_compose_matches_its_layers(workspace, tmp_path, capsys):
    """The same upscale command twice replaced its result (the tab named the second -2, the CLI did not); an
    .ora exported again over one with more layers left the old layers' PNGs beside the new ones; a layer or a
    canvas too large for memory is one sentence instead of the kernel ending the process."""
    from tests.test_upscale_esrgan import rrdb_file

    model = rrdb_file(tmp_path / "x4.pth")
    image = tmp_path / "art.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(image)
    ws = str(workspace.root)
    for _ in range(2):
        assert main(["--workspace", ws, "upscale", str(image), "--model", str(model), "--scale", "2"]) == 0
    assert sorted(p.name for p in workspace.outputs("upscale").iterdir()) == ["art-x2-2.tif", "art-x2.tif"]

    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGBA", (8, 8), (200, 0, 0, 255)).save(red)
    Image.new("RGBA", (8, 8), (0, 0, 200, 255)).save(blue)
    ora = tmp_path / "c" / "picture.ora"
    ora.parent.mkdir()
    assert main(["stencil", "compose", str(red), str(blue), "--out", str(ora)]) == 0
    assert main(["stencil", "compose", str(blue), "--out", str(ora)]) == 0
    assert sorted(p.name for p in (tmp_path / "c" / "picture-layers").iterdir()) == ["01-blue.png"]
    code, err = said(capsys, "stencil", "compose", str(red), "--scale", "100000", "--out", str(ora))
    assert code == 2 and "Layer red at ×100000 would be 800000×800000 px; Compose works in memory" in err, err
    code, err = said(capsys, "stencil", "compose", str(red), str(blue), "--at", "0,0", "--at", "1000000000,5",
                     "--out", str(ora))
    assert code == 2 and "The canvas would be 1000000008×13 px" in err, err


def test_an_output_that_cannot_be_written_is_said_before_the_work(shared_workspace, trained_run, tmp_path, capsys):
    """A file where the results' folder should be, a folder where the result's file should be: said before any
    model loads (they failed with a traceback after the images were made), and no empty folder is left."""
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"an earlier file")
    ws = str(shared_workspace.root)
    cases = [
        (["sketch", "--model", "tiny-flux", "--size", "64x64", "--out", str(taken)],
         f"{taken} is a file, not a folder for the results."),
        (["sketch", "--model", "tiny-flux", "--size", "64x64", "--out", str(taken / "sub")],
         f"{taken} is a file, so the folder {taken / 'sub'} cannot be made."),
        (["stencil", "generate", "--model", "tiny-flux", "--prompt", "a cube", "--out", str(taken)],
         f"{taken} is a file, not a folder for the results."),
        (["review", str(trained_run), "--seeds", "1", "--out", str(tmp_path)],
         f"The grid is a PNG file: give --out a name ending in .png; {tmp_path} is not one."),
        (["review", str(trained_run), "--seeds", "1", "--out", str(tmp_path / "grid.txt")],
         "give --out a name ending in .png"),
        (["train", "--steps", "2", "--run-dir", str(taken)], f"{taken} is a file, not a folder for a run."),
        (["stencil", "alpha", str(taken), "--out", str(taken)], f"{taken} is a file, not a folder for the results."),
        (["upscale", str(taken), "--model", "x.pth", "--scale", "2", "--out", str(tmp_path / "folder.tif")],
         f"{tmp_path / 'folder.tif'} is a folder; name the result's file"),
    ]
    (tmp_path / "folder.tif").mkdir()
    for argv, expected in cases:
        code, err = said(capsys, "--workspace", ws, *argv)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert taken.read_bytes() == b"an earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.tif", "taken.png"]  # nothing made, nothing lost


def test_lora_names_with_colons_and_unforeseen_failures_read_right():
    """A path with a colon and no strength is a path (a Windows drive, "ink:v2"): its absence is said as such
    later, not as a bad strength; a failure no check foresaw names its kind and how to see where."""
    from blk.cli import unforeseen_sentence
    from blk.errors import UserError
    from blk.generate.sketch import Lora

    assert Lora.parse(r"C:\loras\ink.safetensors") == Lora(Path(r"C:\loras\ink.safetensors"), 1.0)
    assert Lora.parse("ink:v2.safetensors") == Lora(Path("ink:v2.safetensors"), 1.0)
    assert Lora.parse("ink.safetensors:0.7") == Lora(Path("ink.safetensors"), 0.7)
    with pytest.raises(UserError, match="strength after the last colon"):
        Lora.parse("ink.safetensors:strong")
    assert unforeseen_sentence(ValueError("Target modules {'x'} not found\nmore")) == \
        "this failed: Target modules {'x'} not found (ValueError; BLK_TRACEBACK=1 shows where)."


def test_compose_refuses_a_layer_too_large_from_its_header(tmp_path, capsys):
    """A 9000×9000 layer is refused from its header, before its 1.3 GB of float pixels are decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    big = tmp_path / "wall.png"  # the header only: decoding it would fail, so a refusal here proves no decode
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0))
                    + chunk(b"IEND", b""))
    code, err = said(capsys, "stencil", "compose", str(big), "--out", str(tmp_path / "c.ora"))
    assert code == 2 and "wall.png would be 9000×9000 px; Compose works in memory up to 67 MP" in err, err
