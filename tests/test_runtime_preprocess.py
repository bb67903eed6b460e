"""Golden images: the C++ preprocessing against the Python reference of the same spec.

Every pixel format, odd sizes, padded strides, both interpolations, up- and down-scaling,
real photographs. The tensors must agree to within ``TOL`` after normalisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclf.preprocess import PreprocessSpec, nv12_to_rgb, preprocess, rgb_to_nv12
from tests.conftest import SHARED_DATASETS, make_synthetic_bundle

pytestmark = pytest.mark.cpp
runtime = pytest.importorskip("edgeclf.runtime")

# The algorithm is the same (same float32 operations in the same order, the same rounding),
# so the only difference left is the last bit of the normalisation division.
TOL = 1e-5

SPECS = [  # (crop, resize, interpolation)
    (32, 36, "bicubic"),
    (32, 36, "bilinear"),
    (24, 24, "bicubic"),  # resize == crop
    (64, 73, "bilinear"),  # upscaling small images
    (64, 73, "bicubic"),
]


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: f"{s[2]}-{s[0]}-{s[1]}")
def clf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    crop, resize, interp = request.param
    d = make_synthetic_bundle(tmp_path_factory.mktemp("b") / "bundle", crop=crop, resize=resize, interpolation=interp)
    with runtime.Classifier(d, threads=1) as c:
        yield (
            c,
            PreprocessSpec(
                resize_size=resize, crop_size=crop, interpolation=interp, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
            ),
        )


def real_images() -> list[np.ndarray]:
    """A few real photographs cut to odd sizes (or synthetic textures when ../shared is absent)."""
    out = []
    root = SHARED_DATASETS / "trashnet-150"
    files = sorted(root.rglob("*.jpg"))[:3] if root.is_dir() else []
    for i, f in enumerate(files):
        a = np.asarray(Image.open(f).convert("RGB"))
        out.append(np.ascontiguousarray(a[: a.shape[0] - 1 - i, : a.shape[1] - 3 - 2 * i]))
    rng = np.random.default_rng(0)
    for h, w in [(75, 97), (17, 23), (121, 64), (33, 33), (480, 640)]:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 256, (yy * 11) % 256], axis=2)
        out.append((base + rng.integers(0, 40, size=(h, w, 3))).clip(0, 255).astype(np.uint8))
    return out


def padded(a: np.ndarray, pad: int = 13) -> np.ndarray:
    """The same pixels in a buffer whose rows are ``pad`` bytes longer (a strided view)."""
    h, w = a.shape[:2]
    buf = np.zeros((h, w * (a.shape[2] if a.ndim == 3 else 1) + pad), np.uint8)
    view = buf[:, : w * (a.shape[2] if a.ndim == 3 else 1)]
    view[...] = a.reshape(h, -1)
    return view.reshape(a.shape) if a.ndim == 3 else view


IMAGES = real_images()


@pytest.mark.parametrize("fmt", ["RGB8", "BGR8", "RGBA8", "BGRA8", "GRAY8", "NV12"])
def test_golden_every_format(clf, fmt: str) -> None:
    c, spec = clf
    worst = 0.0
    for rgb in IMAGES:
        if fmt == "NV12":
            rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
            frame = rgb_to_nv12(np.ascontiguousarray(rgb))
            ref_rgb = nv12_to_rgb(frame)
        elif fmt == "GRAY8":
            frame = np.asarray(Image.fromarray(rgb).convert("L"))
            ref_rgb = np.repeat(frame[:, :, None], 3, axis=2)
        else:
            alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
            frame = {
                "RGB8": rgb,
                "BGR8": rgb[:, :, ::-1],
                "RGBA8": np.concatenate([rgb, alpha], 2),
                "BGRA8": np.concatenate([rgb[:, :, ::-1], alpha], 2),
            }[fmt]
            ref_rgb = rgb
        if min(ref_rgb.shape[:2]) * spec.resize_size < spec.crop_size * min(ref_rgb.shape[:2]):
            continue
        ref = preprocess(np.ascontiguousarray(ref_rgb), spec)
        for arr in (np.ascontiguousarray(frame), padded(np.ascontiguousarray(frame))):
            got = c.preprocess(arr, fmt)
            assert got.shape == ref.shape
            worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= TOL, f"{fmt}: max |C++ - Python| = {worst}"


def test_nv12_reference_round_trip() -> None:
    """The NV12 reference decodes what rgb_to_nv12 encodes to within chroma subsampling."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[...] = (200, 30, 90)
    back = nv12_to_rgb(rgb_to_nv12(rgb))
    assert np.abs(back.astype(int) - rgb).max() <= 2


def test_padded_view_is_not_copied_but_read_in_place(clf) -> None:
    """A padded view and a compact copy give identical tensors (the stride is honoured)."""
    c, _ = clf
    a = IMAGES[-1]
    assert np.array_equal(c.preprocess(padded(a, 64)), c.preprocess(np.ascontiguousarray(a)))


@pytest.mark.parametrize("fmt", ["RGB8", "BGRA8", "GRAY8", "NV12"])
def test_two_bands_on_two_threads_are_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """The banded preprocessing (second band on a helper thread) gives exactly the serial tensor."""
    d = make_synthetic_bundle(tmp_path / "bundle", crop=96, resize=110, interpolation="bicubic")
    out = {}
    for bands in ("1", "2"):
        monkeypatch.setenv("EDGECLF_PREPROCESS_BANDS", bands)
        with runtime.Classifier(d) as c:  # the variable is read when the session is created
            got = []
            for rgb in IMAGES:
                if fmt == "NV12":
                    frame = rgb_to_nv12(np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]))
                elif fmt == "GRAY8":
                    frame = np.asarray(Image.fromarray(rgb).convert("L"))
                elif fmt == "BGRA8":
                    frame = padded(np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 9, np.uint8)], 2))
                else:
                    frame = padded(rgb)
                if min(frame.shape[:2]) < 8:
                    continue
                got.append(c.preprocess(frame, fmt))
        out[bands] = got
    assert len(out["1"]) >= 5
    for a, b in zip(out["1"], out["2"], strict=False):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_simd_horizontal_paths_are_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interp: str) -> None:
    """The AVX-512 horizontal pass (where the CPU has it and the taps fit its window), else the AVX2
    one (groups of 8 outputs with consecutive taps; the groups at a border, where taps are clamped,
    take the gather loop) gives exactly the gather path's tensor, for down- and up-scaling, crops
    that reach the border, and crops not a multiple of 16 or 8."""
    frames = [img for img in IMAGES if min(img.shape[:2]) >= 8]
    for crop, resize in [(224, 256), (72, 80), (40, 40), (50, 61), (60, 60), (21, 100)]:
        d = make_synthetic_bundle(tmp_path / f"b{crop}-{resize}", crop=crop, resize=resize, interpolation=interp)
        out = {}
        for wide in ("0", "1"):
            monkeypatch.setenv("EDGECLF_PREPROCESS_WIDE", wide)
            with runtime.Classifier(d) as c:
                out[wide] = [c.preprocess(padded(f), "RGB8") for f in frames]
        for a, b in zip(out["0"], out["1"], strict=False):
            assert np.array_equal(a, b), (crop, resize)
