"""What a run does when its dataset is not as tidy as a test's: edited during the run, changed before a resume,
read-only, staged by other spellings of its folders, small folders, a trigger word that is not first."""

import json
import os
import random
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from blk.errors import UserError
from blk.train.data import Item, augment_caption, shuffled_orders
from blk.train.runner import HELD_OUT_FILE, EventLog, run, split_validation
from tests.test_train_data import noise_images, tiny


def notices(run_dir) -> list[str]:
    return [e["message"] for e in EventLog(run_dir / "events.jsonl").read() if e["kind"] == "notice"]


def latent_files(dataset) -> set:
    return {p.relative_to(dataset) for p in (dataset / ".blk" / "cache").rglob("*.safetensors") if "latents" in p.parts}


def test_an_image_edited_during_a_run_is_cached_under_its_new_content(tmp_path, shared_workspace):
    """Latents are made the first time an image is drawn. One edited after the scan was encoded from its new
    pixels but stored under the old content's hash, so a later run of the old version trained on the new one."""
    from blk.data.scan import file_sha256
    from blk.models.registry import resolve
    from blk.train.cache import TensorCache
    from blk.models.device import MemoryOptions
    from blk.models.pipelines import load_pipeline
    from blk.train.families import FluxFamily
    from blk.train.runner import LatentSource

    dataset = noise_images(tmp_path / "ds", ["a", "b"], seed=1)
    old_hash = file_sha256(dataset / "a.png")
    config = tiny(dataset, 1)
    model = resolve("tiny-flux", shared_workspace)
    family = FluxFamily(load_pipeline(model, "text2img", "cpu", MemoryOptions()))
    said = []
    source = LatentSource(family, TensorCache(tmp_path / "cache"), dataset, model.path, config.data,
                          on_notice=said.append)
    item = Item("a.png", old_hash, "blkstyle, a", 64, 64)
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(dataset / "a.png")  # edited after the scan
    new_hash = file_sha256(dataset / "a.png")
    edited = source(item)["params"]
    assert len(said) == 1 and said[0].startswith("a.png changed since the run began")
    fresh = LatentSource(family, TensorCache(tmp_path / "cache"), dataset, model.path, config.data)
    assert fresh.cache._path(fresh.key(item)).exists() is False  # nothing under the old content's key
    assert fresh.cache._path(fresh.key(Item("a.png", new_hash, "blkstyle, a", 64, 64))).exists()
    source(item)
    assert len(said) == 1  # said once per image
    assert edited.shape[0] == 1
    # an image edited smaller than its bucket is never upscaled: one sentence
    Image.fromarray(np.full((40, 40, 3), 10, np.uint8)).save(dataset / "a.png")
    with pytest.raises(UserError, match=r"^a.png changed since the run began and is now 40×40 px, smaller than its "
                                        r"64×64 bucket; resume the run to train on it"):
        source(item)


def test_a_resume_on_a_changed_dataset_keeps_its_held_out_images_and_says_so(tmp_path, shared_workspace):
    dataset = noise_images(tmp_path / "ds", [f"img{k:02d}" for k in range(10)], seed=2)
    config = tiny(dataset, 4, validation_images=2, validation_every=2)
    run(config, shared_workspace, tmp_path / "run", stop_after=2)
    began = json.loads((tmp_path / "run" / HELD_OUT_FILE).read_text())
    assert began["images"] == ["img00.png", "img05.png"]
    noise_images(dataset, ["img10", "img11"], seed=3)  # two images added before the resume
    run(config, shared_workspace, tmp_path / "run", resume=True)
    events = EventLog(tmp_path / "run" / "events.jsonl").read()
    trained = {image for e in events if e["kind"] == "loss" for image in e["images"]}
    assert not trained & {"img00.png", "img05.png"}  # before: img05 was trained on after the resume
    assert json.loads((tmp_path / "run" / HELD_OUT_FILE).read_text())["images"] == began["images"]
    assert [n for n in notices(tmp_path / "run") if n.startswith("ds changed since this run began: its held-out "
                                                                  "images stay held out")]
    # an unchanged dataset resumes without the notice
    run(config, shared_workspace, tmp_path / "other", stop_after=2)
    run(config, shared_workspace, tmp_path / "other", resume=True)
    assert not [n for n in notices(tmp_path / "other") if "changed since" in n]


def test_held_out_images_never_empty_a_folder():
    items = [Item(name, name, "c", 64, 64) for name in
             ["pairs/0.png", "singles/0.png", "singles/1.png", "singles/2.png", "singles/3.png", "singles/4.png"]]
    train, held = split_validation(items, 2)
    assert "pairs/0.png" in {i.image for i in train}  # evenly by name it was held out: the stage had no image
    assert len(held) == 2 and {i.image for i in held} <= {f"singles/{k}.png" for k in range(5)}
    # a name list from the run's start is kept where it still exists
    train, held = split_validation(items, 2, held=["singles/4.png", "gone.png"])
    assert [i.image for i in held] == ["singles/4.png"]
    # a run begun before held_out.json resumes with the pick it began with, not the new one (silently swapped)
    train, held = split_validation(items, 2, as_before_the_file=True)
    assert {i.image for i in held} == {"pairs/0.png", "singles/2.png"}


