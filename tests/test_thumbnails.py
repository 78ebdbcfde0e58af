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


def test_a_large_jpeg_is_decoded_at_a_preview_scale_upright_and_alike(tmp_path):
    """Thumbnails and similarity signatures decode a JPEG at the smallest built-in scale that keeps the
    preview's pixels (a page of 24 MP photographs: 264 → 76 ms a thumbnail here); the result is upright
    and within a level or two of a thumbnail made from the whole decode."""
    from blk.data import images

    rng = np.random.default_rng(3)
    smooth = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((2048, 1536),
                                                                                      Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown upright as 1536×2048
    smooth.save(tmp_path / "photo.jpg", quality=92, exif=exif)

    whole = images.open_image(tmp_path / "photo.jpg")
    preview = images.open_image(tmp_path / "photo.jpg", preview=256)
    assert whole.size == (1536, 2048) and preview.size == (384, 512)  # 1/4: at 1/8 a side would be under 256
    for im in (whole, preview):
        im.thumbnail((256, 256), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(whole, float) - np.asarray(preview, float))
    assert whole.size == preview.size == (192, 256) and difference.mean() < 1.0 and difference.max() < 16
    png = tmp_path / "photo.png"
    smooth.save(png)
    assert images.open_image(png, preview=256).size == (2048, 1536)  # other formats decode whole
