"""Robustness suite: how much a classifier degrades under common image corruptions.

Every corruption is applied to the *decoded* image (H x W x 3 uint8 RGB), before the
predictor's own preprocessing, and the corrupted images go through the predictor
unchanged. The suite is written against the :class:`~edgeclf.evaluate.predictor.Predictor`
protocol only (a callable from images to logits with ``.classes`` and ``.spec``), so the
same images, corrupted the same way, can be fed to the eager model, to an exported
ONNX Runtime / OpenVINO artifact or to the C++ runtime, and the results compared pair by
pair (:func:`compare_robustness`).

Working resolution
    By default (``at_model_resolution=True``) each image is first resized so that its
    shorter side equals ``predictor.spec.resize_size``, with the reference resize of
    :mod:`edgeclf.preprocess`, and corrupted at that size. The predictor then resizes
    again, which the spec makes an exact identity (same shape in, same shape out), so the
    clean predictions are exactly those on the original images for any predictor that
    follows the spec. This makes the severities mean the same thing for a 200 px thumbnail
    and a 12 MP photo: a blur radius of 2 px, a JPEG 8 x 8 block or a noise grain is
    measured in *model-input* pixels, as in ImageNet-C (which corrupts the 224 px images).
    Without it, the same JPEG quality or blur radius on a large photo would mostly vanish
    in the downscale. ``at_model_resolution=False`` corrupts the images as given.

Determinism
    Every image gets its own generator, ``numpy.random.default_rng(SeedSequence([seed,
    crc32(corruption name), crc32(repr(float(severity))), image index]))`` (see
    :func:`corruption_rng`): the result does not depend on batch size, on the order the
    corruptions run in, on which other corruptions run, or on the Python process (no
    ``hash()``). The same seed gives the same corrupted images for every predictor, so
    eager-vs-int8 comparisons are paired. JPEG output depends on the installed libjpeg;
    it is deterministic for a given installation.

The corruptions (``CORRUPTIONS``, in this order; a severity's label is what tables and
plots show):

================  ==================================  =======================================
name              severities                          meaning
================  ==================================  =======================================
gaussian_noise    8, 16, 32 (``sigma=8``)             additive N(0, sigma^2) per pixel and
                                                      channel, in 8-bit levels; random
gaussian_blur     1, 2, 4 (``r=1``)                   ``PIL.ImageFilter.GaussianBlur(radius)``
brightness        -64, -32, +32, +64 (``+32``)        add a constant to every channel (8-bit
                                                      levels): darker / brighter
contrast          0.25, 0.5, 1.5, 2 (``x0.5``)        scale the distance to the image's mean
                                                      luma (PIL ``ImageEnhance.Contrast``'s
                                                      definition): lower / higher contrast
jpeg              50, 30, 10 (``q=30``)               JPEG round trip in memory, quality q,
                                                      4:2:0 chroma subsampling
rotate            -30, -15, +15, +30, 90 (``+15°``)   counter-clockwise about the centre; see
                                                      :func:`rotate` for the fill; 90° turns
                                                      the whole image (``np.rot90``)
translate         0.05, 0.10, 0.15 (``10%``)          shift by that fraction of the shorter
                                                      side in a random direction, edges
                                                      replicated; random
================  ==================================  =======================================

All results are clipped to ``[0, 255]`` and rounded half to even; every ``apply`` returns a
new uint8 H x W x 3 array of the input's shape, except a rotation by 90° (or 270°), which
swaps height and width.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from edgeclf.errors import ConfigError, DataError
from edgeclf.evaluate.predictor import Predictor

__all__ = [
    "CORRUPTIONS",
    "ComparisonRow",
    "Corruption",
    "RobustnessResult",
    "RobustnessRow",
    "apply_corruption",
    "brightness",
    "compare_robustness",
    "contrast",
    "corruption_rng",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "plot_robustness",
    "robustness_table_rows",
    "rotate",
    "run_robustness",
    "translate",
]

CorruptFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

CLEAN = "clean"
"""The ``corruption`` name of the row measured on the uncorrupted images."""


# ---------------------------------------------------------------------------
# Corruptions: each a pure function (image, severity, rng) -> new uint8 image.
# ---------------------------------------------------------------------------


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half to even and clip to [0, 255]."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add independent N(0, ``sigma``²) noise to every pixel and channel.

    ``sigma`` is in 8-bit levels (0..255). Random: the noise comes from ``rng``.
    ``sigma = 0`` returns an unchanged copy.
    """
    if sigma <= 0:
        return img.copy()
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return _to_uint8(img.astype(np.float32) + noise)


