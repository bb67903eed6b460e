"""THE preprocessing spec, and its Python reference implementation.

Everything that turns pixels into a model input — the evaluation transform in
Python, the exported bundle manifest and the C++ runtime — follows this one
spec, with every value fully resolved. A spec is resolved once, from the figures of
the weights (:class:`PretrainedInput`), by :meth:`PreprocessSpec.for_weights`; what
carries it afterwards (a checkpoint, a bundle manifest) carries it resolved.

1. **Decode** to 8-bit RGB by the rules of :mod:`edgeclf.data._image`
   (EXIF orientation applied, 16-bit grey ``>> 8``, alpha dropped).
2. **Resize** so the *shorter* side equals ``resize_size`` (the longer side is
   ``floor(long * resize_size / short + 0.5)``), with ``interpolation``:

   * ``bilinear``: separable linear interpolation, half-pixel centres
     (``src = (dst + 0.5) * in / out - 0.5``, clamped at the borders), no
     antialias — the weights of ``torch.nn.functional.interpolate(mode=
     "bilinear", align_corners=False, antialias=False)``;
   * ``bicubic``: the same with the Keys cubic kernel, ``a = -0.75``
     (OpenCV's and PyTorch's), tap indices clamped to the image (border
     pixels replicated);

   computed in float32 in one fixed order — per output pixel
   ``sum_j wy[j] * (sum_k wx[k] * src[y_j, x_k])``, each sum accumulated tap
   by tap from the first, no fused multiply-add — and stored as uint8 by
   rounding half to even and clamping to ``[0, 255]`` (the resized image is an
   8-bit image, which is what the training cache stores). Fixing the order is
   what lets the C++ runtime reproduce this bit for bit: PyTorch's own
   bilinear kernel fuses multiply-adds on CPUs that have them, which moves a
   few pixels per image by one level (bicubic it computes in this order).
3. **Centre crop** a ``crop_size`` square at offset
   ``((h - crop) // 2, (w - crop) // 2)`` (floor).
4. **Normalise**: ``(x * scale - mean[c]) / std[c]`` in float32, per RGB channel.
5. **Layout** ``NCHW``, channels in RGB order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from PIL import Image

from edgeclf.errors import ConfigError, EdgeclfError

if TYPE_CHECKING:  # torch is imported by normalize_batch alone: reading a spec needs no torch
    import torch

Interpolation = Literal["bilinear", "bicubic"]
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)

PREPROCESS_SPEC_VERSION = 1
#: The largest resize target either runtime accepts (the C runtime's limit): beyond it a
#: single image would need gigabytes.
MAX_RESIZE_SIZE = 8192


@dataclass(frozen=True)
class PretrainedInput:
    """The input a set of pretrained weights expects: the figures a spec is resolved from.

    ``input_size`` is the native square side in pixels; ``crop_pct`` is the fraction of the
    resized image kept by the centre crop at evaluation (resize side = ``input_size /
    crop_pct``). The registry holds these figures for each backbone's reference weights and a
    weights report for the weights actually loaded; :meth:`PreprocessSpec.for_weights` turns
    them into the spec.
    """

    input_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float

    def as_timm_cfg(self) -> dict[str, Any]:
        """These figures under timm's pretrained-config key names."""
        return {
            "input_size": (3, self.input_size, self.input_size),
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_timm_cfg(cls, cfg: Any) -> PretrainedInput:
        """Read the figures from a timm ``PretrainedCfg`` or a timm pretrained-config dict.

        Raises:
            ConfigError: a figure is missing, or the config asks for a crop other than the
                centre crop this spec implements.
            EdgeclfError: a non-square native input or a channel value list not of 3.
        """

        def get(key: str) -> Any:
            value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
            if value is None:
                raise ConfigError(f"the pretrained config has no {key!r}")
            return value

        crop_mode = cfg.get("crop_mode") if isinstance(cfg, dict) else getattr(cfg, "crop_mode", None)
        if crop_mode not in (None, "center"):
            raise ConfigError(f"crop_mode {crop_mode!r} of the pretrained config is not supported (allowed: 'center')")
        _, height, width = get("input_size")
        if height != width:
            raise EdgeclfError(f"non-square native input {height}x{width} is not supported")
        return cls(
            input_size=int(height),
            interpolation=str(get("interpolation")),
            mean=_triple(get("mean")),
            std=_triple(get("std")),
            crop_pct=float(get("crop_pct")),
        )


def _triple(values: Any) -> tuple[float, float, float]:
    items = tuple(float(v) for v in values)
    if len(items) != 3:
        raise EdgeclfError(f"expected 3 channel values, got {items}")
    return items  # type: ignore[return-value]


def _float32(values: tuple[Any, ...]) -> np.ndarray:
    """``values`` as the C runtime holds them (float32), with inf where they overflow."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32)


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
        for name in ("resize_size", "crop_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"preprocessing {name} must be an integer, got {v!r}")
        if self.crop_size <= 0 or self.resize_size < self.crop_size or self.resize_size > MAX_RESIZE_SIZE:
            raise ConfigError(
                f"preprocessing needs 0 < crop_size <= resize_size <= {MAX_RESIZE_SIZE}, got crop {self.crop_size}, "
                f"resize {self.resize_size}"
            )
        if (
            not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in (*self.mean, *self.std, self.scale)
            )
            or not self.scale > 0
        ):
            raise ConfigError(
                f"preprocessing mean, std and scale must be finite numbers, scale > 0; got {self.mean}, {self.std}, {self.scale}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")
        # The runtimes compute in float32 (the C reader converts, then checks): a value that is
        # finite and positive as a double but not as a float32 is refused here too.
        mean32, std32, scale32 = _float32(self.mean), _float32(self.std), _float32((self.scale,))
        if not (np.isfinite(mean32).all() and np.isfinite(std32).all() and (std32 > 0).all()):
            raise ConfigError(
                f"preprocessing mean and std must be finite as float32 numbers and std > 0 as float32; "
                f"got {self.mean}, {self.std}"
            )
        if not (np.isfinite(scale32).all() and (scale32 > 0).all()):
            raise ConfigError(f"preprocessing scale must be finite and > 0 as a float32 number; got {self.scale}")
        if self.antialias is not False:
            raise ConfigError("antialiased resizing is not part of preprocessing spec version 1")
        fixed = {
            "color_order": "RGB",
            "resize_mode": "shorter_side",
            "rounding": "half_to_even",
            "crop_offset": "floor",
            "layout": "NCHW",
            "dtype": "float32",
        }
        for name, want in fixed.items():
            if getattr(self, name) != want:
                raise ConfigError(
                    f"preprocessing {name} = {getattr(self, name)!r} is not supported (spec version 1 implements {want!r})"
                )

    @classmethod
    def for_weights(cls, weights: PretrainedInput, image_size: int | None = None) -> PreprocessSpec:
        """The spec for weights that expect ``weights``, run at ``image_size`` pixels.

        This is the one place a spec is resolved. The crop is ``image_size`` (``None``: the
        weights' native ``input_size``), the resize side ``floor(crop / crop_pct)``, and
        interpolation, mean and std are the weights' own. A value the spec does not implement
        (an interpolation other than bilinear/bicubic, say) is a :class:`ConfigError` naming
        it and the allowed ones; nothing is replaced by a default.
        """
        crop = weights.input_size if image_size is None else image_size
        if isinstance(crop, bool) or not isinstance(crop, int) or crop <= 0:
            raise ConfigError(f"the input size must be a positive number of pixels, got {crop!r}")
        crop_pct = weights.crop_pct
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        return cls(
            resize_size=int(math.floor(crop / crop_pct)),
            crop_size=crop,
            interpolation=weights.interpolation,  # type: ignore[arg-type]  # checked by __post_init__
            mean=tuple(weights.mean),  # type: ignore[arg-type]
            std=tuple(weights.std),  # type: ignore[arg-type]
        )

    @classmethod
    def from_timm_config(cls, cfg: Any, image_size: int | None = None) -> PreprocessSpec:
        """:meth:`for_weights` for the figures of a timm pretrained config (``PretrainedCfg`` or dict)."""
        return cls.for_weights(PretrainedInput.from_timm_cfg(cfg), image_size)

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
        v = d.get("version", PREPROCESS_SPEC_VERSION)
        if isinstance(v, bool) or v != PREPROCESS_SPEC_VERSION:
            raise ConfigError(
                f"preprocessing spec version {d.get('version')} is not supported (expected {PREPROCESS_SPEC_VERSION})"
            )
        try:
            if not isinstance(d["mean"], (list, tuple)) or not isinstance(d["std"], (list, tuple)):
                raise TypeError("mean and std must be lists of 3 numbers")
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
    x = rgb.astype(np.float32)
    yi, yw = _taps(h, oh, spec.interpolation)
    xi, xw = _taps(w, ow, spec.interpolation)
    rows = x[:, xi[0], :] * xw[0][None, :, None]
    for k in range(1, len(xi)):
        rows += x[:, xi[k], :] * xw[k][None, :, None]
    out = rows[yi[0]] * yw[0][:, None, None]
    for k in range(1, len(yi)):
        out += rows[yi[k]] * yw[k][:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_F32 = np.float32


def _taps(in_size: int, out_size: int, interpolation: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Source indices and float32 weights per output position, tap by tap (see step 2)."""
    scale = _F32(in_size) / _F32(out_size)
    real = scale * (np.arange(out_size, dtype=_F32) + _F32(0.5)) - _F32(0.5)
    if interpolation == "bilinear":
        real = np.maximum(real, _F32(0))
        i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
        l1 = np.clip(real - i0.astype(_F32), _F32(0), _F32(1))
        return [i0, np.where(i0 < in_size - 1, i0 + 1, i0)], [_F32(1) - l1, l1]
    a = _F32(-0.75)
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    t = np.clip(real - i0.astype(_F32), _F32(0), _F32(1))

    def cubic1(v: np.ndarray) -> np.ndarray:
        return ((a + _F32(2)) * v - (a + _F32(3))) * v * v + _F32(1)

    def cubic2(v: np.ndarray) -> np.ndarray:
        return ((a * v - _F32(5) * a) * v + _F32(8) * a) * v - _F32(4) * a

    x2 = _F32(1) - t
    weights = [cubic2(t + _F32(1)), cubic1(t), cubic1(x2), cubic2(x2 + _F32(1))]
    return [np.clip(i0 - 1 + j, 0, in_size - 1) for j in range(4)], [w.astype(_F32) for w in weights]


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


def normalize_batch(batch_uint8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Normalise an N x 3 x H x W uint8 batch (already resized/cropped) to float32, in torch."""
    import torch

    mean = torch.tensor(spec.mean, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    return (batch_uint8.to(torch.float32) * spec.scale - mean) / std


# -- camera pixel formats (the reference for the C runtime's conversions) -------------------
# BT.601 limited range ("video range") YUV -> RGB in 20-bit fixed point: the integer
# conversion of OpenCV's COLOR_YUV2RGB_NV12, chroma shared by each 2x2 block.
_CY, _CUB, _CUG, _CVG, _CVR, _SHIFT = 1220542, 2116026, -409993, -852492, 1673527, 20


def nv12_to_rgb(nv12: np.ndarray) -> np.ndarray:
    """``(h * 3 / 2) x w`` uint8 NV12 (Y plane, then interleaved UV) -> ``h x w x 3`` RGB."""
    if nv12.dtype != np.uint8 or nv12.ndim != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2:
        raise ConfigError(f"expected an (h*3/2) x w uint8 NV12 array with even sizes, got {nv12.dtype} {nv12.shape}")
    h = nv12.shape[0] // 3 * 2
    y = nv12[:h].astype(np.int64)
    uv = nv12[h:].astype(np.int64)
    u = np.repeat(np.repeat(uv[:, 0::2], 2, axis=0), 2, axis=1) - 128
    v = np.repeat(np.repeat(uv[:, 1::2], 2, axis=0), 2, axis=1) - 128
    yy = np.maximum(y - 16, 0) * _CY
    half = 1 << (_SHIFT - 1)
    r = (yy + half + _CVR * v) >> _SHIFT
    g = (yy + half + _CVG * v + _CUG * u) >> _SHIFT
    b = (yy + half + _CUB * u) >> _SHIFT
    return np.clip(np.stack([r, g, b], axis=2), 0, 255).astype(np.uint8)


def rgb_to_nv12(rgb: np.ndarray) -> np.ndarray:
    """``h x w x 3`` RGB (even sizes) -> NV12 (BT.601 limited range); for making test frames."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] % 2 or rgb.shape[1] % 2:
        raise ConfigError(f"expected an h x w x 3 uint8 array with even sizes, got {rgb.dtype} {rgb.shape}")
    x = rgb.astype(np.float64)
    y = 16 + 0.256788 * x[..., 0] + 0.504129 * x[..., 1] + 0.097906 * x[..., 2]
    u = 128 - 0.148223 * x[..., 0] - 0.290993 * x[..., 1] + 0.439216 * x[..., 2]
    v = 128 + 0.439216 * x[..., 0] - 0.367788 * x[..., 1] - 0.071427 * x[..., 2]
    h, w = rgb.shape[:2]
    ub = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    vb = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    uv = np.stack([ub, vb], axis=2).reshape(h // 2, w)
    out = np.concatenate([y, uv], axis=0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
