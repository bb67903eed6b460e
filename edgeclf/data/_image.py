"""Safe image decoding: every failure becomes a reason, never a crash.

This is the one place edgeclf turns a file into pixels. The rules for
converting the many PIL modes to 8-bit RGB are fixed here so the audit,
training and evaluation all see the same pixels:

* EXIF orientation is applied (a camera's portrait photo stays portrait);
* ``I;16`` / ``I`` (16/32-bit grey) are scaled to 8 bits by the type's range
  (``>> 8`` for 16-bit), not clipped;
* alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped, as the
  C runtime does for RGBA8/BGRA8 frames;
* ``CMYK``, ``YCbCr``, ``L``, ``1``, ``P`` go through PIL's own ``convert("RGB")``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image edgeclf decodes, in pixels (width x height). A 10-byte PNG can
#: claim to be 100k x 100k and decompress to 30 GB; such files are refused
#: before any pixel is decoded. 100 MP covers every camera sensor we target.
MAX_PIXELS = 100_000_000

#: File suffixes treated as images. Anything else in a class folder is listed
#: as ignored, not as an error.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})

#: PIL format name -> suffixes that honestly describe it.
_FORMAT_SUFFIXES = {
    "JPEG": {".jpg", ".jpeg"},
    "PNG": {".png"},
    "BMP": {".bmp"},
    "GIF": {".gif"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "PPM": {".ppm", ".pgm", ".pbm"},
}


class ImageDecodeError(Exception):
    """A file that cannot be used as an image; ``str()`` is the reason."""


@dataclass(frozen=True)
class ImageInfo:
    """What the audit records about one readable image."""

    format: str
    mode: str
    width: int
    height: int
    extension_mismatch: bool


def is_image_suffix(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def open_image(path: Path | bytes, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, ImageInfo]:
    """Open and fully decode ``path`` (a file, or the encoded bytes of one); raise
    :class:`ImageDecodeError` with a reason.

    The header is read first and the size checked against ``max_pixels``
    before any pixel data is decompressed.
    """
    if isinstance(path, bytes):
        size = len(path)
    else:
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ImageDecodeError(f"cannot stat file: {e.strerror or e}") from None
    if size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns (and past 2x its own limit raises) on huge images; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"refused: {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised content)") from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise ImageDecodeError(f"truncated file ({e})") from None
        raise ImageDecodeError(f"cannot open: {e}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageDecodeError(f"invalid dimensions {w}x{h}")
    if w * h > max_pixels:
        im.close()
        raise ImageDecodeError(f"refused: {w}x{h} = {w * h:,} pixels would exceed the {max_pixels:,}-pixel decode limit")
    fmt = im.format or "unknown"
    mode = im.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        im.close()
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageDecodeError(f"truncated {fmt} ({msg})") from None
        raise ImageDecodeError(f"corrupt {fmt} data ({msg})") from None
    suffixes = _FORMAT_SUFFIXES.get(fmt)
    mismatch = suffixes is not None and not isinstance(path, bytes) and path.suffix.lower() not in suffixes
    return im, ImageInfo(format=fmt, mode=mode, width=w, height=h, extension_mismatch=mismatch)


def to_rgb(im: Image.Image, *, owned: bool = False) -> Image.Image:
    """Convert any decoded PIL image to 8-bit RGB by the rules in the module docstring.

    ``owned``: the caller's ``im`` may be changed (its EXIF orientation applied in place), which
    saves a copy of every image that needs no conversion; otherwise ``im`` is left as it is."""
    if owned:
        ImageOps.exif_transpose(im, in_place=True)
    else:
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16)
        return Image.fromarray((arr >> 8).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr * (255.0 / hi), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "RGB":
        return im
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_rgb(path: Path | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB image (raises :class:`ImageDecodeError`)."""
    im, _ = open_image(path, max_pixels)
    rgb = to_rgb(im, owned=True)
    if rgb is not im:
        im.close()  # a converted copy exists; release the source's pixel memory now
    return rgb
