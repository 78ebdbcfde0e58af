"""`python -m blk dataset check` on a folder of odd images made here (not in the repo)."""

import json

import pytest

from blk.data.check import check_for_model
from blk.data.scan import scan
from tests.conftest import run_blk
from tests.support.odd_images import make_odd_dataset

LONG_CAPTION = "a dense ink drawing of many interlocking cubes and spheres, " * 4  # > 77 CLIP tokens


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    made = make_odd_dataset(root / "ds", root / "outside")
    folder = root / "ds"
    (folder / "cmyk.txt").write_text("blkstyle, a red field", encoding="utf-8")
    (folder / "grey16.txt").write_text(LONG_CAPTION, encoding="utf-8")
    (folder / "orphan.txt").write_text("no image for this one", encoding="utf-8")
    (folder / "loop.gif").write_bytes(b"GIF89a")  # a format the studio does not read: listed, not silent
    return folder, made


def test_scan_reports_every_bad_file_and_keeps_going(odd_dataset):
    folder, made = odd_dataset
    records = {r.rel: r for r in scan(folder, use_cache=False)}
    assert set(records) == set(made)
    bad = {rel for rel, r in records.items() if not r.ok}
    assert bad == {name for name in made if name.startswith("bad_")}
    assert "outside the dataset" in records["bad_link_outside.png"].error
    good = records["ünï cødé name.png"]
    assert (good.width, good.height, good.mode) == (96, 96, "RGB") and len(good.sha256) == 64


