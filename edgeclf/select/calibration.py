"""Calibrate the cost model on this machine, and check it against what was measured.

:func:`calibrate` measures real batch-1 latency, peak resident memory and file size of
every registered backbone on this host, fits the efficiency factors of
:mod:`edgeclf.select.costmodel` to them, and writes ``calibration.json``:

1. **Host figures.** The fp32 peak is not read from the CPU's nominal clock (a VM reports
   its base clock, not what the cores run at): it is the rate ONNX Runtime reaches on a
   large fp32 MatMul (2048^3) at the calibration thread count, divided by
   :data:`GEMM_EFFICIENCY`, the fraction of the theoretical peak such a GEMM reaches.
   The int8 peak is the fp32 peak times the ISA's int8/fp32 ratio (4 with VNNI, 2 with
   AVX2 only), as the profiles derive theirs. Memory bandwidth is measured (large array
   copy, read + write bytes). The factors are therefore fractions of the *host's* peaks,
   and apply to a profile as fractions of the profile's peaks.
2. **Measurements.** Each backbone (ImageNet weights where the weights package is
   installed, random weights otherwise: latency does not depend on the values) is
   exported to ONNX with the shipping exporter at each resolution, quantised to int8
   (the shipping QDQ quantiser, random calibration images) at ``int8_resolutions``, and
   timed in a fresh process per model file (``_measure_worker.py``: warm-up, then five
   blocks of runs; the quietest block counts) with ONNX Runtime's CPU provider and, when
   installed, OpenVINO's CPU plugin, at ``threads`` intra-op threads. The machine may be
   shared: before each timing the calibration waits for other work to leave the CPUs
   idle (:data:`QUIET_MAX_BUSY`, at most :data:`QUIET_TIMEOUT_S`), times every file in
   :data:`PASSES` passes and keeps each file's quietest pass.
3. **Fit.** Per (runtime, precision), the five latency factors minimise the squared
   log ratio of estimate to measured p50 (bounded least squares); each backbone is also
   predicted by factors fitted without it (leave-one-backbone-out) to report an
   out-of-sample error. ``p95_factor`` is the 90th percentile of measured p95/p50.
   Memory (per runtime) and file size (per runtime and precision) are non-negative
   least-squares fits of the linear formulas.

OpenVINO fp16 on a CPU computes in fp32, so its factors are OpenVINO fp32's
(``source: "derived"``). Run it with ``edgeclf profiles calibrate-costmodel``;
:func:`validate_cost_model` gives the estimated-vs-measured table (``validation.json``).
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeclf._io import write_json
from edgeclf._provenance import library_versions, usable_cpus
from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.select.costmodel import (
    ACTIVATION_BYTES,
    CALIBRATION_SCHEMA,
    MIB,
    WEIGHT_BYTES,
    Calibration,
    CalibrationPoint,
    CostModel,
    DeviceFigures,
    FileFactors,
    FitSummary,
    HostInfo,
    LatencyFactors,
    MemoryFactors,
    _Frozen,
    _working_precision,
    load_calibration,
)
from edgeclf.select.counts import ModelCounts, model_counts

__all__ = [
    "GEMM_EFFICIENCY",
    "TARGET_ERROR_PCT",
    "VALIDATION_PATH",
    "ValidationReport",
    "ValidationRow",
    "detect_host",
    "fit_latency_factors",
    "fit_calibration",
    "format_validation",
    "host_cpu_model",
    "match_host_profile",
    "validate_cost_model",
    "write_validation",
]

log = logging.getLogger("edgeclf.select")

VALIDATION_PATH = Path(__file__).with_name("validation.json")
# Fraction of the theoretical fp32 peak that ONNX Runtime's MLAS SGEMM reaches on a
# 2048^3 product (an assumption, typical of tuned AVX2/AVX-512 GEMM kernels).
GEMM_EFFICIENCY = 0.9
# The project's accuracy goal for latency estimates (estimate vs measured, percent).
TARGET_ERROR_PCT = 30.0
# Bounds of the latency fit: an efficiency above these would be a fitting artefact
# (compute cannot beat the peak by much; caches can beat DRAM bandwidth several times).
_MAX_COMPUTE_EFFICIENCY = 1.2
_MAX_MEMORY_EFFICIENCY = 50.0
_P95_QUANTILE = 90.0
_MIN_P95_FACTOR = 1.05


# ------------------------------------------------------------------------------ host


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if ":" in line:
                    key, _, value = line.partition(":")
                    info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def host_cpu_model(info: dict[str, str] | None = None) -> str:
    """This host's CPU model as /proc/cpuinfo names it (else what the platform says)."""
    info = _cpuinfo() if info is None else info
    return info.get("model name") or platform.processor() or platform.machine()


