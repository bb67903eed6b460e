"""Safe decoding: each kind of bad file becomes a reason; odd modes become the documented RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclf.data._image import ImageDecodeError, load_rgb, open_image
from tests.conftest import blob_image, png_bomb, save


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        open_image(p)


def test_truncated_jpeg(tmp_path: Path) -> None:
    full = save(blob_image(1, 256), tmp_path / "full.jpg", quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        open_image(cut)


def test_text_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match="not an image"):
        open_image(p)


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    p = png_bomb(tmp_path / "bomb.png")
    assert p.stat().st_size < 200
    with pytest.raises(ImageDecodeError, match="refused.*decompression bomb"):
        open_image(p)
    # Under PIL's own limit but over edgeclf's: refused by edgeclf's check, naming the size.
    p2 = png_bomb(tmp_path / "big.png", 12_000, 12_000)
    with pytest.raises(ImageDecodeError, match="refused: 12000x12000"):
        open_image(p2)


def test_extension_mismatch_is_kept_and_flagged(tmp_path: Path) -> None:
    p = save(blob_image(2), tmp_path / "really_png.jpg", format="PNG")
    im, info = open_image(p)
    assert info.format == "PNG" and info.extension_mismatch
    im.close()


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix"),
    [("CMYK", "JPEG", ".jpg"), ("P", "PNG", ".png"), ("RGBA", "PNG", ".png"), ("L", "PNG", ".png"), ("LA", "PNG", ".png")],
)
def test_modes_decode_to_rgb(tmp_path: Path, mode: str, fmt: str, suffix: str) -> None:
    p = save(blob_image(3).convert(mode), tmp_path / f"img{suffix}", format=fmt)
    _, info = open_image(p)
    assert info.mode == mode
    rgb = load_rgb(p)
    assert rgb.mode == "RGB" and rgb.size == (64, 64)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((8, 8), 40000, dtype=np.uint16)
    p = save(Image.fromarray(arr), tmp_path / "deep.png")
    _, info = open_image(p)
    assert info.mode.startswith("I")
    rgb = np.asarray(load_rgb(p))
    assert rgb.shape == (8, 8, 3)
    assert int(rgb[0, 0, 0]) == 40000 >> 8  # 156, where clipping would give 255


def test_one_by_one_image(tmp_path: Path) -> None:
    p = save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "dot.png")
    assert np.asarray(load_rgb(p)).tolist() == [[[10, 20, 30]]]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = tmp_path / "rotated.jpg"
    im.save(p, exif=exif.tobytes())
    assert load_rgb(p).size == (20, 40)


def test_to_rgb_leaves_a_callers_image_alone_unless_owned() -> None:
    from edgeclf.data._image import to_rgb

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 0, 0)).save(buf, format="JPEG", exif=exif.tobytes())
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert to_rgb(im).size == (20, 40) and im.size == (40, 20)  # the caller's image unchanged
    assert to_rgb(im, owned=True) is im and im.size == (20, 40)  # owned: oriented in place, no copy