def test_a_stage_folder_spelled_another_way_draws_from_the_split_items(tmp_path, shared_workspace):
    """An absolute path into the dataset, the dataset's own name or "./singles": loaded before as another
    dataset, which brought the held-out images back into training (or said "no training images")."""
    from blk.train.runner import plan_curriculum

    root = shared_workspace.datasets / "mychar"
    noise_images(root / "singles", ["s0", "s1", "s2", "s3"], seed=4)
    noise_images(root / "pairs", ["p0", "p1"], seed=5)
    config = tiny(root, 2, validation_images=1, validation_every=2)
    from blk.train.data import load_items

    items, held = split_validation(load_items(root, [64], False), 1)
    held_names = {i.image for i in held}
    for folder, expected in ((str(root / "singles"), "singles/"), ("./singles", "singles/"), ("mychar", ""),
                             (str(root), ""), ("singles/", "singles/")):
        config.data.stages = [{"start": 0, "sources": [{"folder": folder}]}]
        config = type(config).model_validate(config.model_dump())
        pool = plan_curriculum(config, shared_workspace, root, items).stages[0].pools[0]
        names = {i.image for i in pool}
        assert names and not names & held_names, folder
        assert all(n.startswith(expected) for n in names) and all(i.root == "" for i in pool), folder
    shutil.rmtree(root)


def test_a_read_only_dataset_trains_without_its_cache_and_says_so(tmp_path, shared_workspace):
    if os.geteuid() == 0 and shutil.which("chattr") is None:
        pytest.skip("a read-only folder for root needs chattr")
    dataset = noise_images(tmp_path / "ds", ["a", "b"], seed=6)
    from blk.data.scan import scan

    scan(dataset)  # the scan's index is written first, as a dataset the artist captioned has it
    locked = dataset / ".blk"
    if os.geteuid() == 0:
        import subprocess

        subprocess.run(["chattr", "+i", str(locked)], check=True)
    else:
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = run(tiny(dataset, 6), shared_workspace, tmp_path / "run")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(stat.S_IRWXU)
    assert result.step == 6 and result.last_checkpoint.exists()
    said = [n for n in notices(tmp_path / "run") if "cannot be written" in n]
    assert said and said[0].startswith(f"The cache folder {dataset / '.blk' / 'cache'}")
    # the latents are kept in memory instead: each image encoded once, not once a step (6 before)
    assert result.latent_encodes == 2
    assert any("latents" in n and "kept in memory instead, up to" in n for n in said), said
    assert not (dataset / ".blk" / "cache").exists()


def test_the_trigger_keeps_its_place_wherever_it_stands_and_empty_parts_are_not_kept():
    caption = "red, blue, blkstyle, green, yellow, pink"  # bulk "Add trigger" leaves this caption as it is
    places = {augment_caption(caption, random.Random(seed), 0.0, True, 1, pinned="blkstyle").split(", ").index(
        "blkstyle") for seed in range(30)}
    assert places == {2}  # before: anywhere after the first tag
    shuffles = {augment_caption(caption, random.Random(seed), 0.0, True, 1, pinned="blkstyle") for seed in range(30)}
    assert len(shuffles) > 5 and all(s.startswith("red, ") for s in shuffles)
    assert all(o.split(", ")[2] == "blkstyle" for o in shuffled_orders(caption, 6, 1, pinned="blkstyle"))
    firsts = {augment_caption(", blkstyle, red, blue", random.Random(seed), 0.0, True, 1).split(", ")[0]
              for seed in range(30)}
    assert firsts == {"blkstyle"}  # a leading comma no longer takes the kept place


def test_cache_entries_unused_for_a_month_are_removed_when_a_run_starts(tmp_path, shared_workspace):
    import time

    dataset = noise_images(tmp_path / "ds", ["a", "b"], seed=7)
    run(tiny(dataset, 1), shared_workspace, tmp_path / "first")
    cache = dataset / ".blk" / "cache"
    used = sorted(cache.rglob("*.safetensors"))
    stale = cache / "0123456789abcdef" / "text" / "ab" / "old.safetensors"  # a model no longer used
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 3000)
    weeks_ago, month_ago = time.time() - 20 * 86400, time.time() - 40 * 86400
    for path in used:
        os.utime(path, (weeks_ago, weeks_ago))
    os.utime(stale, (month_ago, month_ago))
    run(tiny(dataset, 1), shared_workspace, tmp_path / "second")
    assert not stale.exists()
    assert all(p.stat().st_mtime > weeks_ago + 86400 for p in used)  # read again, not made again: marked used
    events = EventLog(tmp_path / "second" / "events.jsonl").read()
    status = next(k for k, e in enumerate(events) if e["kind"] == "status")
    said = [k for k, e in enumerate(events) if e["kind"] == "notice" and e["message"].startswith(
        "Removed 1 cache entry of ds (0 MB) that no run had used for 30 days")]
    assert said and said[0] > status  # after the status the Train tab starts its notices from