def match_host_profile(arch: str, flags: set[str] | frozenset[str]) -> str | None:
    """The built-in profile of this host's ISA class (x86-64 only), or None."""
    if arch not in ("x86_64", "AMD64"):
        return None
    if "avx512f" in flags and "avx512_vnni" in flags:
        return "x86-64-avx512"
    if "avx2" in flags and "fma" in flags:
        return "x86-64-avx2"
    return None


def _flops_per_cycle(arch: str, flags: set[str], family: str | None, vendor: str | None) -> int:
    if arch in ("x86_64", "AMD64"):
        if "avx512f" in flags:
            # AMD Zen 4 (family 25) runs 512-bit FMAs on 256-bit units.
            return 32 if vendor == "AuthenticAMD" and family == "25" else 64
        if "avx2" in flags and "fma" in flags:
            return 32
        return 16
    return 16  # AArch64: two 128-bit FMA pipes


def _int8_ratio(arch: str, flags: set[str]) -> float:
    if arch in ("x86_64", "AMD64"):
        return 4.0 if ({"avx512_vnni", "avx_vnni"} & flags) else 2.0
    return 4.0 if ("asimddp" in flags or "dotprod" in flags) else 2.0


def _gemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((n, n)).astype(np.float32)
    session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / float(np.median(times)) / 1e9