def gaussian_blur(img: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """``PIL.ImageFilter.GaussianBlur(radius)`` (``radius`` is the Gaussian's standard
    deviation in pixels; PIL approximates it with repeated box blurs, borders extended).

    Deterministic (``rng`` unused). ``radius = 0`` returns an unchanged copy.
    """
    if radius <= 0:
        return img.copy()
    out = Image.fromarray(img, "RGB").filter(ImageFilter.GaussianBlur(float(radius)))
    return np.array(out, dtype=np.uint8)


def brightness(img: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """Add ``delta`` 8-bit levels to every channel (negative: darker), clipped to [0, 255].

    Deterministic (``rng`` unused). ``delta = 0`` is the identity.
    """
    return _to_uint8(img.astype(np.float32) + np.float32(delta))


def _mean_luma(img: np.ndarray) -> float:
    """Mean ITU-R 601-2 luma (``L = 0.299 R + 0.587 G + 0.114 B``), as PIL's ``convert("L")``."""
    luma = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return float(np.mean(luma, dtype=np.float64))


def contrast(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Scale every pixel's distance to the image's mean luma by ``factor``.

    ``out = mean + factor * (img - mean)`` per channel, where ``mean`` is the mean luma
    rounded to an integer level (the definition of PIL's ``ImageEnhance.Contrast``).
    ``factor < 1`` flattens the image towards grey, ``factor > 1`` increases contrast
    (clipped). Deterministic (``rng`` unused). ``factor = 1`` is the identity.
    """
    mean = np.float32(round(_mean_luma(img)))
    return _to_uint8(mean + np.float32(factor) * (img.astype(np.float32) - mean))


def jpeg(img: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Encode as baseline JPEG at ``quality`` (1..95, 4:2:0 chroma subsampling, no
    optimisation) in memory with PIL and decode again. Lower quality: stronger blocking
    and colour bleeding. Deterministic (``rng`` unused) for a given libjpeg.
    """
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=2, optimize=False)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def rotate(img: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate counter-clockwise by ``degrees`` about the image centre.

    A multiple of 90° turns the whole image losslessly (``np.rot90``; 90° and 270° swap
    height and width). Any other angle keeps the canvas size (``PIL.Image.rotate`` with
    ``expand=False``, bilinear resampling), so the corners of the result are outside the
    original image. They are filled with **the image's own mean colour** (per channel,
    rounded): a neutral fill that adds no new colour and barely moves the image's colour
    statistics. A black fill would instead measure how the model reacts to black wedges,
    and edge replication would smear border pixels into streaks. Deterministic
    (``rng`` unused). ``degrees = 0`` returns an unchanged copy.
    """
    quarter, rest = divmod(float(degrees), 90.0)
    if rest == 0.0:
        return np.ascontiguousarray(np.rot90(img, k=int(quarter) % 4))
    fill = tuple(int(v) for v in np.rint(img.reshape(-1, 3).mean(axis=0, dtype=np.float64)))
    out = Image.fromarray(img, "RGB").rotate(float(degrees), resample=Image.Resampling.BILINEAR, expand=False, fillcolor=fill)
    return np.array(out, dtype=np.uint8)


def translate(img: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Shift the content by ``fraction`` of the shorter side in a random direction.

    The direction is an angle drawn uniformly from [0, 2π) with ``rng``; the shift is
    ``(round(d cos a), round(d sin a))`` pixels with ``d = fraction * min(H, W)``. The
    uncovered border is filled by edge replication (the outermost row / column is
    repeated), so no artificial colour enters the image. Same shape as the input.
    ``fraction = 0`` is the identity.
    """
    h, w = img.shape[:2]
    dist = float(fraction) * min(h, w)
    if dist <= 0:
        return img.copy()
    angle = rng.uniform(0.0, 2.0 * math.pi)
    dx, dy = int(round(dist * math.cos(angle))), int(round(dist * math.sin(angle)))
    dx, dy = max(-w, min(w, dx)), max(-h, min(h, dy))
    py, px = abs(dy), abs(dx)
    padded = np.pad(img, ((py, py), (px, px), (0, 0)), mode="edge")
    # out[y, x] = img[clamp(y - dy), clamp(x - dx)]
    return np.ascontiguousarray(padded[py - dy : py - dy + h, px - dx : px - dx + w])


# ---------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{float(v):g}"


def _rotation_label(deg: float) -> str:
    return f"{_fmt(deg)}°" if float(deg) % 90.0 == 0.0 else f"{float(deg):+g}°"


@dataclass(frozen=True)
class Corruption:
    """One corruption: a deterministic function of (image, severity, per-image rng).

    ``severities`` are the parameter values the suite runs, in the order tables and plots
    show them; ``format_severity`` turns one into its label (``"sigma=8"``, ``"q=30"``,
    ``"+15°"``). ``apply`` must return a new H x W x 3 uint8 array (it may change the
    shape only when the corruption is a geometric one that must, e.g. a 90° rotation).
    To run other severities, ``dataclasses.replace(CORRUPTIONS["jpeg"], severities=(20,))``.
    """

    name: str
    severities: tuple[float, ...]
    apply: CorruptFn
    format_severity: Callable[[float], str] = _fmt
    title: str = ""
    group: str = ""
    random: bool = False
    description: str = ""

    def label(self, severity: float) -> str:
        """The display label of one severity."""
        return self.format_severity(severity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title or self.name,
            "group": self.group,
            "random": self.random,
            "severities": [float(s) for s in self.severities],
            "severity_labels": [self.label(s) for s in self.severities],
            "description": self.description,
        }


CORRUPTIONS: Mapping[str, Corruption] = MappingProxyType(
    {
        c.name: c
        for c in (
            Corruption(
                "gaussian_noise",
                (8.0, 16.0, 32.0),
                gaussian_noise,
                lambda s: f"sigma={_fmt(s)}",
                "Gaussian noise",
                "noise",
                True,
                "additive N(0, sigma^2) noise per pixel and channel, 8-bit levels",
            ),
            Corruption(
                "gaussian_blur",
                (1.0, 2.0, 4.0),
                gaussian_blur,
                lambda s: f"r={_fmt(s)}",
                "Gaussian blur",
                "blur",
                False,
                "PIL GaussianBlur, radius (std. dev.) in pixels",
            ),
            Corruption(
                "brightness",
                (-64.0, -32.0, 32.0, 64.0),
                brightness,
                lambda s: f"{float(s):+g}",
                "brightness shift",
                "photometric",
                False,
                "constant added to every channel, 8-bit levels",
            ),
            Corruption(
                "contrast",
                (0.25, 0.5, 1.5, 2.0),
                contrast,
                lambda s: f"x{_fmt(s)}",
                "contrast",
                "photometric",
                False,
                "distance to the mean luma scaled by the factor",
            ),
            Corruption(
                "jpeg",
                (50.0, 30.0, 10.0),
                jpeg,
                lambda s: f"q={_fmt(s)}",
                "JPEG compression",
                "digital",
                False,
                "JPEG round trip at this quality, 4:2:0 subsampling",
            ),
            Corruption(
                "rotate",
                (-30.0, -15.0, 15.0, 30.0, 90.0),
                rotate,
                _rotation_label,
                "rotation",
                "geometric",
                False,
                "counter-clockwise about the centre; same canvas, corners filled with the image's mean colour; "
                "90° turns the whole image",
            ),
            Corruption(
                "translate",
                (0.05, 0.10, 0.15),
                translate,
                lambda s: f"{_fmt(100 * float(s))}%",
                "translation",
                "geometric",
                True,
                "shift by this fraction of the shorter side in a random direction, edges replicated",
            ),
        )
    }
)
"""Every built-in corruption by name, in the order the suite runs and shows them."""


def corruption_rng(seed: int, name: str, severity: float, index: int) -> np.random.Generator:
    """The generator for image ``index`` under (``name``, ``severity``) in a suite seeded ``seed``.

    ``default_rng(SeedSequence([seed, crc32(name), crc32(repr(float(severity))), index]))``:
    stable across processes and platforms, independent of batching and of which other
    corruptions run.
    """
    if seed < 0 or index < 0:
        raise ConfigError(f"seed and image index must be non-negative, got seed {seed}, index {index}")
    entropy = [int(seed), zlib.crc32(name.encode("utf-8")), zlib.crc32(repr(float(severity)).encode("ascii")), int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _resolve(corruption: str | Corruption) -> Corruption:
    if isinstance(corruption, Corruption):
        return corruption
    try:
        return CORRUPTIONS[corruption]
    except KeyError:
        raise ConfigError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}") from None


def _check_image(img: Any, what: str) -> np.ndarray:
    if (
        not isinstance(img, np.ndarray)
        or img.dtype != np.uint8
        or img.ndim != 3
        or img.shape[2] != 3
        or img.shape[0] == 0
        or img.shape[1] == 0
    ):
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise DataError(f"{what} must be an H x W x 3 uint8 RGB array, got {desc}")
    return img


def apply_corruption(
    image: np.ndarray, corruption: str | Corruption, severity: float, seed: int = 0, index: int = 0
) -> np.ndarray:
    """Corrupt one image exactly as :func:`run_robustness` does for image ``index``.

    Useful to show examples of the corrupted inputs next to the numbers.
    """
    c = _resolve(corruption)
    img = np.ascontiguousarray(_check_image(image, "image"))
    out = c.apply(img, float(severity), corruption_rng(seed, c.name, severity, index))
    return _check_image(out, f"corruption {c.name!r} at {c.label(severity)} output")


# ---------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RobustnessRow:
    """Metrics on the images under one (corruption, severity), or on the clean images.

    ``flip_rate``: fraction of images whose top-1 class differs from the clean top-1
    (whether or not either is right). ``delta_macro_f1 = macro_f1 - clean macro_f1``
    (negative: worse than clean). The clean row has ``corruption = "clean"``,
    ``severity = None``, ``severity_label = ""``, flip rate and delta 0.
    """

    corruption: str
    severity: float | None
    severity_label: str
    accuracy: float
    macro_f1: float
    flip_rate: float
    delta_macro_f1: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "corruption": self.corruption,
            "severity": self.severity,
            "severity_label": self.severity_label,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "flip_rate": self.flip_rate,
            "delta_macro_f1": self.delta_macro_f1,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobustnessRow:
        sev = d.get("severity")
        return cls(
            corruption=str(d["corruption"]),
            severity=None if sev is None else float(sev),
            severity_label=str(d.get("severity_label", "")),
            accuracy=float(d["accuracy"]),
            macro_f1=float(d["macro_f1"]),
            flip_rate=float(d["flip_rate"]),
            delta_macro_f1=float(d["delta_macro_f1"]),
        )


@dataclass(frozen=True)
class RobustnessResult:
    """The outcome of :func:`run_robustness` on one predictor.

    ``rows`` are in suite order (corruption, then severity as listed by the corruption).
    ``mean_macro_f1_by_corruption`` averages each corruption's rows over its severities;
    ``mean_corruption_macro_f1`` averages those per-corruption means (so a corruption with
    more severities does not weigh more), as ImageNet-C averages over corruption types.
    ``resolution`` is the shorter side the images were corrupted at (``None``: as given).
    """

    clean: RobustnessRow
    rows: list[RobustnessRow]
    classes: list[str]
    n_images: int
    seed: int
    resolution: int | None
    corruptions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean_macro_f1_by_corruption(self) -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for r in self.rows:
            out.setdefault(r.corruption, []).append(r.macro_f1)
        return {k: float(np.mean(v)) for k, v in out.items()}

    @property
    def mean_corruption_macro_f1(self) -> float | None:
        per = self.mean_macro_f1_by_corruption
        return float(np.mean(list(per.values()))) if per else None

    def row(self, corruption: str, severity: float | None = None) -> RobustnessRow:
        """The row of one (corruption, severity); ``row("clean")`` is the clean row."""
        if corruption == CLEAN:
            return self.clean
        for r in self.rows:
            if (
                r.corruption == corruption
                and r.severity is not None
                and severity is not None
                and math.isclose(r.severity, float(severity))
            ):
                return r
        raise KeyError(f"no robustness row for {corruption} at severity {severity}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (plain floats, no NaN)."""
        return {
            "seed": self.seed,
            "n_images": self.n_images,
            "classes": list(self.classes),
            "resolution": self.resolution,
            "corruptions": [dict(c) for c in self.corruptions],
            "clean": self.clean.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "mean_corruption_macro_f1": {
                "overall": self.mean_corruption_macro_f1,
                "per_corruption": self.mean_macro_f1_by_corruption,
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobustnessResult:
        """Read back what :meth:`to_dict` wrote (e.g. from an evaluation's metrics.json)."""
        try:
            res = d.get("resolution")
            return cls(
                clean=RobustnessRow.from_dict(d["clean"]),
                rows=[RobustnessRow.from_dict(r) for r in d["rows"]],
                classes=[str(c) for c in d.get("classes", [])],
                n_images=int(d.get("n_images", 0)),
                seed=int(d.get("seed", 0)),
                resolution=None if res is None else int(res),
                corruptions=[dict(c) for c in d.get("corruptions", [])],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"not a robustness result: {e}") from None


# ---------------------------------------------------------------------------
# Running the suite.
# ---------------------------------------------------------------------------


def _metrics(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    acc = float(np.mean(pred == y))
    f1 = float(f1_score(y, pred, labels=list(range(n_classes)), average="macro", zero_division=0))
    return acc, f1


def _top1(predictor: Predictor, batch: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    logits = np.asarray(predictor(batch))
    if logits.shape != (len(batch), n_classes):
        raise ConfigError(
            f"the predictor returned logits of shape {logits.shape} for {len(batch)} images; "
            f"expected ({len(batch)}, {n_classes}), one column per class"
        )
    return logits.argmax(axis=1)


def run_robustness(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    seed: int = 0,
    corruptions: Iterable[str | Corruption] | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    at_model_resolution: bool = True,
) -> RobustnessResult:
    """Accuracy, macro-F1 and flip rate on the clean images and under every (corruption, severity).

    ``images`` are decoded H x W x 3 uint8 RGB arrays of any size; ``labels`` their class
    indices into ``predictor.classes``. ``corruptions`` are names in :data:`CORRUPTIONS` or
    :class:`Corruption` objects (default: all built-in ones). For each (corruption,
    severity) the images are corrupted ``batch_size`` at a time and the predictor is called
    once per batch; only one batch of corrupted images is held at a time. ``progress`` is
    called with ``(images done, images total)`` over all passes, the clean one included.
    See the module docstring for ``at_model_resolution`` and for how ``seed`` fixes every
    corrupted image. Macro-F1 is over all of ``predictor.classes`` (classes absent from
    both labels and predictions count as 0, like :mod:`edgeclf.evaluate.metrics`).
    """
    classes = list(predictor.classes)
    n_classes = len(classes)
    n = len(images)
    if n == 0:
        raise DataError("the robustness suite needs at least one image")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be {n} integer class indices (one per image), got {y.dtype} {y.shape}")
    if n_classes == 0 or y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"labels must lie in 0..{n_classes - 1} (the predictor's classes), got {int(y.min())}..{int(y.max())}")
    corrs = [_resolve(c) for c in (CORRUPTIONS.values() if corruptions is None else corruptions)]
    names = [c.name for c in corrs]
    if len(set(names)) != len(names) or CLEAN in names:
        raise ConfigError(f"corruption names must be unique and not {CLEAN!r}, got {', '.join(names)}")

    resolution: int | None = None
    if at_model_resolution:
        from edgeclf.preprocess import resize_uint8

        resolution = int(predictor.spec.resize_size)
        work = [resize_uint8(_check_image(im, f"image {i}"), predictor.spec) for i, im in enumerate(images)]
    else:
        work = [np.ascontiguousarray(_check_image(im, f"image {i}")) for i, im in enumerate(images)]

    total = n * (1 + sum(len(c.severities) for c in corrs))
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, total)

    clean_pred = np.empty(n, dtype=np.int64)
    for start in range(0, n, batch_size):
        batch = work[start : start + batch_size]
        clean_pred[start : start + len(batch)] = _top1(predictor, batch, n_classes)
        tick(len(batch))
    acc0, f10 = _metrics(y, clean_pred, n_classes)
    clean = RobustnessRow(CLEAN, None, "", acc0, f10, 0.0, 0.0)

    rows: list[RobustnessRow] = []
    for c in corrs:
        for sev in c.severities:
            sev = float(sev)
            label = c.label(sev)
            pred = np.empty(n, dtype=np.int64)
            for start in range(0, n, batch_size):
                batch = []
                for i in range(start, min(n, start + batch_size)):
                    out = c.apply(work[i], sev, corruption_rng(int(seed), c.name, sev, i))
                    batch.append(_check_image(out, f"corruption {c.name!r} at {label} output"))
                pred[start : start + len(batch)] = _top1(predictor, batch, n_classes)
                tick(len(batch))
            acc, f1 = _metrics(y, pred, n_classes)
            rows.append(RobustnessRow(c.name, sev, label, acc, f1, float(np.mean(pred != clean_pred)), f1 - f10))
    return RobustnessResult(
        clean=clean,
        rows=rows,
        classes=classes,
        n_images=n,
        seed=int(seed),
        resolution=resolution,
        corruptions=[c.to_dict() for c in corrs],
    )


# ---------------------------------------------------------------------------
# Comparing and rendering.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonRow:
    """One (corruption, severity) across several predictors; each dict maps model name to
    its value (``None`` where that model's result lacks the row)."""

    corruption: str
    severity: float | None
    severity_label: str
    accuracy: dict[str, float | None]
    macro_f1: dict[str, float | None]
    delta_macro_f1: dict[str, float | None]
    flip_rate: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "corruption": self.corruption,
            "severity": self.severity,
            "severity_label": self.severity_label,
            "accuracy": dict(self.accuracy),
            "macro_f1": dict(self.macro_f1),
            "delta_macro_f1": dict(self.delta_macro_f1),
            "flip_rate": dict(self.flip_rate),
        }


def _key(r: RobustnessRow) -> tuple[str, float | None]:
    return r.corruption, None if r.severity is None else round(r.severity, 9)


def compare_robustness(results: Mapping[str, RobustnessResult]) -> list[ComparisonRow]:
    """Side by side: one row per (corruption, severity) — clean first, then in the order of
    the first result, then rows only later results have — with one value per model.

    Meant for e.g. ``{"eager fp32": a, "onnx int8": b}`` run with the same images and seed
    (then the corrupted inputs are identical, and the difference is the model's alone).
    """
    if not results:
        raise ConfigError("compare_robustness needs at least one result")
    order: dict[tuple[str, float | None], RobustnessRow] = {}
    by_model: dict[str, dict[tuple[str, float | None], RobustnessRow]] = {}
    for name, res in results.items():
        table = {_key(r): r for r in [res.clean, *res.rows]}
        by_model[name] = table
        for k, r in table.items():
            order.setdefault(k, r)
    out = []
    for k, first in order.items():

        def col(attr: str, k: tuple[str, float | None] = k) -> dict[str, float | None]:
            return {m: (getattr(t[k], attr) if k in t else None) for m, t in by_model.items()}

        out.append(
            ComparisonRow(
                first.corruption,
                first.severity,
                first.severity_label,
                col("accuracy"),
                col("macro_f1"),
                col("delta_macro_f1"),
                col("flip_rate"),
            )
        )
    return out


def _f3(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.3f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def robustness_table_rows(result: RobustnessResult | Mapping[str, RobustnessResult]) -> list[dict[str, str]]:
    """Formatted rows for a rich or HTML table; the first row's keys are the column headers.

    One result: columns ``corruption, severity, accuracy, macro-F1, Δ macro-F1, flips``, the
    clean row first. Several (a mapping name -> result, see :func:`compare_robustness`):
    ``corruption, severity`` then ``macro-F1 (name)``, ``Δ (name)``, ``flips (name)`` per
    model.
    """
    if isinstance(result, RobustnessResult):
        return [
            {
                "corruption": r.corruption,
                "severity": r.severity_label or "–",
                "accuracy": _pct(r.accuracy),
                "macro-F1": _f3(r.macro_f1),
                "Δ macro-F1": "–" if r.corruption == CLEAN else _signed(r.delta_macro_f1),
                "flips": "–" if r.corruption == CLEAN else _pct(r.flip_rate),
            }
            for r in [result.clean, *result.rows]
        ]
    rows = []
    for c in compare_robustness(result):
        row = {"corruption": c.corruption, "severity": c.severity_label or "–"}
        clean = c.corruption == CLEAN
        for m in result:
            row[f"macro-F1 ({m})"] = _f3(c.macro_f1[m])
            row[f"Δ ({m})"] = "–" if clean else _signed(c.delta_macro_f1[m])
            row[f"flips ({m})"] = "–" if clean else _pct(c.flip_rate[m])
        rows.append(row)
    return rows


_LINESTYLES = ("-", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_robustness(results: RobustnessResult | Mapping[str, RobustnessResult], path: Path, title: str) -> Path:
    """A PNG of macro-F1 against severity: one small panel per corruption, its severities
    (labelled) on the x axis, plus a last panel with each corruption's mean over severities.

    ``results`` is one result or a mapping model name -> result to overlay (colour, marker
    and line style per model); each model's clean macro-F1 is a horizontal dashed line in
    its colour. All panels share the y axis. Written atomically; returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from edgeclf._io import atomic_open

    single = isinstance(results, RobustnessResult)
    models = {"": results} if single else dict(results)
    if not models:
        raise ConfigError("plot_robustness needs at least one result")
    # Panels in order of first appearance; severities by first appearance within each.
    panels: dict[str, dict[float, str]] = {}
    titles: dict[str, str] = {}
    for res in models.values():
        for meta in res.corruptions:
            titles.setdefault(str(meta.get("name")), str(meta.get("title") or meta.get("name")))
        for r in res.rows:
            panels.setdefault(r.corruption, {}).setdefault(round(float(r.severity or 0.0), 9), r.severity_label)

    values = [v for res in models.values() for v in [res.clean.macro_f1, *(r.macro_f1 for r in res.rows)]]
    lo = max(0.0, math.floor((min(values) - 0.05) * 10) / 10)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style = {
        m: (colours[i % len(colours)], _LINESTYLES[i % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)])
        for i, m in enumerate(models)
    }

    n_panels = len(panels) + 1
    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.7 * ncols, 3.1 * nrows + 1.0), squeeze=False, sharey=True, layout="constrained"
    )
    flat = list(axes.flat)
    for ax, (cname, sevs) in zip(flat, panels.items(), strict=False):
        keys = list(sevs)
        for m, res in models.items():
            colour, ls, marker = style[m]
            by_sev = {round(float(r.severity or 0.0), 9): r.macro_f1 for r in res.rows if r.corruption == cname}
            ys = [by_sev.get(k, np.nan) for k in keys]
            ax.plot(range(len(keys)), ys, color=colour, linestyle=ls, marker=marker, lw=1.8, ms=5)
            ax.axhline(res.clean.macro_f1, color=colour, linestyle="--", lw=1.1, alpha=0.75)
        ax.set_xticks(range(len(keys)), [sevs[k] for k in keys], fontsize=8.5)
        ax.set_xlim(-0.4, len(keys) - 0.6)
        ax.set_title(titles.get(cname, cname), fontsize=10.5)
        ax.grid(True, axis="y", alpha=0.3)

    ax = flat[len(panels)]
    names = list(panels)
    width = 0.8 / len(models)
    for i, (m, res) in enumerate(models.items()):
        colour, _, _ = style[m]
        means = res.mean_macro_f1_by_corruption
        xs = np.arange(len(names)) + (i - (len(models) - 1) / 2) * width
        ax.bar(xs, [means.get(c, np.nan) for c in names], width=width * 0.95, color=colour, alpha=0.8)
        ax.axhline(res.clean.macro_f1, color=colour, linestyle="--", lw=1.1, alpha=0.75)
    ax.set_xticks(range(len(names)), [titles.get(c, c) for c in names], rotation=90, fontsize=8.5)
    ax.set_title("mean over severities", fontsize=10.5)
    ax.grid(True, axis="y", alpha=0.3)
    for extra in flat[len(panels) + 1 :]:
        extra.set_visible(False)
    for r in range(nrows):
        axes[r, 0].set_ylabel("macro-F1")
    axes[0, 0].set_ylim(lo, 1.02)

    handles, labels = [], []
    for m, res in models.items():
        colour, ls, marker = style[m]
        mean = res.mean_corruption_macro_f1
        handles += [
            Line2D([], [], color=colour, linestyle=ls, marker=marker, lw=1.8),
            Line2D([], [], color=colour, linestyle="--", lw=1.1, alpha=0.75),
        ]
        prefix = "" if single else f"{m}: "
        labels += [f"{prefix}corrupted (mean {_f3(mean)})", f"{prefix}clean ({_f3(res.clean.macro_f1)})"]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=9.5, frameon=False)
    first = next(iter(models.values()))
    fig.suptitle(
        f"{title}\n{first.n_images} images, seed {first.seed}"
        + (f", corrupted at shorter side {first.resolution} px" if first.resolution else ""),
        fontsize=12,
    )
    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
