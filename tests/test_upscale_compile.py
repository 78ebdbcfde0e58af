"""Compiling the upscaling network (`blk.upscale.compiled_network`, `EsrganJob.compile`, `--compile`):
the same result as uncompiled, compiled graphs shared by every repeated block and by jobs of any size,
and a compiler that is missing or fails is one sentence or a fallback — never a lost job.

Compiling on a CPU runs Inductor and g++: seconds for this tiny RRDB (16 features, 3 blocks), once the
cache in /tmp/torchinductor_USER is warm.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from blk.errors import UserError
from blk.upscale import compiled_network
from blk.upscale.esrgan import EsrganJob, processor, run
from blk.upscale.models import load_upscaler
from blk.upscale.tiler import even_batches
from tests.test_upscale_esrgan import noise, rrdb_state


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Every test starts and ends with nothing compiled (a failing test leaves no graph to the next)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def three_blocks(tmp_path_factory):
    """A Real-ESRGAN-shaped file with three RRDB blocks: enough to be "the repeated block"."""
    path = tmp_path_factory.mktemp("compile") / "RealESRGAN_x4plus_3blocks.pth"
    torch.save(rrdb_state(nb=3, seed=4), path)
    return path


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray((noise(44, 60, seed=3) * 255).astype(np.uint8)).save(path)
    return path


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def parameters_of(path) -> dict:
    import json

    with tifffile.TiffFile(path) as tif:
        return json.loads(tif.pages[0].description)


def test_the_repeated_block_is_the_outer_one_and_a_plain_network_compiles_whole(three_blocks):
    from spandrel.architectures.__arch_helpers.block import RRDB
    from spandrel.architectures.Compact import Compact

    network = load_upscaler(three_blocks).descriptor.model
    blocks = compiled_network.repeated_blocks(network)
    # RRDB holds its three dense blocks: the same parameters in all, so the larger block wins the tie
    assert len(blocks) == 3 and all(type(block) is RRDB for block in blocks)
    # a network of torch.nn layers only (Real-ESRGAN's Compact): no block of its own, compiled whole
    compact = Compact(num_feat=8, num_conv=4, upscale=4)
    assert compiled_network.repeated_blocks(compact) == []
    compiled_network.compile_network(compact)
    assert compact._compiled_call_impl is not None
    compiled_network.uncompile(compact)
    assert not compiled_network.is_compiled(compact)


def test_a_compiled_job_gives_the_uncompiled_result_and_jobs_of_other_sizes_stop_compiling(three_blocks, picture,
                                                                                           tmp_path):
    """15 tiles in rows of 5, in batches of 4: 2 + 3 tiles a row (`even_batches`); the job compiles one graph,
    for any batch and size, which all three blocks share; the pixels are the uncompiled job's. Jobs of other
    tile sizes and batches compile nothing more: a studio that runs upscale after upscale stays under
    TorchDynamo's limit of 8 graphs, past which it would run uncompiled."""
    settings = {"overlap": 8, "batch": 4, "device": "cpu"}
    eager = run(EsrganJob(picture, tmp_path / "eager.tif", three_blocks, tile=20, **settings))
    graphs = unique_graphs()
    compiled = run(EsrganJob(picture, tmp_path / "compiled.tif", three_blocks, tile=20, compile=True, **settings))
    assert eager.tiles == compiled.tiles == 15
    assert unique_graphs() - graphs == 1  # batches of 2, then 3, through one graph for every block
    a, b = tifffile.imread(eager.path).astype(int), tifffile.imread(compiled.path).astype(int)
    assert a.shape == b.shape == (176, 240, 3)
    # fp32 on a CPU: Inductor sums in another order than eager PyTorch, so a level may round the other way
    assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.01
    assert parameters_of(compiled.path)["compile"] is True and "compile" not in parameters_of(eager.path)
    graphs = unique_graphs()
    for tile in (24, 28, 36):  # tiles of 21×20, 26×26, 34×26 px in batches of 4, 3, 2
        again = run(EsrganJob(picture, tmp_path / f"t{tile}.tif", three_blocks, tile=tile, compile=True, **settings))
        assert parameters_of(again.path)["compile"] is True
    assert unique_graphs() == graphs


def test_batches_of_a_row_differ_by_one_tile_at_most():
    sizes = {n: [len(group) for group in even_batches(list(range(n)), 4)] for n in range(10)}
    assert sizes == {0: [], 1: [1], 2: [2], 3: [3], 4: [4], 5: [2, 3], 6: [3, 3], 7: [3, 4], 8: [4, 4],
                     9: [3, 3, 3]}
    assert [len(group) for group in even_batches(list(range(7)), 1)] == [1] * 7


def test_compile_without_a_compiler_is_one_sentence_before_any_work(three_blocks, picture, tmp_path):
    import torch._inductor.config

    out = tmp_path / "out.tif"
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}), \
            pytest.raises(UserError, match="needs a C\\+\\+ compiler") as caught:
        run(EsrganJob(picture, out, three_blocks, device="cpu", compile=True))
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_a_compiler_failing_mid_job_falls_back_to_the_same_pixels(three_blocks, tmp_path):
    """The compiler goes away after the job's check (no cached kernel helps): the first batch still gives the
    uncompiled network's output, the network stays uncompiled, and the note is said once."""
    import torch._inductor.config
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    upscaler = load_upscaler(three_blocks)
    tiles = np.stack([noise(16, 16, seed=s) for s in (1, 2)])
    eager = processor(upscaler, "cpu", torch.float32)
    expected, expected_one = eager(tiles).numpy(), eager(tiles[:1]).numpy()  # a batch of one sums apart
    notes = []
    process = processor(upscaler, "cpu", torch.float32, compiled=True, log=notes.append)
    assert compiled_network.is_compiled(upscaler.descriptor.model)
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}), temporary_cache_dir(str(tmp_path)):
        first = process(tiles).numpy()
        again = process(tiles[:1]).numpy()
    assert np.array_equal(first, expected) and np.array_equal(again, expected_one)
    assert not compiled_network.is_compiled(upscaler.descriptor.model)
    assert len(notes) == 1 and "Compile failed" in notes[0] and "uncompiled" in notes[0]


def test_cli_compile_flag(three_blocks, picture, tmp_path):
    from blk.cli import main

    out = tmp_path / "cli.tif"
    assert main(["--workspace", str(tmp_path / "ws"), "upscale", str(picture), "--model", str(three_blocks),
                 "--tile", "20", "--overlap", "8", "--compile", "--device", "cpu", "--out", str(out)]) == 0
    assert parameters_of(out)["compile"] is True and tifffile.imread(out).shape == (176, 240, 3)
