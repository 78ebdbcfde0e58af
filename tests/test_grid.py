"""The grid's queries: filters, sorting, paging and token counts, on real files."""

import time

import pytest
from PIL import Image

from blk.data.captions import CaptionStore
from blk.data.grid import GridQuery, model_token_counter, query_grid
from blk.errors import UserError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid") / "ds"
    folder.mkdir()
    store = CaptionStore(folder)
    for i in range(120):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"img{i:03d}.png")
    for i in range(0, 120, 3):
        store.save(f"img{i:03d}.png", f"a cube number {i}", "", source="model")
    for i in range(1, 120, 3):
        saved = store.save(f"img{i:03d}.png", f"a sphere number {i}" + " with fine hatching" * (i // 10), "", source="human")
        if i % 2:
            store.approve(f"img{i:03d}.png", saved.hash)
    return folder


def test_filter_by_status_and_counts(dataset):
    page = query_grid(dataset, GridQuery(status="machine", page_size=500))
    assert page.total == 40 and all(r.status == "machine" for r in page.rows)
    assert page.counts == {"machine": 40, "edited": 20, "approved": 20, "none": 40}


def test_text_and_regex_filters_and_sorting(dataset):
    spheres = query_grid(dataset, GridQuery(text="SPHERE", page_size=500))
    assert spheres.total == 40
    regex = query_grid(dataset, GridQuery(text=r"number 1\d$", regex=True, page_size=500))
    assert sorted(r.image for r in regex.rows) == ["img012.png", "img015.png", "img018.png"]
    with pytest.raises(UserError, match="not a valid regular expression"):
        query_grid(dataset, GridQuery(text="(", regex=True))
    longest = query_grid(dataset, GridQuery(sort="length", descending=True, page_size=1)).rows[0]
    assert longest.image == "img118.png"


def test_paging(dataset):
    first = query_grid(dataset, GridQuery(page=1, page_size=50))
    last = query_grid(dataset, GridQuery(page=99, page_size=50))
    assert (first.pages, len(first.rows), last.page, len(last.rows)) == (3, 50, 3, 20)
    assert first.rows[0].image == "img000.png" and last.rows[-1].image == "img119.png"


def test_token_counts_and_budget(dataset, shared_workspace):
    counter = model_token_counter(shared_workspace, "tiny-flux")
    page = query_grid(dataset, GridQuery(sort="tokens", descending=True, page_size=5), counter)
    top = page.rows[0]
    assert len(top.tokens) == 2 and top.tokens[0] > 77 and top.over_budget
    short = query_grid(dataset, GridQuery(text="cube number 3", page_size=5), counter).rows[0]
    assert not short.over_budget and short.tokens[0] < 77


def test_five_thousand_images_query_quickly(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "seed.png")
    data = (folder / "seed.png").read_bytes()
    for i in range(5000):
        (folder / f"x{i:05d}.png").write_bytes(data)
        (folder / f"x{i:05d}.txt").write_text(f"caption {i}")
    query_grid(folder, GridQuery())  # first scan builds the index
    start = time.perf_counter()
    page = query_grid(folder, GridQuery(text="caption 49", page=2, page_size=50))
    elapsed = time.perf_counter() - start
    assert page.total == 111 and len(page.rows) == 50
    print(f"5,000-image grid query: {elapsed:.2f} s")  # a figure for the notes, not a timed assertion
