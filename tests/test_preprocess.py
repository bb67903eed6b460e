"""The preprocessing spec: resolved values, exact geometry, normalisation, serialisation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeclf.errors import ConfigError
from edgeclf.preprocess import (
    PreprocessSpec,
    PretrainedInput,
    center_crop,
    normalize,
    preprocess,
    resize_uint8,
    resized_shape,
)

LITE0_CFG = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def test_resolved_from_timm_config() -> None:
    s = PreprocessSpec.from_timm_config(LITE0_CFG)
    assert (s.resize_size, s.crop_size, s.interpolation) == (256, 224, "bicubic")
    s2 = PreprocessSpec.from_timm_config(LITE0_CFG, image_size=160)
    assert (s2.resize_size, s2.crop_size) == (182, 160)  # floor(160 / 0.875)
    assert PreprocessSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("h", "w", "want"), [(150, 150, (256, 256)), (300, 400, (256, 341)), (401, 300, (342, 256)), (1, 7, (256, 1792))]
)
def test_shorter_side_resize_shape(h: int, w: int, want: tuple[int, int]) -> None:
    assert resized_shape(h, w, 256) == want


def test_resize_matches_torch_half_pixel_bilinear_rounded() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    spec = PreprocessSpec(resize_size=20, crop_size=16, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    out = resize_uint8(img, spec)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(t, size=(20, 29), mode="bilinear", align_corners=False)
    assert out.shape == (20, 29, 3)
    assert np.array_equal(out, ref.round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy())
    # half-pixel centres: a 2x upscale of [0, 100] gives 0, 25, 75, 100
    row = np.array([[[0] * 3, [100] * 3]], dtype=np.uint8)
    up = resize_uint8(
        np.repeat(row, 2, axis=0),
        PreprocessSpec(resize_size=4, crop_size=4, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)),
    )
    assert up[0, :, 0].tolist() == [0, 25, 75, 100]


def test_crop_offsets_floor_and_normalise() -> None:
    img = np.arange(7 * 6 * 3, dtype=np.uint8).reshape(7, 6, 3)
    c = center_crop(img, 4)
    assert np.array_equal(c, img[1:5, 1:5])  # (7-4)//2 = 1, (6-4)//2 = 1
    spec = PreprocessSpec(resize_size=4, crop_size=4, interpolation="bilinear", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = normalize(np.full((4, 4, 3), 255, np.uint8), spec)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    assert x[:, 0, 0].tolist() == pytest.approx([1.0, 3.0, 0.5])
    with pytest.raises(ConfigError):
        center_crop(img, 8)


def test_full_reference_output() -> None:
    spec = PreprocessSpec.from_timm_config(LITE0_CFG)
    x = preprocess(np.zeros((100, 80, 3), np.uint8), spec)
    assert x.shape == (3, 224, 224) and float(x.max()) == pytest.approx(-1.0)


def test_invalid_specs() -> None:
    with pytest.raises(ConfigError):
        PreprocessSpec(resize_size=100, crop_size=200, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ConfigError):
        PreprocessSpec(resize_size=10, crop_size=8, interpolation="bilinear", mean=(0, 0, 0), std=(1, 0, 1))
    with pytest.raises(ConfigError, match="unknown preprocessing fields"):
        PreprocessSpec.from_dict({**PreprocessSpec.from_timm_config(LITE0_CFG).to_dict(), "gamma": 2.2})


def test_resolved_once_from_the_weights_figures() -> None:
    figures = PretrainedInput(input_size=224, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
    assert PreprocessSpec.for_weights(figures) == PreprocessSpec.from_timm_config(LITE0_CFG)
    assert PreprocessSpec.for_weights(figures, 160) == PreprocessSpec.from_timm_config(LITE0_CFG, image_size=160)
    assert PretrainedInput.from_timm_cfg(figures.as_timm_cfg()) == figures
    # an unknown value is an error naming it and the allowed ones, never a silent default
    with pytest.raises(ConfigError, match="bilinear, bicubic, got 'lanczos'"):
        PreprocessSpec.from_timm_config({**LITE0_CFG, "interpolation": "lanczos"})
    with pytest.raises(ConfigError, match="crop_mode 'squash'.*'center'"):
        PreprocessSpec.from_timm_config({**LITE0_CFG, "crop_mode": "squash"})
    with pytest.raises(ConfigError, match="crop_pct"):
        PreprocessSpec.from_timm_config({k: v for k, v in LITE0_CFG.items() if k != "crop_pct"})
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="input size"):
            PreprocessSpec.for_weights(figures, bad)  # type: ignore[arg-type]


def test_values_the_c_runtime_refuses_as_float32_are_refused() -> None:
    ok = {"resize_size": 10, "crop_size": 8, "interpolation": "bilinear", "mean": (0, 0, 0), "std": (1, 1, 1)}
    PreprocessSpec(**ok)  # type: ignore[arg-type]
    for bad in ({"std": (1, 1e-50, 1)}, {"mean": (0, 1e39, 0)}, {"scale": 1e-50}, {"scale": 1e39}):
        with pytest.raises(ConfigError, match="float32"):
            PreprocessSpec(**{**ok, **bad})  # type: ignore[arg-type]


def test_reading_a_spec_needs_no_torch() -> None:
    code = "import sys, edgeclf.preprocess; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
