"""What both Python faces of a loaded bundle share: the result types and the image conversions.

:class:`~edgeclf.runtime.Classifier` (the C runtime) and
:class:`~edgeclf.runtime.reference.BundleClassifier` (the Python engines) take the same images
and answer the same :class:`Prediction` and :class:`Decision`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeclf.errors import DataError

ImageLike = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Decision:
    """One image's decision under the bundle's policy (``edgeclf_decision`` in C).

    ``label`` is None when the reject rule answered "unknown"; ``rule`` says which rule decided
    (``argmax``, ``adjusted``, ``costs``, ``reject``); ``top_label`` is the most probable class.
    """

    index: int
    label: str | None
    rule: str
    top_label: str
    probability: float
    score: float

    @property
    def unknown(self) -> bool:
        return self.label is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unknown": self.unknown,
            "rule": self.rule,
            "top_label": self.top_label,
            "probability": self.probability,
            "score": self.score,
        }


@dataclass(frozen=True)
class Prediction:
    labels: list[str]
    probabilities: list[float]
    #: the bundle's decision for this image (its policy; argmax when it has none)
    decision: Decision | None = None

    @property
    def label(self) -> str:
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        pairs = zip(self.labels, self.probabilities, strict=True)
        out: dict[str, Any] = {"top_k": [{"label": lab, "probability": p} for lab, p in pairs]}
        if self.decision is not None:
            out["decision"] = self.decision.to_dict()
        return out


def refuse_unusable(image: object) -> None:
    """The input checks both Python faces share: bytes are not decoded implicitly, and an array shaped
    like a channels-first tensor ((1|3, H, W) with H larger) is not read as a tiny HxWxC image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        raise DataError(
            "image bytes are not accepted directly; decode them first, e.g. PIL.Image.open(io.BytesIO(data)), or pass a file path"
        )
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[0] < image.shape[1]:
        raise DataError(
            f"image array of shape {image.shape} looks channels-first (CxHxW); pass HxWxC, e.g. np.transpose(a, (1, 2, 0))"
        )


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Any accepted image to HxWx3 uint8 RGB, with explicit conversions and clear errors."""
    from edgeclf.data._image import ImageDecodeError, load_rgb, to_rgb

    if isinstance(image, (str, Path)):
        try:
            return np.asarray(load_rgb(Path(image)))
        except ImageDecodeError as e:
            raise DataError(f"{image}: {e}") from None
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    if isinstance(image, np.ndarray):
        a = image
        if a.size == 0:
            raise DataError("empty image array")
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise DataError("image array contains NaN or infinity")
            raise DataError(
                f"image arrays must be uint8 (0..255), got {a.dtype}; convert explicitly, e.g. "
                "(x * 255).round().clip(0, 255).astype(np.uint8)"
            )
        refuse_unusable(a)
        if a.ndim == 2:  # grayscale
            return np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim == 3 and a.shape[2] == 1:
            return np.repeat(a, 3, axis=2)
        if a.ndim == 3 and a.shape[2] == 4:  # RGBA: alpha dropped, as the C runtime does
            return np.ascontiguousarray(a[:, :, :3])
        if a.ndim == 3 and a.shape[2] == 3:
            return a
        raise DataError(f"image arrays must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA); got shape {a.shape}")
    refuse_unusable(image)
    raise DataError(f"cannot use {type(image).__name__} as an image; pass a path, a PIL image or a uint8 array")