def _copy_bandwidth_gb_per_s(mib: int = 256, repeats: int = 5) -> float:
    src = np.ones(mib * (1 << 20) // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2.0 * src.nbytes / float(np.median(times)) / 1e9


def detect_host(threads: int | None = None) -> HostInfo:
    """Measure this host's figures (about 5 s): GEMM rate, copy bandwidth; read its ISA."""
    info = _cpuinfo()
    arch = platform.machine()
    flags = set(info.get("flags", info.get("Features", "")).split())
    logical = usable_cpus()
    threads = int(threads or logical)
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    fpc = _flops_per_cycle(arch, flags, info.get("cpu family"), info.get("vendor_id"))
    gemm = _gemm_gflops(threads)
    peak = gemm / GEMM_EFFICIENCY
    ratio = _int8_ratio(arch, flags)
    reported = info.get("cpu MHz")
    relevant = sorted(
        flags
        & {
            "sse4_2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512_vnni",
            "avx_vnni",
            "avx512_bf16",
            "avx512_fp16",
            "amx_int8",
            "amx_bf16",
            "asimd",
            "asimddp",
            "fphp",
        }
    )
    return HostInfo(
        cpu_model=host_cpu_model(info),
        arch=arch,
        isa_features=relevant,
        logical_cpus=logical,
        threads=threads,
        flops_per_cycle_fp32=fpc,
        int8_ops_per_fp32_flop=ratio,
        gemm_gflops=round(gemm, 1),
        gemm_efficiency_assumed=GEMM_EFFICIENCY,
        clock_ghz=round(peak / (threads * fpc), 3),
        reported_clock_ghz=round(float(reported) / 1000.0, 3) if reported else None,
        peak_fp32_gflops=round(peak, 1),
        peak_int8_gops=round(peak * ratio, 1),
        memory_bandwidth_gb_per_s=round(_copy_bandwidth_gb_per_s(), 1),
        matched_profile=match_host_profile(arch, flags),
    )


# ------------------------------------------------------------------------ measuring


#: The libraries a calibration records.
_CALIBRATION_PACKAGES = ("edgeclf", "torch", "timm", "onnx", "onnxruntime", "onnxslim", "openvino")


# --------------------------------------------------------------------------- fitting


def _latency_features(counts: ModelCounts, device: DeviceFigures, precision: str) -> np.ndarray:
    """Terms of the latency formula at efficiency 1 and unit overheads, in ms."""
    peak = device.peak(precision) * 1e9
    working = _working_precision(device.target, precision)
    moved = counts.params * WEIGHT_BYTES[working] + counts.act_elems * ACTIVATION_BYTES[working]
    return np.array(
        [
            1.0,
            float(counts.nodes),
            1e3 * counts.flops_dense / peak,
            1e3 * counts.flops_depthwise / peak,
            1e3 * moved / (device.memory_bandwidth_gb_per_s * 1e9),
        ]
    )


def _solve_latency(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    from scipy.optimize import least_squares, nnls

    lower = np.array([0.0, 0.0, 1 / _MAX_COMPUTE_EFFICIENCY, 1 / _MAX_COMPUTE_EFFICIENCY, 1 / _MAX_MEMORY_EFFICIENCY])
    used = features.any(axis=0)  # a term no point exercises (no depthwise nodes) stays at its bound
    start = np.maximum(nnls(features / measured[:, None], np.ones(len(measured)))[0], lower)
    start = np.where(used, start * 1.0001 + 1e-6, lower)
    upper = np.where(used, np.inf, lower + 1e-9)

    def residual(theta: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(features @ theta, 1e-9)) - np.log(measured)

    result = least_squares(residual, np.clip(start, lower, upper - 1e-12), bounds=(lower, upper), method="trf")
    return np.asarray(result.x)


def _errors_pct(estimated: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return 100.0 * (estimated / measured - 1.0)


def fit_latency_factors(
    points: Sequence[CalibrationPoint],
    host: HostInfo,
    counts: Callable[[str, int], ModelCounts] = model_counts,
) -> LatencyFactors:
    """Fit one (runtime, backend, precision)'s latency factors to its points (see module doc)."""
    keys = {(p.runtime, p.backend, p.precision) for p in points}
    if len(keys) != 1:
        raise EdgeclfError(f"fit one runtime and precision at a time, got {sorted(keys)}")
    if len(points) < 5:
        raise EdgeclfError(f"the latency fit needs at least 5 measurements, got {len(points)}")
    runtime, backend, precision = keys.pop()
    device = host.figures()
    features = np.stack([_latency_features(counts(p.backbone, p.resolution), device, precision) for p in points])
    measured = np.array([p.p50_ms for p in points])
    theta = _solve_latency(features, measured)
    errors = _errors_pct(features @ theta, measured)
    loo = _leave_one_backbone_out(points, features, measured)
    ratios = np.array([p.p95_ms / p.p50_ms for p in points])
    return LatencyFactors(
        target="cpu",
        runtime=runtime,  # type: ignore[arg-type]
        backend=backend,
        precision=precision,  # type: ignore[arg-type]
        call_overhead_ms=round(float(theta[0]), 5),
        node_overhead_ms=round(float(theta[1]), 6),
        compute_efficiency=round(float(1 / theta[2]), 4),
        depthwise_efficiency=round(float(1 / theta[3]), 4),
        memory_efficiency=round(float(1 / theta[4]), 4),
        overhead_clock_ghz=host.clock_ghz,
        p95_factor=round(max(_MIN_P95_FACTOR, float(np.percentile(ratios, _P95_QUANTILE))), 3),
        source="fitted",
        note=(
            f"fitted on {len(points)} measurements on {host.cpu_model} ({host.threads} threads); "
            "efficiencies are fractions of the host's peaks (see calibration.host)"
        ),
        fit=FitSummary(
            points=len(points),
            rms_log_error=round(float(np.sqrt(np.mean(np.log(features @ theta / measured) ** 2))), 4),
            max_abs_error_pct=round(float(np.max(np.abs(errors))), 2),
            mean_abs_error_pct=round(float(np.mean(np.abs(errors))), 2),
            loo_max_abs_error_pct=None if loo is None else round(float(np.max(np.abs(loo))), 2),
            loo_mean_abs_error_pct=None if loo is None else round(float(np.mean(np.abs(loo))), 2),
        ),
    )


def _loo_estimates(points: Sequence[CalibrationPoint], features: np.ndarray, measured: np.ndarray) -> np.ndarray | None:
    backbones = sorted({p.backbone for p in points})
    if len(backbones) < 3:
        return None
    out = np.empty(len(points))
    for held in backbones:
        mask = np.array([p.backbone == held for p in points])
        theta = _solve_latency(features[~mask], measured[~mask])
        out[mask] = features[mask] @ theta
    return out


def _leave_one_backbone_out(points: Sequence[CalibrationPoint], features: np.ndarray, measured: np.ndarray) -> np.ndarray | None:
    estimates = _loo_estimates(points, features, measured)
    return None if estimates is None else _errors_pct(estimates, measured)


def _fit_memory(points: Sequence[CalibrationPoint], counts: Callable[[str, int], ModelCounts]) -> MemoryFactors:
    from scipy.optimize import nnls

    runtime, backend = points[0].runtime, points[0].backend
    rows, measured = [], []
    for p in points:
        c = counts(p.backbone, p.resolution)
        working = _working_precision("cpu", p.precision)
        rows.append([1.0, c.params * WEIGHT_BYTES[working] / MIB, c.peak_activation_elems * ACTIVATION_BYTES[working] / MIB])
        measured.append(p.peak_rss_mib)
    a, y = np.array(rows), np.array(measured)
    theta = nnls(a / y[:, None], np.ones(len(y)))[0]  # relative error
    errors = _errors_pct(a @ theta, y)
    return MemoryFactors(
        target="cpu",
        runtime=runtime,
        backend=backend,
        base_mib=round(float(theta[0]), 2),
        weight_copies=round(float(theta[1]), 4),
        activation_factor=round(float(theta[2]), 4),
        source="fitted",
        note=(
            f"peak resident memory of a Python process (numpy + {runtime}) timing the model, "
            f"{len(points)} measurements; a C/C++ host process has a smaller base"
        ),
        max_abs_error_pct=round(float(np.max(np.abs(errors))), 2),
    )


def _fit_file(points: Sequence[CalibrationPoint], counts: Callable[[str, int], ModelCounts]) -> FileFactors:
    from scipy.optimize import nnls

    seen: dict[tuple[str, int], CalibrationPoint] = {}
    for p in points:
        seen.setdefault((p.backbone, p.resolution), p)
    a = np.array([[counts(b, r).params / MIB, 1.0] for b, r in seen])
    y = np.array([p.file_mib for p in seen.values()])
    theta = nnls(a, y)[0]
    errors = _errors_pct(a @ theta, y)
    return FileFactors(
        runtime=points[0].runtime,
        precision=points[0].precision,
        bytes_per_param=round(float(theta[0]), 4),
        overhead_mib=round(float(theta[1]), 4),
        source="fitted",
        note=f"ONNX files written by edgeclf's exporter, {len(seen)} models; max error {np.max(np.abs(errors)):.1f} %",
    )


def _derived_openvino_fp16(fp32: LatencyFactors) -> LatencyFactors:
    return fp32.model_copy(
        update={
            "precision": "fp16",
            "source": "derived",
            "note": "OpenVINO fp32 factors: on a CPU without AVX512_FP16 an fp16 model computes in fp32",
            "fit": None,
        }
    )


# ------------------------------------------------------------------------ calibrate


def fit_calibration(
    points: Sequence[CalibrationPoint],
    host: HostInfo,
    counts: Callable[[str, int], ModelCounts] = model_counts,
    versions: dict[str, str] | None = None,
) -> Calibration:
    """Fit every factor set the points allow; return the calibration (nothing written)."""
    groups: dict[tuple[str, str, str], list[CalibrationPoint]] = {}
    for p in points:
        groups.setdefault((p.runtime, p.backend, p.precision), []).append(p)
    latency = [fit_latency_factors(group, host, counts) for group in groups.values() if len(group) >= 5]
    for factors in list(latency):
        if factors.runtime == "openvino" and factors.precision == "fp32":
            latency.append(_derived_openvino_fp16(factors))
    by_runtime: dict[tuple[str, str], list[CalibrationPoint]] = {}
    for p in points:
        by_runtime.setdefault((p.runtime, p.backend), []).append(p)
    memory = [_fit_memory(group, counts) for group in by_runtime.values() if len(group) >= 3]
    files = [
        _fit_file(group, counts) for (runtime, _, _), group in groups.items() if runtime == "onnxruntime" and len(group) >= 2
    ]
    worst = max((f.fit.max_abs_error_pct for f in latency if f.fit is not None), default=0.0)
    stated = float(max(5, 5 * math.ceil(worst / 5)))
    return Calibration(
        schema_version=CALIBRATION_SCHEMA,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        host=host,
        versions=versions if versions is not None else library_versions(_CALIBRATION_PACKAGES),
        stated_error_pct=stated,
        points=list(points),
        latency=latency,
        memory=memory,
        files=files,
        notes=[
            "Latency factors are fractions of the host's peaks (host.peak_fp32_gflops, "
            "host.peak_int8_gops, host.memory_bandwidth_gb_per_s); applied to a profile they "
            "scale with its figures. Overheads scale with host.clock_ghz / the target's clock.",
            f"stated_error_pct: the largest in-sample latency error rounded up to 5 %; the "
            f"project's target is {TARGET_ERROR_PCT:g} %. See each fit's leave-one-backbone-out error.",
            f"Measured with {host.threads} intra-op threads; a profile with more threads is "
            "assumed to reach the same fraction of its (larger) peak.",
        ],
    )


# ------------------------------------------------------------------------ validation


class ValidationRow(_Frozen):
    """Estimated vs measured for one calibration measurement."""

    backbone: str
    resolution: int
    runtime: str
    precision: str
    weights: Literal["random", "pretrained"]
    estimated_p50_ms: float
    measured_p50_ms: float
    error_pct: float = Field(description="(estimated / measured - 1) x 100, p50.")
    loo_estimated_p50_ms: float | None = Field(default=None, description="Estimate by factors fitted without this backbone.")
    loo_error_pct: float | None = None
    estimated_p95_ms: float
    measured_p95_ms: float
    p95_error_pct: float
    estimated_memory_mib: float
    measured_memory_mib: float
    memory_error_pct: float
    estimated_file_mib: float
    measured_file_mib: float
    file_error_pct: float


class ValidationReport(_Frozen):
    """The cost model against every measurement of a calibration, on the calibration host."""

    created: str
    host: str
    target_error_pct: float
    stated_error_pct: float
    rows: list[ValidationRow]
    max_abs_error_pct: float
    mean_abs_error_pct: float
    loo_max_abs_error_pct: float | None
    loo_mean_abs_error_pct: float | None
    within_target: int = Field(description="Rows whose p50 error is within target_error_pct.")
    loo_within_target: int | None = None
    max_abs_memory_error_pct: float
    max_abs_file_error_pct: float


def validate_cost_model(calibration: Calibration | None = None, leave_one_out: bool = True) -> ValidationReport:
    """Estimated vs measured latency (p50, p95), memory and file size on the calibration host.

    Estimates use the calibration's own factors on the host's figures; with
    ``leave_one_out``, each row also has the estimate from factors fitted without its
    backbone, an out-of-sample check.
    """
    calibration = calibration or load_calibration()
    if calibration is None:
        raise EdgeclfError("no cost-model calibration found; run `edgeclf profiles calibrate-costmodel` first")
    model = CostModel(calibration)
    device = calibration.host.figures()
    loo: dict[int, float] = {}
    if leave_one_out:
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, p in enumerate(calibration.points):
            groups.setdefault((p.runtime, p.backend, p.precision), []).append(i)
        for indices in groups.values():
            pts = [calibration.points[i] for i in indices]
            if len(pts) < 5:
                continue
            features = np.stack([_latency_features(model_counts(p.backbone, p.resolution), device, p.precision) for p in pts])
            estimates = _loo_estimates(pts, features, np.array([p.p50_ms for p in pts]))
            if estimates is not None:
                loo.update({i: float(e) for i, e in zip(indices, estimates, strict=False)})
    rows = []
    for i, p in enumerate(calibration.points):
        counts = model_counts(p.backbone, p.resolution)
        est = model.estimate(counts, device, (p.runtime, p.backend), p.precision)
        loo_est = loo.get(i)
        rows.append(
            ValidationRow(
                backbone=p.backbone,
                resolution=p.resolution,
                runtime=p.runtime,
                precision=p.precision,
                weights=p.weights,
                estimated_p50_ms=round(est.p50_ms, 3),
                measured_p50_ms=p.p50_ms,
                error_pct=round(100 * (est.p50_ms / p.p50_ms - 1), 1),
                loo_estimated_p50_ms=None if loo_est is None else round(loo_est, 3),
                loo_error_pct=None if loo_est is None else round(100 * (loo_est / p.p50_ms - 1), 1),
                estimated_p95_ms=round(est.p95_ms, 3),
                measured_p95_ms=p.p95_ms,
                p95_error_pct=round(100 * (est.p95_ms / p.p95_ms - 1), 1),
                estimated_memory_mib=round(est.memory_mib, 1),
                measured_memory_mib=p.peak_rss_mib,
                memory_error_pct=round(100 * (est.memory_mib / p.peak_rss_mib - 1), 1),
                estimated_file_mib=round(est.file_mib, 2),
                measured_file_mib=p.file_mib,
                file_error_pct=round(100 * (est.file_mib / p.file_mib - 1), 1),
            )
        )
    errors = np.abs([r.error_pct for r in rows])
    loo_errors = np.abs([r.loo_error_pct for r in rows if r.loo_error_pct is not None])
    target = TARGET_ERROR_PCT
    # File sizes are validated for ONNX Runtime's files only: OpenVINO read the same files.
    file_errors = [abs(r.file_error_pct) for r in rows if r.runtime == "onnxruntime"]
    return ValidationReport(
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        host=f"{calibration.host.cpu_model}, {calibration.host.threads} threads (calibrated {calibration.created})",
        target_error_pct=target,
        stated_error_pct=calibration.stated_error_pct,
        rows=rows,
        max_abs_error_pct=round(float(errors.max()), 1) if len(errors) else 0.0,
        mean_abs_error_pct=round(float(errors.mean()), 1) if len(errors) else 0.0,
        loo_max_abs_error_pct=round(float(loo_errors.max()), 1) if len(loo_errors) else None,
        loo_mean_abs_error_pct=round(float(loo_errors.mean()), 1) if len(loo_errors) else None,
        within_target=int(np.sum(errors <= target)),
        loo_within_target=int(np.sum(loo_errors <= target)) if len(loo_errors) else None,
        max_abs_memory_error_pct=round(max(abs(r.memory_error_pct) for r in rows), 1) if rows else 0.0,
        max_abs_file_error_pct=round(max(file_errors), 1) if file_errors else 0.0,
    )


def write_validation(path: Path | str = VALIDATION_PATH, calibration: Calibration | None = None) -> ValidationReport:
    """Compute :func:`validate_cost_model` and write it as JSON to ``path``."""
    report = validate_cost_model(calibration)
    write_json(Path(path), report.model_dump(mode="json"))
    return report


def format_validation(report: ValidationReport) -> str:
    """The validation table as fixed-width text."""
    lines = [
        f"{'backbone':26} {'px':>4} {'runtime':11} {'prec':4} {'est p50':>8} {'meas p50':>8} {'err%':>6} "
        f"{'LOO err%':>8} {'est p95':>8} {'meas p95':>8} {'est MiB':>7} {'RSS MiB':>7}"
    ]
    for r in report.rows:
        loo = f"{r.loo_error_pct:+8.1f}" if r.loo_error_pct is not None else f"{'-':>8}"
        lines.append(
            f"{r.backbone:26} {r.resolution:4d} {r.runtime:11} {r.precision:4} {r.estimated_p50_ms:8.2f} "
            f"{r.measured_p50_ms:8.2f} {r.error_pct:+6.1f} {loo} {r.estimated_p95_ms:8.2f} "
            f"{r.measured_p95_ms:8.2f} {r.estimated_memory_mib:7.0f} {r.measured_memory_mib:7.0f}"
        )
    lines.append(
        f"p50 error: max {report.max_abs_error_pct:.1f} %, mean {report.mean_abs_error_pct:.1f} %, "
        f"{report.within_target}/{len(report.rows)} within {report.target_error_pct:g} %; "
        f"leave-one-backbone-out: max {report.loo_max_abs_error_pct} %, mean {report.loo_mean_abs_error_pct} %"
    )
    return "\n".join(lines)
