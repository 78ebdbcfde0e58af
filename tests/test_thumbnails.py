"""Thumbnails: small, cached by content hash, alpha kept, made once."""

import numpy as np
from PIL import Image

from blk.data.scan import scan
from blk.data.thumbnails import thumbnail


def test_thumbnails_are_small_cached_and_keep_alpha(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    Image.new("RGB", (4000, 3000), (200, 10, 10)).save(folder / "big scan.jpg", quality=80)
    rgba = Image.new("RGBA", (300, 100), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (150, 0, 300, 100))
    rgba.save(folder / "stencil.png")
    records = {r.rel: r for r in scan(folder)}

    big = thumbnail(folder, records["big scan.jpg"], size=256)
    assert big.parent == folder / ".blk" / "thumbs" and records["big scan.jpg"].sha256[:32] in big.name
    with Image.open(big) as im:
        assert im.size == (256, 192)
    made = big.stat().st_mtime_ns
    assert thumbnail(folder, records["big scan.jpg"], size=256) == big and big.stat().st_mtime_ns == made

    with Image.open(thumbnail(folder, records["stencil.png"], size=128)) as im:
        pixels = np.asarray(im)
    assert im.mode == "RGBA" and pixels.shape == (43, 128, 4)
    assert pixels[20, 5, 3] == 0 and pixels[20, 120].tolist() == [0, 0, 255, 255]
