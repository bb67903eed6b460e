"""THE preprocessing spec, and its Python reference implementation.

Everything that turns pixels into a model input — the evaluation transform in
Python, the exported bundle manifest and the C++ runtime — follows this one
spec, with every value fully resolved:

1. **Decode** to 8-bit RGB by the rules of :mod:`edgeclf.data._image`
   (EXIF orientation applied, 16-bit grey ``>> 8``, alpha dropped).
2. **Resize** so the *shorter* side equals ``resize_size`` (the longer side is
   ``floor(long * resize_size / short + 0.5)``), with ``interpolation``:

   * ``bilinear``: separable linear interpolation, half-pixel centres
     (``src = (dst + 0.5) * in / out - 0.5``, clamped at the borders), no
     antialias — ``torch.nn.functional.interpolate(mode="bilinear",
     align_corners=False, antialias=False)``;
   * ``bicubic``: the same with the Keys cubic kernel, ``a = -0.75``
     (OpenCV's and PyTorch's), border pixels replicated;

   computed in float32 and stored as uint8 by rounding half to even and
   clamping to ``[0, 255]`` — the resized image is an 8-bit image, which is
   what the training cache stores.
3. **Centre crop** a ``crop_size`` square at offset
   ``((h - crop) // 2, (w - crop) // 2)`` (floor).
4. **Normalise**: ``(x * scale - mean[c]) / std[c]`` in float32, per RGB channel.
5. **Layout** ``NCHW``, channels in RGB order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeclf.errors import ConfigError

Interpolation = Literal["bilinear", "bicubic"]

PREPROCESS_SPEC_VERSION = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """Fully resolved preprocessing; see the module docstring for the exact algorithm."""

    resize_size: int
    crop_size: int
    interpolation: Interpolation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0 / 255.0
    color_order: Literal["RGB"] = "RGB"
    resize_mode: Literal["shorter_side"] = "shorter_side"
    antialias: bool = False
    rounding: Literal["half_to_even"] = "half_to_even"
    crop_offset: Literal["floor"] = "floor"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    version: int = PREPROCESS_SPEC_VERSION

    def __post_init__(self) -> None:
        if self.crop_size <= 0 or self.resize_size < self.crop_size:
            raise ConfigError(
                f"preprocessing needs 0 < crop_size <= resize_size, got crop {self.crop_size}, resize {self.resize_size}"
            )
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"interpolation must be bilinear or bicubic, got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")
        if self.antialias:
            raise ConfigError("antialiased resizing is not part of preprocessing spec version 1")

    @classmethod
    def from_timm_config(cls, cfg: dict[str, Any], image_size: int | None = None) -> PreprocessSpec:
        """Resolve a timm pretrained config (mean/std/interpolation/crop_pct) at ``image_size``."""
        crop = int(image_size or cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        interp = cfg.get("interpolation", "bilinear")
        if interp not in ("bilinear", "bicubic"):
            interp = "bilinear"
        return cls(
            resize_size=int(math.floor(crop / crop_pct)),
            crop_size=crop,
            interpolation=interp,
            mean=tuple(float(m) for m in cfg["mean"]),  # type: ignore[arg-type]
            std=tuple(float(s) for s in cfg["std"]),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown preprocessing fields: {', '.join(sorted(unknown))}")
        if d.get("version", PREPROCESS_SPEC_VERSION) != PREPROCESS_SPEC_VERSION:
            raise ConfigError(f"preprocessing spec version {d.get('version')} is not supported (expected {PREPROCESS_SPEC_VERSION})")
        try:
            return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})
        except (KeyError, TypeError) as e:
            raise ConfigError(f"invalid preprocessing spec: {e}") from None


def resized_shape(height: int, width: int, resize_size: int) -> tuple[int, int]:
    """Output (h, w) when the shorter side becomes ``resize_size`` (aspect kept, rounded)."""
    if height <= 0 or width <= 0:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    if height <= width:
        return resize_size, max(1, int(math.floor(width * resize_size / height + 0.5)))
    return max(1, int(math.floor(height * resize_size / width + 0.5))), resize_size


def resize_uint8(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Step 2: HxWx3 uint8 -> resized HxWx3 uint8 (shorter side = ``spec.resize_size``)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    oh, ow = resized_shape(h, w, spec.resize_size)
    if (oh, ow) == (h, w):
        return np.ascontiguousarray(rgb)
    t = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    out = F.interpolate(t, size=(oh, ow), mode=spec.interpolation, align_corners=False, antialias=False)
    out = torch.round(out).clamp_(0, 255).to(torch.uint8)
    return out[0].permute(1, 2, 0).contiguous().numpy()


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Step 3: the centred ``size`` x ``size`` window (floor offsets)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ConfigError(f"cannot crop {size}x{size} from a {w}x{h} image")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def normalize(img: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Step 4 + 5: HxWx3 uint8 -> 3xHxW float32."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    x = img.transpose(2, 0, 1).astype(np.float32) * np.float32(spec.scale)
    return (x - mean) / std


def preprocess(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The reference implementation: decoded RGB image -> 3 x crop x crop float32."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return normalize(center_crop(resize_uint8(rgb, spec), spec.crop_size), spec)


def preprocess_path(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Decode ``path`` by edgeclf's rules and preprocess it."""
    from edgeclf.data._image import load_rgb

    return preprocess(load_rgb(Path(path)), spec)


def normalize_batch(batch_uint8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Normalise an N x 3 x H x W uint8 batch (already resized/cropped) to float32, in torch."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    return (batch_uint8.to(torch.float32) * spec.scale - mean) / std
