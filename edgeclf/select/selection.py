"""Budgeted backbone selection: the most accurate candidate that fits a device's budgets.

:func:`select_backbone` builds one candidate per (backbone, input resolution, runtime,
precision) that a hardware profile supports, prices each with the cost model
(:mod:`edgeclf.select.costmodel`) or with latencies measured on the target, checks it
against the latency (p95, batch 1), memory and model-file budgets, and picks the most
accurate one that fits.

Accuracy rule (stated, so that a choice can be argued with):

* The base figure is the backbone's ImageNet top-1 from the registry (at the resolution
  it was measured at: the native input size, 288 px for timm's ResNet ``a1_in1k``
  weights, see :data:`TOP1_RESOLUTION`), or a user figure (e.g. from a quick probe on the
  user's data), given per backbone or per ``(backbone, resolution)``.
* Below that resolution, ``penalty = 4.0 * x + 4.5 * x**2`` points with
  ``x = log2(reference / resolution)``; no bonus above it. Fitted to the TF-slim
  MobileNetV2 1.0 table, where each resolution was *trained* at that size (224/192/160/
  128/96 px: 71.8/70.7/68.8/65.3/60.3 %; the rule gives 70.7/68.8/65.6/60.2 below 224),
  which matches what edgeclf does: it fine-tunes at the chosen image size.
* int8 costs :data:`INT8_PENALTY` point (post-training per-channel quantisation of these
  backbones typically loses 0.5-1.5 points); fp16 costs nothing.
* Ties (within 0.01 point) go to the lower p95 latency.

A figure given per ``(backbone, resolution)`` is used as is at that resolution (only the
int8 penalty applies). Measured latencies (``measured=``) replace the estimate of every
candidate they match and are labelled ``"measured"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import Field

from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.models import BackboneInfo, get_backbone, list_backbones
from edgeclf.profiles import PRECISIONS, HardwareProfile, Precision, load_profile
from edgeclf.select.costmodel import CostModel, DeviceFigures, _Frozen
from edgeclf.select.counts import model_counts

__all__ = [
    "INT8_PENALTY",
    "RESOLUTION_LADDER",
    "TOP1_RESOLUTION",
    "Candidate",
    "Measurement",
    "NoCandidateFitsError",
    "SelectionBudgets",
    "SelectionResult",
    "accuracy_penalty",
    "select_backbone",
]

# Resolutions tried below each backbone's native one when trading resolution.
RESOLUTION_LADDER: tuple[int, ...] = (224, 192, 160, 128)
# Resolution each registry top-1 figure was measured at, where it is not the native input
# size: timm evaluated its resnet18/50 a1_in1k weights at their test size, 288 px (see
# the imagenet_top1 sources in edgeclf/models/registry.py).
TOP1_RESOLUTION: dict[str, int] = {"resnet18": 288, "resnet50": 288}
RESOLUTION_PENALTY_LINEAR = 4.0
RESOLUTION_PENALTY_QUADRATIC = 4.5
INT8_PENALTY = 1.0
_TIE = 0.01
ACCURACY_RULE = (
    "ImageNet top-1 (registry) or user figure; minus 4.0*x + 4.5*x^2 points with "
    "x = log2(reference px / px) below the reference resolution; minus 1.0 point at int8; "
    "ties within 0.01 point go to the lower p95 latency"
)

Source = Literal["estimate", "measured"]


class NoCandidateFitsError(EdgeclfError):
    """No candidate fits the budgets; ``closest`` is the one that misses by the least."""

    def __init__(self, message: str, closest: Candidate | None = None) -> None:
        super().__init__(message)
        self.closest = closest


class Measurement(_Frozen):
    """A cost measured on the target (e.g. by ``edgeclf bench``) that replaces an estimate.

    ``runtime`` is a runtime name (``onnxruntime``), a label (``onnxruntime/CUDA``) or
    None for every runtime at that precision.
    """

    backbone: str
    resolution: int = Field(gt=0)
    precision: Precision
    runtime: str | None = None
    latency_ms_p95: float = Field(gt=0)
    memory_mb: float | None = Field(default=None, gt=0)
    file_mb: float | None = Field(default=None, gt=0)

    def matches(self, backbone: str, resolution: int, runtime: str, label: str, precision: str) -> bool:
        return (
            self.backbone == backbone
            and self.resolution == resolution
            and self.precision == precision
            and (self.runtime is None or self.runtime in (runtime, label))
        )


class SelectionBudgets(_Frozen):
    """The budgets candidates were checked against (the profile's unless overridden)."""

    latency_ms_p95: float
    memory_mb: float
    model_file_mb: float
    overridden: list[str] = Field(default_factory=list, description="Budgets not taken from the profile.")


class Candidate(_Frozen):
    """One row of the selection table."""

    backbone: str
    resolution: int
    native_resolution: int
    runtime: str = Field(description="Runtime label, e.g. onnxruntime/CPU, tensorrt/GPU.")
    precision: Precision
    latency_ms_p95: float
    latency_source: Source
    memory_mb: float
    memory_source: Source
    file_mb: float
    file_source: Source
    gflops: float
    accuracy: float | None = Field(description="Expected top-1 (%) after the stated penalties.")
    accuracy_source: str
    accuracy_penalty: float
    fits: bool
    reason: str | None = Field(default=None, description="Why it does not fit; None when it fits.")
    overshoot: float = Field(description="Largest cost / budget ratio (<= 1 when it fits).")
    factors: str = Field(description="Where the latency factors come from: fitted, derived or prior.")

    def describe(self) -> str:
        return f"{self.backbone} at {self.resolution} px, {self.precision} on {self.runtime}"


class SelectionResult(_Frozen):
    """The choice, its one-line justification, and every candidate considered."""

    profile: str
    budgets: SelectionBudgets
    choice: Candidate
    justification: str
    candidates: list[Candidate]
    accuracy_rule: str = ACCURACY_RULE

    def fitting(self) -> list[Candidate]:
        return [c for c in self.candidates if c.fits]

    def table(self, rows: Iterable[Candidate] | None = None) -> str:
        """A fixed-width text table of ``rows`` (default: every candidate)."""
        return format_candidates(self.candidates if rows is None else list(rows))


def format_candidates(rows: Sequence[Candidate]) -> str:
    header = (
        f"{'backbone':26} {'px':>4} {'runtime':22} {'prec':4} {'p95 ms':>8} {'src':4} "
        f"{'mem MB':>7} {'file MB':>7} {'top-1':>6} {'fits':4}  reason"
    )
    lines = [header]
    for c in rows:
        acc = f"{c.accuracy:6.2f}" if c.accuracy is not None else f"{'-':>6}"
        src = "meas" if c.latency_source == "measured" else "est"
        lines.append(
            f"{c.backbone:26} {c.resolution:4d} {c.runtime:22} {c.precision:4} {c.latency_ms_p95:8.2f} {src:4} "
            f"{c.memory_mb:7.0f} {c.file_mb:7.1f} {acc} {'yes' if c.fits else 'no':4}  {c.reason or ''}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- accuracy


def accuracy_penalty(resolution: int, reference: int, precision: str) -> float:
    """Points of top-1 lost at ``resolution`` (vs ``reference``) and ``precision`` (module doc)."""
    penalty = 0.0
    if resolution < reference:
        x = math.log2(reference / resolution)
        penalty += RESOLUTION_PENALTY_LINEAR * x + RESOLUTION_PENALTY_QUADRATIC * x * x
    if precision == "int8":
        penalty += INT8_PENALTY
    return penalty


AccuracyTable = Mapping[str, float] | Mapping[tuple[str, int], float]


def _accuracy(info: BackboneInfo, resolution: int, precision: str, user: AccuracyTable | None) -> tuple[float | None, str, float]:
    """(expected top-1, where the base figure comes from, penalty in points)."""
    if user:
        exact = user.get((info.name, resolution))  # type: ignore[call-overload]
        if exact is None:
            exact = user.get(f"{info.name}@{resolution}")  # type: ignore[call-overload]
        if exact is not None:
            penalty = accuracy_penalty(resolution, resolution, precision)
            return float(exact) - penalty, f"user figure at {resolution} px", penalty
        base = user.get(info.name)  # type: ignore[call-overload]
        if base is not None:
            penalty = accuracy_penalty(resolution, info.input_size, precision)
            return float(base) - penalty, f"user figure at {info.input_size} px", penalty
    if info.imagenet_top1 is None:
        return None, "no accuracy figure", 0.0
    reference = TOP1_RESOLUTION.get(info.name, info.input_size)
    penalty = accuracy_penalty(resolution, reference, precision)
    return info.imagenet_top1 - penalty, f"ImageNet top-1 (registry, at {reference} px)", penalty


def _check_user_accuracy(user: AccuracyTable | None) -> None:
    if not user:
        return
    for key, value in user.items():
        name = key[0] if isinstance(key, tuple) else str(key).split("@", 1)[0]
        get_backbone(name)  # unknown name: ConfigError with the known ones
        if not 0.0 <= float(value) <= 100.0:
            raise ConfigError(f"accuracy for {key!r} must be a percentage in [0, 100], got {value}")


# ---------------------------------------------------------------------------- selection


def _resolutions(info: BackboneInfo, resolutions: Sequence[int] | None, trade: bool, data_size: int | None) -> list[int]:
    if resolutions is not None:
        sizes = sorted({int(r) for r in resolutions}, reverse=True)
        bad = [r for r in sizes if r < 32]
        if bad:
            raise ConfigError(f"input resolutions must be at least 32 px, got {bad}")
        return sizes
    above = [] if data_size is None or data_size // 32 * 32 <= info.input_size else [data_size // 32 * 32]
    if not trade:
        return sorted({info.input_size, *above}, reverse=True)
    return sorted({info.input_size, *above, *(r for r in RESOLUTION_LADDER if r < info.input_size)}, reverse=True)


def _budget(value: float | None, default: float, name: str, overridden: list[str]) -> float:
    if value is None:
        return float(default)
    if not value > 0:
        raise ConfigError(f"the {name} budget must be positive, got {value}")
    overridden.append(name)
    return float(value)


def _misses(latency: float, memory: float, file: float, budgets: SelectionBudgets) -> tuple[float, str | None]:
    checks = (
        ("p95", latency, budgets.latency_ms_p95, "ms"),
        ("memory", memory, budgets.memory_mb, "MB"),
        ("file", file, budgets.model_file_mb, "MB"),
    )
    ratios = [value / budget for _, value, budget, _ in checks]
    reasons = [
        f"{label} {value:.1f} {unit} > {budget:g} {unit} (+{100 * (value / budget - 1):.0f} %)"
        for label, value, budget, unit in checks
        if value > budget
    ]
    return max(ratios), ("; ".join(reasons) or None)


def select_backbone(
    profile: HardwareProfile | str,
    *,
    latency_ms: float | None = None,
    memory_mb: float | None = None,
    file_mb: float | None = None,
    candidates: Sequence[str] | None = None,
    resolutions: Sequence[int] | None = None,
    trade_resolution: bool = True,
    precisions: Sequence[str] | None = None,
    runtimes: Sequence[str] | None = None,
    accuracy: AccuracyTable | None = None,
    measured: Sequence[Measurement] = (),
    cost_model: CostModel | None = None,
    data_size: int | None = None,
) -> SelectionResult:
    """Choose the most accurate (backbone, resolution, runtime, precision) within budget.

    Args:
        profile: A hardware profile or the name/path of one.
        latency_ms: p95 latency budget (batch 1), overriding the profile's.
        memory_mb: Peak memory budget (MiB), overriding the profile's.
        file_mb: Model file budget (MiB), overriding the profile's.
        candidates: Backbone names (default: every registered backbone).
        resolutions: Input sizes to try for every backbone (default: the native size and,
            with ``trade_resolution``, the :data:`RESOLUTION_LADDER` sizes below it).
        trade_resolution: Try sizes below the native one (ignored when ``resolutions`` is given).
        precisions: Keep only these precisions (default: all the profile's runtimes list).
        runtimes: Keep only these runtimes (name such as ``openvino`` or label such as
            ``onnxruntime/CUDA``; default: all of the profile's).
        accuracy: User top-1 figures (percent) by backbone name (at its native size),
            ``"name@px"`` or ``(name, px)`` (at that size); they replace the registry's.
        measured: Costs measured on the target; they replace the estimates they match.
        cost_model: Default: the shipped calibration over the stated priors. Factors the
            profile carries (its ``cost_model`` section) take precedence over either.
        data_size: The images' own size (median short side, px). When it exceeds a
            backbone's native size, that size rounded down to a multiple of 32 is priced too
            (ignored when ``resolutions`` is given): it costs more and is never the choice by
            accuracy, but training may take it when the budget allows it and the data gains
            from it (``edgeclf.train.recipe.resolution_candidates``).

    Returns:
        The choice, a one-line justification, and the table of all candidates.

    Raises:
        NoCandidateFitsError: Nothing fits; the message names the closest candidate and
            by how much it misses (``.closest`` holds it).
        ConfigError: Unknown backbone, runtime or precision; a non-positive budget.
    """
    prof = load_profile(profile) if not isinstance(profile, HardwareProfile) else profile
    overridden: list[str] = []
    budgets = SelectionBudgets(
        latency_ms_p95=_budget(latency_ms, prof.budgets.latency_ms_p95, "latency", overridden),
        memory_mb=_budget(memory_mb, prof.budgets.memory_mb, "memory", overridden),
        model_file_mb=_budget(file_mb, prof.budgets.model_file_mb, "file", overridden),
        overridden=overridden,
    )
    infos = [get_backbone(n) for n in candidates] if candidates is not None else list_backbones()
    if not infos:
        raise ConfigError("no candidate backbones given")
    _check_user_accuracy(accuracy)
    if precisions is not None:
        unknown = sorted(set(precisions) - set(PRECISIONS))
        if unknown:
            raise ConfigError(f"unknown precision(s) {', '.join(unknown)}; use {', '.join(PRECISIONS)}")
    supports = [rt for rt in prof.runtimes if runtimes is None or rt.runtime in runtimes or rt.label in runtimes]
    if not supports:
        known = ", ".join(rt.label for rt in prof.runtimes)
        raise ConfigError(f"profile {prof.name} has none of the runtimes {list(runtimes or [])}; it has {known}")
    pairs = [(rt, p) for rt in supports for p in rt.precisions if precisions is None or p in precisions]
    if not pairs:
        raise ConfigError(f"profile {prof.name}'s runtimes support none of the precisions {list(precisions or [])}")
    for m in measured:
        get_backbone(m.backbone)
    model = (cost_model or CostModel()).for_profile(prof)  # a calibrated profile's own factors first
    device = DeviceFigures.from_profile(prof)

    rows: list[Candidate] = []
    for info in infos:
        for size in _resolutions(info, resolutions, trade_resolution, data_size):
            counts = model_counts(info.name, size)
            for rt, precision in pairs:
                est = model.estimate(counts, device, rt, precision)
                latency, lat_src = est.p95_ms, "estimate"
                memory, mem_src = est.memory_mib, "estimate"
                file, file_src = est.file_mib, "estimate"
                for m in measured:
                    if m.matches(info.name, size, rt.runtime, rt.label, precision):
                        latency, lat_src = m.latency_ms_p95, "measured"
                        if m.memory_mb is not None:
                            memory, mem_src = m.memory_mb, "measured"
                        if m.file_mb is not None:
                            file, file_src = m.file_mb, "measured"
                acc, acc_src, penalty = _accuracy(info, size, precision, accuracy)
                overshoot, reason = _misses(latency, memory, file, budgets)
                rows.append(
                    Candidate(
                        backbone=info.name,
                        resolution=size,
                        native_resolution=info.input_size,
                        runtime=rt.label,
                        precision=precision,
                        latency_ms_p95=round(latency, 3),
                        latency_source=lat_src,  # type: ignore[arg-type]
                        memory_mb=round(memory, 1),
                        memory_source=mem_src,  # type: ignore[arg-type]
                        file_mb=round(file, 2),
                        file_source=file_src,  # type: ignore[arg-type]
                        gflops=round(counts.gflops, 4),
                        accuracy=None if acc is None else round(acc, 2),
                        accuracy_source=acc_src,
                        accuracy_penalty=round(penalty, 2),
                        fits=reason is None,
                        reason=reason,
                        overshoot=round(overshoot, 4),
                        factors=est.latency_factors.source if lat_src == "estimate" else "measured",
                    )
                )

    fitting = [c for c in rows if c.fits]
    if not fitting:
        closest = min(rows, key=lambda c: (c.overshoot, -(c.accuracy or 0.0)))
        raise NoCandidateFitsError(
            f"no candidate fits profile {prof.name}'s budgets (p95 <= {budgets.latency_ms_p95:g} ms, "
            f"memory <= {budgets.memory_mb:g} MB, file <= {budgets.model_file_mb:g} MB) among "
            f"{len(rows)} candidates; the closest is {closest.describe()}: {closest.reason} "
            f"({closest.latency_source} latency). Raise the budget, allow more candidates "
            "(lower resolutions, int8, other backbones), or measure on the target if the "
            "estimates look pessimistic.",
            closest=closest,
        )
    best_acc = max((c.accuracy for c in fitting if c.accuracy is not None), default=None)
    if best_acc is None:
        pool = fitting  # no accuracy anywhere: the fastest
    else:
        pool = [c for c in fitting if c.accuracy is not None and c.accuracy >= best_acc - _TIE]
    choice = min(pool, key=lambda c: (c.latency_ms_p95, c.memory_mb))
    return SelectionResult(
        profile=prof.name,
        budgets=budgets,
        choice=choice,
        justification=_justify(choice, len(fitting), len(rows), budgets),
        candidates=rows,
    )


def _justify(c: Candidate, fitting: int, total: int, budgets: SelectionBudgets) -> str:
    if c.accuracy is None:
        why = "fastest candidate (no accuracy figures to rank by)"
    else:
        penalty = f", after -{c.accuracy_penalty:.1f} pt" if c.accuracy_penalty > 0 else ""
        why = f"highest expected top-1 {c.accuracy:.1f} % ({c.accuracy_source}{penalty})"
    return (
        f"{c.describe()}: {why} of the {fitting}/{total} candidates that fit; "
        f"{c.latency_source} p95 {c.latency_ms_p95:.1f} ms <= {budgets.latency_ms_p95:g} ms, "
        f"memory {c.memory_mb:.0f} MB <= {budgets.memory_mb:g} MB, "
        f"file {c.file_mb:.1f} MB <= {budgets.model_file_mb:g} MB."
    )