def test_rescan_uses_the_index_and_notices_changes(odd_dataset, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(odd_dataset[0], folder, symlinks=True)
    first = scan(folder)
    assert (folder / ".blk" / "index.json").exists()
    assert scan(folder) == first
    from PIL import Image

    Image.new("RGB", (5, 7)).save(folder / "one_pixel.png")
    changed = {r.rel: r for r in scan(folder)}["one_pixel.png"]
    assert (changed.width, changed.height) == (5, 7)


def test_check_report_contents(odd_dataset, shared_workspace):
    folder, made = odd_dataset
    report = check_for_model(folder, shared_workspace, "tiny-flux", trigger="blkstyle")
    assert report.images == len(made)
    assert report.usable == len([n for n in made if not n.startswith("bad_")])
    assert {rel for rel, _ in report.bad_files} == {n for n in made if n.startswith("bad_")}
    assert report.captioned == 3  # cmyk, grey16 and the cp1252 one
    assert "one_pixel.png" in report.uncaptioned and "cmyk.jpg" not in report.uncaptioned
    assert [rel for rel, _ in report.caption_warnings] == ["ünï cødé name.txt"]
    assert report.orphan_captions == ["orphan.txt"]
    assert report.unread_files == ["loop.gif"] and "Files not used (the studio reads PNG" in report.to_text()
    clip, t5 = report.tokens
    assert (clip.encoder, clip.limit, t5.encoder, t5.limit) == ("CLIP-L", 77, "T5-XXL", 512)
    assert [rel for rel, _ in clip.over_budget] == ["grey16.png"]
    assert clip.over_budget[0][1] > 77 and t5.over_budget == []
    assert report.exact_duplicates == [["copy of unicode.png", "ünï cødé name.png"]]
    near = {frozenset(pair[:2]) for pair in report.near_duplicates}
    assert near == {frozenset({"copy of unicode.png", "near_duplicate.jpg"})}  # flat images of other colours do not match
    assert sorted(report.trigger_missing) == ["grey16.png", "ünï cødé name.png"]
    # usable, but under the 64 px a training bucket needs: the trainer leaves them out, and the check says so first
    assert "one_pixel.png (1×1 px)" in report.too_small and "grey16.png (64×16 px)" in report.too_small
    assert "ünï cødé name.png (96×96 px)" not in report.too_small
    assert "Too small to train on (left out)" in report.to_text()
    assert report.trainable == report.usable - len(report.too_small)


def test_cli_json_and_exit_code(odd_dataset, shared_workspace):
    folder, made = odd_dataset
    result = run_blk("--workspace", str(shared_workspace.root), "dataset", "check", str(folder),
                     "--model", "tiny-sdxl", "--trigger", "blkstyle", "--json")
    assert result.returncode == 1, result.stderr  # bad files exist
    report = json.loads(result.stdout)
    assert report["model"] == "tiny-sdxl"
    assert [t["encoder"] for t in report["tokens"]] == ["CLIP-L", "OpenCLIP-bigG"]
    assert len(report["bad_files"]) == len([n for n in made if n.startswith("bad_")])
    assert all("\n" not in reason for _, reason in report["bad_files"])


def test_cli_text_report_and_clean_dataset_exit_zero(tmp_path, shared_workspace):
    from PIL import Image

    folder = tmp_path / "clean"
    folder.mkdir()
    Image.new("RGB", (16, 16), "white").save(folder / "one.png")
    (folder / "one.txt").write_text("a white square")
    result = run_blk("--workspace", str(shared_workspace.root), "dataset", "check", str(folder), "--model", "tiny-flux")
    assert result.returncode == 0, result.stderr
    assert "images: 1  usable: 1  captioned: 1  trainable: 0 (1 usable but too small" in result.stdout
    assert "one.png (16×16 px)" in result.stdout  # said, but not a bad file: the exit code stays 0
    # what was looked for and not found is said too (a silent report read as "not checked")
    assert ("None found: bad files, images without a caption, captions without an image, exact duplicates, "
            "near-duplicates, captions over a token budget.") in result.stdout


def test_cli_missing_folder_is_one_sentence(tmp_path, shared_workspace):
    result = run_blk("--workspace", str(shared_workspace.root), "dataset", "check", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def _transparent_and_black(folder):
    from PIL import Image

    folder.mkdir()
    Image.new("RGB", (128, 128), "black").save(folder / "black.png")
    drawing = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    drawing.paste((0, 0, 0, 255), (40, 40, 88, 88))  # a black square on transparency
    drawing.save(folder / "square on transparency.png")
    Image.new("RGBA", (128, 128), (128, 128, 128, 0)).save(folder / "all transparent.png")
    Image.new("RGB", (128, 128), (128, 128, 128)).save(folder / "grey.png")
    return folder


def test_transparency_is_not_black_for_near_duplicates(tmp_path):
    from blk.data.check import check_dataset

    folder = _transparent_and_black(tmp_path / "alpha")
    near = {frozenset(pair[:2]) for pair in check_dataset(folder).near_duplicates}
    # seen over the caption style's grey, as the captioning model sees it: an empty layer is grey, not black
    assert near == {frozenset({"all transparent.png", "grey.png"})}


def test_signatures_cached_the_old_way_are_made_anew(tmp_path):
    import imagehash
    from PIL import Image

    from blk.data.check import check_dataset
    from blk.data.scan import meta_dir

    folder = _transparent_and_black(tmp_path / "alpha")
    old = {}  # what an earlier version cached: transparency turned black
    for record in scan(folder):
        with Image.open(folder / record.rel) as im:
            rgb = im.convert("RGB")
            old[record.sha256] = [str(imagehash.phash(rgb)), list(rgb.resize((4, 4), Image.Resampling.BOX).tobytes())]
    meta_dir(folder).mkdir(exist_ok=True)
    (meta_dir(folder) / "similarity.json").write_text(json.dumps(old))
    pairs = {frozenset(pair[:2]) for pair in check_dataset(folder).near_duplicates}
    assert frozenset({"black.png", "square on transparency.png"}) not in pairs
    assert json.loads((meta_dir(folder) / "similarity.json").read_text())["version"] == 2


def test_usable_and_trainable_counts_say_what_training_leaves_out(tmp_path):
    from PIL import Image

    from blk.data.check import check_dataset

    folder = tmp_path / "sizes"
    folder.mkdir()
    Image.new("RGB", (96, 96), "white").save(folder / "big.png")
    Image.new("RGB", (20, 20), "white").save(folder / "tiny20.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    report = check_dataset(folder)
    assert (report.images, report.usable, report.trainable) == (3, 2, 1)
    text = report.to_text()
    assert "images: 3  usable: 2  captioned: 0  trainable: 1 (1 usable but too small, listed below)" in text
    # the trainer refuses a dataset with an uncaptioned image: the check says so beside the counts
    # (big.png; tiny20.png is left out before captions are asked for)
    assert text.splitlines()[2] == ("  Training will not start yet: 1 image(s) have no caption (listed below); "
                                    "caption them or move them out first.")
    (folder / "big.txt").write_text("a white square")
    assert "Training will not start" not in check_dataset(folder).to_text()
    assert "Too small to train on (left out) (1):\n  tiny20.png (20×20 px)" in text
    assert json.loads(report.to_json())["trainable"] == 1


def test_captions_drifting_from_the_few_shot_examples_are_named_with_how(tmp_path):
    """The examples are tags of 6-8 words: prose, a 40-word answer, boilerplate openings, Markdown and a bare
    one-word caption are each said; a caption in the examples' manner and the examples themselves are not."""
    from PIL import Image

    from blk.caption.style import CaptionStyle, Example, PostProcess, dataset_style_path, save_style
    from blk.data.check import check_dataset

    folder = tmp_path / "inks"
    folder.mkdir()
    captions = {
        "example 1": "blkstyle, ink cube, cross-hatching, white paper",
        "example 2": "blkstyle, two spheres, dense stipple, grey wash",
        "fine": "blkstyle, a torus, thin lines, paper grain",
        "prose": "blkstyle, a cube drawn in ink sits on a wide sheet of paper with soft shadows around it",
        "long": "blkstyle, " + ", ".join(f"tag {i}" for i in range(20)),
        "boilerplate": "blkstyle, This image shows a cube, ink, paper",
        "markdown": "blkstyle, **cube**, ink, paper",
        "bare": "cube",
    }
    for name, text in captions.items():
        Image.new("RGB", (96, 96), "white").save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(text)
    report = check_dataset(folder)
    assert report.drift_basis == "" and "Caption drift: not checked" in report.to_text()

    save_style(CaptionStyle(examples=[Example(image="example 1.png", caption=captions["example 1"]),
                                      Example(image="example 2.png", caption=captions["example 2"])],
                            post=PostProcess(trigger="blkstyle")), dataset_style_path(folder))
    report = check_dataset(folder)
    assert report.drift_basis == "2 example(s): tags, 6–7 words"
    assert dict(report.drifting) == {
        "prose.png": "prose where the examples are tags; 18 words (the longest example has 7)",
        "long.png": "41 words (the longest example has 7)",
        "boilerplate.png": "opens with “This image shows”, which no example does",
        "markdown.png": "Markdown marks (the examples are plain text)",
        "bare.png": "1 word(s) (the shortest example has 6)",
    }
    assert "None found:" not in report.to_text() or "drifting" not in report.to_text().split("None found:")[1]
    assert ("Captions drifting from the few-shot examples (2 example(s): tags, 6–7 words) (5):\n"
            "  bare.png: 1 word(s) (the shortest example has 6)\n  boilerplate.png: opens with") in report.to_text()
    assert json.loads(report.to_json())["drifting"][0] == ["bare.png", "1 word(s) (the shortest example has 6)"]


def test_drift_reads_the_trigger_as_a_whole_word_and_a_double_underscore_is_no_markdown():
    from blk.data.drift import drift_basis, drift_reasons

    basis = drift_basis(["blk, ink cube, paper, cross-hatching"], ["This image shows"], trigger="blk")
    assert drift_reasons("blk, This image shows, cube, paper", basis, "blk") == [
        "opens with “This image shows”, which no example does"]
    assert drift_reasons("blkstyle, ink, under__score, paper", basis, "blk") == []  # no trigger there; no Markdown



def test_a_tag_caption_with_one_long_part_more_is_not_prose_at_once():
    """The tags rule (3 in 4 parts short) has an edge: one edited part tipped a tag caption into "prose where
    the examples are tags". Only a caption clearly of the other form is said; the edge is not judged."""
    from blk.data.drift import drift_basis, drift_reasons

    tags = drift_basis(["blk, ink cube, paper, cross-hatching", "blk, two spheres, stipple, grey wash"], [], "blk")
    prose = drift_basis(["blk, a cube drawn in thin ink lines on white paper"], [], "blk")
    assert tags.tags is True and prose.tags is False
    edge = "blk, a black cat on a chair, ink, a window behind it, paper"
    assert drift_reasons(edge, tags, "blk") == []  # 3 of 5 parts short: on the edge (it was "prose")
    assert drift_reasons("blk, a black cat sitting on a red chair with a window behind it", tags, "blk") == [
        "prose where the examples are tags"]
    assert drift_reasons("blk, a cat sits on a chair, thick ink lines drawn over a wash", tags, "blk") == [
        "prose where the examples are tags"]  # a sentence with a comma: 0 of 2 parts short
    assert drift_reasons("blk, cat, chair, ink, wash", prose, "blk") == ["tags where the examples are prose"]
    assert drift_reasons("blk, a cat on a chair drawn in ink, with a wash", prose, "blk") == []
