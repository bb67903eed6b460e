"""``edgeclf.predict(bundle, images)``: calibrated top-k labels from a bundle, on the fastest artifact at hand."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeclf.errors import ConfigError, DataError
from edgeclf.evaluate.metrics import softmax
from edgeclf.export.bundle import BundleError, BundleManifest, read_bundle, read_parity

_RUNTIME_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "tensorrt": "tensorrt"}

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


def choose_artifact(bundle_dir: Path, manifest: BundleManifest, runtime: str | None = None) -> Any:
    """The fastest shipped artifact whose runtime is installed (speed from the parity run), or ``runtime``'s."""
    parity = read_parity(Path(bundle_dir))  # a damaged report is a BundleError naming the file and field
    speed = parity.speeds() if parity is not None else {}
    candidates = [
        a
        for a in manifest.artifacts
        if a.status == "ok" and importlib.util.find_spec(_RUNTIME_MODULE.get(a.runtime, a.runtime)) is not None
    ]
    if runtime is not None:
        candidates = [a for a in candidates if a.runtime == runtime]
    if not candidates:
        have = ", ".join(sorted({f"{a.runtime}/{a.precision}" for a in manifest.artifacts})) or "none"
        raise ConfigError(
            f"no artifact in {bundle_dir} can run here{f' on {runtime}' if runtime else ''} "
            f"(bundle has: {have}); install the runtime or re-export"
        )
    return min(candidates, key=lambda a: speed.get((a.format, a.precision), float("inf")))


class BundleClassifier:
    """A loaded bundle: ``classify(images, top_k)`` returns calibrated predictions."""

    def __init__(self, bundle_dir: str | Path, runtime: str | None = None, threads: int | None = None) -> None:
        from edgeclf.export.runners import load_runner

        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_bundle(self.bundle_dir, verify=True)
        self.artifact = choose_artifact(self.bundle_dir, self.manifest, runtime)
        self.spec = self.manifest.spec()
        self.labels = self.manifest.labels
        a = self.artifact
        try:
            self.runner = load_runner(
                self.bundle_dir,
                a.to_artifact(),
                self.spec,
                self.labels,
                threads=threads,
            )
        except BundleError:
            raise
        except Exception as e:  # noqa: BLE001 - the runtimes raise their own types for a file they cannot load
            raise BundleError(
                f"bundle {self.bundle_dir}: {a.file} matches its SHA-256 but {a.runtime} cannot load it "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); re-export the "
                "bundle"
            ) from None
        try:  # one black frame: the model's outputs must match the labels now, not at the first real image
            probe = np.asarray(self.runner([np.zeros((self.spec.crop_size, self.spec.crop_size, 3), np.uint8)]))
        except Exception as e:  # noqa: BLE001
            raise BundleError(
                f"bundle {self.bundle_dir}: {a.file} does not run with the manifest's {len(self.labels)} "
                f"labels and preprocessing ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "re-export the bundle"
            ) from None
        if probe.ndim != 2 or probe.shape[1] != len(self.labels):
            raise BundleError(
                f"bundle {self.bundle_dir}: {a.file} has {probe.shape[-1] if probe.ndim else 0} outputs but "
                f"the manifest has {len(self.labels)} labels; re-export the bundle"
            )

    def logits(self, images: Sequence[ImageLike]) -> np.ndarray:
        from edgeclf.preprocess import resize_uint8

        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        if isinstance(images, (bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
            raise DataError(f"images must be a path, a PIL image, a uint8 array or a list of them, got {type(images).__name__}")
        if len(images) == 0:
            raise DataError("no images given")
        # decode and resize one image at a time: only the small resized copies are kept (resizing is the
        # spec's first step, and resizing an image already at resize_size is the identity: same bits)
        small = [resize_uint8(to_rgb_array(im), self.spec) for im in images]
        return np.asarray(self.runner(small), dtype=np.float32)

    def classify(self, images: Sequence[ImageLike] | ImageLike, top_k: int = 5) -> list[Prediction]:
        from edgeclf.evaluate.decision import RULES, decide

        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        logits = self.logits(images)  # type: ignore[arg-type]
        probs = softmax(logits, self.manifest.temperature)
        d = decide(logits, self.manifest.temperature, self.manifest.decision)
        k = min(top_k, len(self.labels))
        out = []
        for j, p in enumerate(probs):
            order = np.argsort(-p, kind="stable")[:k]
            idx = int(d.index[j])
            dec = Decision(
                idx,
                self.labels[idx] if idx >= 0 else None,
                RULES[int(d.rule[j])],
                self.labels[int(d.argmax[j])],
                float(d.probability[j]),
                float(d.score[j]),
            )
            out.append(Prediction([self.labels[i] for i in order], [float(p[i]) for i in order], dec))
        return out


def predict(
    bundle: str | Path, images: Sequence[ImageLike] | ImageLike, top_k: int = 5, runtime: str | None = None
) -> list[Prediction]:
    """Classify ``images`` (paths, PIL images or uint8 arrays) with a bundle; calibrated top-k per image."""
    return BundleClassifier(bundle, runtime).classify(images, top_k)
