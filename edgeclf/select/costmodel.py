"""Latency, memory and file-size estimates of a backbone on a device, from counts and figures.

Latency (batch 1) is a sum of roofline-like terms, with efficiency factors per
``(target, runtime, backend, precision)``::

    p50_ms = call_overhead + nodes * node_overhead * clock_scale
           + flops_dense     / (peak[precision] * compute_efficiency)
           + flops_depthwise / (peak[precision] * depthwise_efficiency)
           + (params * weight_bytes[precision] + act_elems * act_bytes[precision])
             / (memory_bandwidth * memory_efficiency)
    p95_ms = p50_ms * p95_factor

``peak`` and ``memory_bandwidth`` are the device's figures (a hardware profile's
``compute`` section, or the calibration host's); ``flops_*``, ``params``, ``act_elems``
and ``nodes`` come from :mod:`edgeclf.select.counts`. The terms are added, not
maximised: at batch 1 a runtime overlaps little of one node's data movement with the
arithmetic of another, and the efficiency factors, fitted on measured latencies, absorb
what overlap there is. Depthwise convolutions get their own efficiency because their low
arithmetic intensity keeps every runtime far below peak on them. ``clock_scale`` is,
for CPU targets, the calibration host's clock over the target's (per-node dispatch is
scalar code); 1 for GPU targets, whose overheads are given for the device class.

Memory (peak resident MiB of the inference process)::

    memory_mib = base_mib + weight_copies * weights_mib[precision]
               + activation_factor * peak_activation_mib[precision]

On a CPU an fp16 model is computed in fp32 (the profiles' assumption for CPUs without
AVX512_FP16): its weights and activations are priced as fp32 bytes; only its file is
smaller. int8 prices int8 weights and uint8 activations (QDQ models).

File size (MiB)::

    file_mib = params * bytes_per_param[runtime, precision] / 2**20 + overhead_mib

Factors come from ``calibration.json`` (fitted on measurements, see
:mod:`edgeclf.select.calibration`) and, for combinations nobody measured, from the
stated priors in this module (``source: "prior"``); every estimate says which. A profile
written by ``edgeclf profiles calibrate`` carries its device's own factors (its
``cost_model`` section, :meth:`CostModel.for_profile`), which replace both for it.
The factor records themselves are defined in :mod:`edgeclf.profiles` for that reason.
Sizes are MiB (2**20 bytes), like the profiles' ``memory_mb`` (``ram_gb * 1024``).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeclf.errors import EdgeclfError
from edgeclf.profiles import (
    FileFactors,
    FitSummary,
    HardwareProfile,
    LatencyFactors,
    MemoryFactors,
    Precision,
    RuntimeName,
    RuntimeSupport,
)
from edgeclf.select.counts import ModelCounts

__all__ = [
    "CALIBRATION_PATH",
    "CLASS_CALIBRATIONS",
    "Calibration",
    "CalibrationPoint",
    "CostEstimate",
    "CostModel",
    "DeviceFigures",
    "FileFactors",
    "FitSummary",
    "HostInfo",
    "LatencyFactors",
    "MemoryFactors",
    "estimate_file_mib",
    "estimate_latency_ms",
    "estimate_memory_mib",
    "calibration_for_profile",
    "load_calibration",
]

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")
#: Calibrations of other CPU classes, one file per built-in profile of that class
#: (``x86-64-avx2.json``: fitted on a host that matches ``x86-64-avx2``). The efficiency an
#: int8 model reaches depends on the ISA (VNNI or not) beyond what the int8/fp32 peak ratio
#: says, so a profile of a class with its own calibration is estimated with that one's factors.
CLASS_CALIBRATIONS = Path(__file__).with_name("calibrations")
CALIBRATION_SCHEMA = "1.0"
MIB = float(1 << 20)
Target = Literal["cpu", "gpu"]

# Bytes per weight and per activation element as stored and moved at each precision.
# int8: QDQ models keep int8 weights and uint8 activations between quantised nodes.
WEIGHT_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
ACTIVATION_BYTES: dict[str, float] = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}


def _working_precision(target: str, precision: str) -> str:
    """The precision weights and activations have while the model runs.

    On a CPU an fp16 model is computed in fp32 (the profiles' assumption for CPUs without
    AVX512_FP16: the runtime widens the weights at load), so it moves and keeps fp32 bytes;
    only its file is smaller.
    """
    return "fp32" if target == "cpu" and precision == "fp16" else precision


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceFigures(_Frozen):
    """The figures of a device the cost model uses (a profile's, or the calibration host's)."""

    name: str
    target: Target
    peak_gops: dict[Precision, float] = Field(description="10^9 operations per second by precision.")
    memory_bandwidth_gb_per_s: float = Field(gt=0)
    cpu_clock_ghz: float = Field(gt=0)
    threads: int | None = None

    @classmethod
    def from_profile(cls, profile: HardwareProfile) -> DeviceFigures:
        peaks: dict[Precision, float] = {}
        for precision in ("fp32", "fp16", "int8"):
            value = profile.compute.peak_gops(precision)  # type: ignore[arg-type]
            if value is not None:
                peaks[precision] = float(value)  # type: ignore[index]
        return cls(
            name=profile.name,
            target=profile.compute.target,
            peak_gops=peaks,
            memory_bandwidth_gb_per_s=profile.compute.memory_bandwidth_gb_per_s,
            cpu_clock_ghz=profile.cpu.max_freq_ghz,
            threads=profile.compute.threads,
        )

    def peak(self, precision: str) -> float:
        try:
            return self.peak_gops[precision]  # type: ignore[index]
        except KeyError:
            raise EdgeclfError(
                f"{self.name} has no {precision} peak figure; add compute.peak_"
                f"{'int8_gops' if precision == 'int8' else precision + '_gflops'} to its profile"
            ) from None


class HostInfo(_Frozen):
    """The machine a calibration ran on, and the figures its factors are relative to."""

    cpu_model: str
    arch: str
    isa_features: list[str]
    logical_cpus: int
    threads: int = Field(description="Intra-op threads used for every measurement.")
    flops_per_cycle_fp32: int = Field(description="Per core, from the ISA (2 FMA units x lanes x 2).")
    int8_ops_per_fp32_flop: float = Field(description="int8 peak / fp32 peak, from the ISA (as in the profiles).")
    gemm_gflops: float = Field(description="Measured: ONNX Runtime fp32 MatMul 2048^3 at `threads` threads.")
    gemm_efficiency_assumed: float = Field(description="Fraction of theoretical peak a large GEMM reaches.")
    clock_ghz: float = Field(description="gemm_gflops / gemm_efficiency / (threads x flops_per_cycle).")
    reported_clock_ghz: float | None = Field(default=None, description="What /proc/cpuinfo says (may be nominal).")
    peak_fp32_gflops: float
    peak_int8_gops: float
    memory_bandwidth_gb_per_s: float = Field(description="Measured: large array copy, read + write bytes.")
    matched_profile: str | None = Field(default=None, description="Built-in profile of the same ISA class.")

    def figures(self) -> DeviceFigures:
        return DeviceFigures(
            name=f"calibration host ({self.cpu_model}, {self.threads} threads)",
            target="cpu",
            peak_gops={"fp32": self.peak_fp32_gflops, "fp16": self.peak_fp32_gflops, "int8": self.peak_int8_gops},
            memory_bandwidth_gb_per_s=self.memory_bandwidth_gb_per_s,
            cpu_clock_ghz=self.clock_ghz,
            threads=self.threads,
        )


class CalibrationPoint(_Frozen):
    """One measured model on the calibration host."""

    backbone: str
    resolution: int
    runtime: RuntimeName
    backend: str
    precision: Precision
    weights: Literal["random", "pretrained"]
    threads: int
    runs: int
    p50_ms: float = Field(description="Median of the quietest block of the quietest pass.")
    p95_ms: float = Field(description="95th percentile of that block.")
    min_ms: float
    pass_p50_ms: list[float] = Field(default_factory=list, description="p50 of each timing pass.")
    file_mib: float
    baseline_rss_mib: float
    peak_rss_mib: float
    optimized_nodes: int | None = None


class Calibration(_Frozen):
    """Measurements on one host and the factors fitted to them (``calibration.json``)."""

    schema_version: str = CALIBRATION_SCHEMA
    created: str = Field(description="UTC date, YYYY-MM-DD.")
    host: HostInfo
    versions: dict[str, str]
    stated_error_pct: float = Field(
        description="Largest latency error (estimate vs measured, percent) this calibration claims "
        "on its own measurements; tests hold it to that."
    )
    points: list[CalibrationPoint]
    latency: list[LatencyFactors]
    memory: list[MemoryFactors]
    files: list[FileFactors]
    notes: list[str] = Field(default_factory=list)


def load_calibration(path: Path | str = CALIBRATION_PATH) -> Calibration | None:
    """The stored calibration, or None when the file is absent (read once per version of the file)."""
    try:
        stamp = Path(path).stat().st_mtime_ns
    except OSError:
        stamp = None
    return _load_calibration(str(path), stamp)


def calibration_for_profile(name: str | None) -> Calibration | None:
    """The stored calibration fitted on a host of profile ``name``'s class, else the default one.

    The default calibration (``calibration.json``) when its host matches ``name`` (or no name is
    given); otherwise ``calibrations/<name>.json`` when it ships; otherwise the default (or None
    without one).
    """
    default = load_calibration()
    if name is None or (default is not None and default.host.matched_profile == name):
        return default
    own = load_calibration(CLASS_CALIBRATIONS / f"{name}.json") if name.replace("-", "").isalnum() else None
    return own if own is not None else default


@functools.cache
def _load_calibration(path: str, stamp: int | None = None) -> Calibration | None:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        major = str(data.get("schema_version", "")).split(".")[0]
        if major != CALIBRATION_SCHEMA.split(".")[0]:
            raise EdgeclfError(
                f"{file} has schema_version {data.get('schema_version')!r}; this edgeclf reads "
                f"{CALIBRATION_SCHEMA}. Re-run the calibration (edgeclf profiles calibrate-costmodel)"
            )
        return Calibration.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise EdgeclfError(
            f"cannot read the cost-model calibration {file}: {exc}. Re-run the calibration (edgeclf profiles calibrate-costmodel)"
        ) from None


# --------------------------------------------------------------------------- priors
#
# Used where no calibration measured a combination. CPU priors are rough defaults that a
# calibration on any CPU replaces; GPU priors are assumptions for Jetson-class GPUs at
# batch 1, set to be conservative against public single-stream results (sub-millisecond
# ResNet-50 int8 with TensorRT on AGX Orin: these factors give about 1.2 ms). Node
# overheads: TensorRT runs fused kernels back to back (a few microseconds each); ONNX
# Runtime's CUDA provider launches every node from the CPU.

_CPU_PRIOR_NOTE = "prior: rough CPU default, replaced by any calibration that measures this combination"
_GPU_PRIOR_NOTE = "prior: assumed for Jetson-class GPUs at batch 1, not measured"


def _lat(
    target: Target,
    runtime: str,
    backend: str,
    precision: str,
    ce: float,
    de: float,
    me: float,
    call: float,
    node: float,
    clock: float | None,
    p95: float,
    note: str,
) -> LatencyFactors:
    return LatencyFactors(
        target=target,
        runtime=runtime,
        backend=backend,
        precision=precision,  # type: ignore[arg-type]
        compute_efficiency=ce,
        depthwise_efficiency=de,
        memory_efficiency=me,
        call_overhead_ms=call,
        node_overhead_ms=node,
        overhead_clock_ghz=clock,
        p95_factor=p95,
        source="prior",
        note=note,
    )


PRIOR_LATENCY: tuple[LatencyFactors, ...] = (
    _lat("cpu", "onnxruntime", "CPUExecutionProvider", "fp32", 0.5, 0.1, 1.0, 0.05, 0.01, 3.0, 1.15, _CPU_PRIOR_NOTE),
    _lat("cpu", "onnxruntime", "CPUExecutionProvider", "int8", 0.2, 0.03, 1.0, 0.05, 0.015, 3.0, 1.15, _CPU_PRIOR_NOTE),
    _lat("cpu", "openvino", "CPU", "fp32", 0.5, 0.1, 1.0, 0.1, 0.01, 3.0, 1.15, _CPU_PRIOR_NOTE),
    _lat("cpu", "openvino", "CPU", "fp16", 0.5, 0.1, 1.0, 0.1, 0.01, 3.0, 1.15, _CPU_PRIOR_NOTE),
    _lat("cpu", "openvino", "CPU", "int8", 0.2, 0.03, 1.0, 0.1, 0.015, 3.0, 1.15, _CPU_PRIOR_NOTE),
    _lat("cpu", "tflite", "CPU", "fp32", 0.4, 0.1, 1.0, 0.05, 0.01, 3.0, 1.15, _CPU_PRIOR_NOTE),
    _lat("cpu", "tflite", "CPU", "int8", 0.15, 0.03, 1.0, 0.05, 0.015, 3.0, 1.15, _CPU_PRIOR_NOTE),
    # TensorRT (and ONNX Runtime's TensorRT provider): fused kernels, Tensor Cores for fp16/int8.
    _lat("gpu", "tensorrt", "GPU", "fp32", 0.5, 0.05, 0.7, 0.1, 0.004, None, 1.2, _GPU_PRIOR_NOTE),
    _lat("gpu", "tensorrt", "GPU", "fp16", 0.2, 0.012, 0.7, 0.1, 0.004, None, 1.2, _GPU_PRIOR_NOTE),
    _lat("gpu", "tensorrt", "GPU", "int8", 0.25, 0.006, 0.7, 0.1, 0.004, None, 1.2, _GPU_PRIOR_NOTE),
    _lat("gpu", "onnxruntime", "TensorrtExecutionProvider", "fp32", 0.5, 0.05, 0.7, 0.2, 0.004, None, 1.2, _GPU_PRIOR_NOTE),
    _lat("gpu", "onnxruntime", "TensorrtExecutionProvider", "fp16", 0.2, 0.012, 0.7, 0.2, 0.004, None, 1.2, _GPU_PRIOR_NOTE),
    _lat("gpu", "onnxruntime", "TensorrtExecutionProvider", "int8", 0.25, 0.006, 0.7, 0.2, 0.004, None, 1.2, _GPU_PRIOR_NOTE),
    # ONNX Runtime CUDA provider: one cuDNN/cuBLAS launch per node, little fusion.
    _lat("gpu", "onnxruntime", "CUDAExecutionProvider", "fp32", 0.35, 0.04, 0.6, 0.2, 0.02, None, 1.25, _GPU_PRIOR_NOTE),
    _lat("gpu", "onnxruntime", "CUDAExecutionProvider", "fp16", 0.12, 0.01, 0.6, 0.2, 0.02, None, 1.25, _GPU_PRIOR_NOTE),
    _lat("gpu", "tflite", "GPU", "fp32", 0.25, 0.04, 0.5, 0.3, 0.02, None, 1.3, _GPU_PRIOR_NOTE),
    _lat("gpu", "tflite", "GPU", "fp16", 0.1, 0.01, 0.5, 0.3, 0.02, None, 1.3, _GPU_PRIOR_NOTE),
)


def _mem(target: Target, runtime: str, backend: str, base: float, copies: float, act: float, note: str) -> MemoryFactors:
    return MemoryFactors(
        target=target,
        runtime=runtime,
        backend=backend,  # type: ignore[arg-type]
        base_mib=base,
        weight_copies=copies,
        activation_factor=act,
        source="prior",
        note=note,
    )


_GPU_MEM_NOTE = (
    "prior: CUDA context and the runtime's CUDA libraries (cuDNN/cuBLAS/TensorRT) dominate; "
    "the engine or model file is read into host memory and the weights kept on the (shared) device memory"
)
PRIOR_MEMORY: tuple[MemoryFactors, ...] = (
    _mem("cpu", "onnxruntime", "CPUExecutionProvider", 60.0, 2.0, 2.0, _CPU_PRIOR_NOTE),
    _mem("cpu", "openvino", "CPU", 120.0, 2.0, 2.0, _CPU_PRIOR_NOTE),
    _mem("cpu", "tflite", "CPU", 30.0, 1.0, 1.5, _CPU_PRIOR_NOTE),
    _mem("gpu", "tensorrt", "GPU", 700.0, 2.0, 2.0, _GPU_MEM_NOTE),
    _mem("gpu", "onnxruntime", "TensorrtExecutionProvider", 1000.0, 3.0, 2.0, _GPU_MEM_NOTE),
    _mem("gpu", "onnxruntime", "CUDAExecutionProvider", 900.0, 2.0, 2.0, _GPU_MEM_NOTE),
    _mem("gpu", "tflite", "GPU", 300.0, 2.0, 2.0, _GPU_MEM_NOTE),
)


def _file(runtime: str, precision: str, bpp: float, overhead: float, note: str) -> FileFactors:
    return FileFactors(
        runtime=runtime,
        precision=precision,
        bytes_per_param=bpp,  # type: ignore[arg-type]
        overhead_mib=overhead,
        source="prior",
        note=note,
    )


PRIOR_FILES: tuple[FileFactors, ...] = (
    _file("onnxruntime", "fp32", 4.0, 0.1, "prior: fp32 initialisers + graph"),
    _file("onnxruntime", "fp16", 2.0, 0.1, "prior: fp16 initialisers + graph"),
    _file("onnxruntime", "int8", 1.05, 0.2, "prior: int8 weights, per-channel scales, int32 biases"),
    _file("openvino", "fp32", 4.0, 0.3, "prior: IR .bin (fp32) + .xml"),
    _file("openvino", "fp16", 2.0, 0.3, "prior: IR .bin with fp16-compressed weights + .xml"),
    _file("openvino", "int8", 1.05, 0.4, "prior: IR with int8 weights + .xml"),
    _file("tensorrt", "fp32", 4.2, 2.0, "prior: engine = weights + tactic metadata"),
    _file("tensorrt", "fp16", 2.2, 2.0, "prior: engine = weights + tactic metadata"),
    _file("tensorrt", "int8", 1.2, 2.0, "prior: engine = int8 weights + scales + tactic metadata"),
    _file("tflite", "fp32", 4.0, 0.1, "prior: flatbuffer"),
    _file("tflite", "fp16", 2.0, 0.1, "prior: flatbuffer"),
    _file("tflite", "int8", 1.05, 0.1, "prior: flatbuffer"),
)


# ------------------------------------------------------------------------- formulas


def estimate_latency_ms(counts: ModelCounts, device: DeviceFigures, factors: LatencyFactors) -> tuple[float, dict[str, float]]:
    """Estimated p50 latency (ms) of one batch-1 call, and its terms (see the module doc)."""
    precision = factors.precision
    peak = device.peak(precision) * 1e9  # operations per second
    bandwidth = device.memory_bandwidth_gb_per_s * 1e9
    clock_scale = 1.0
    if device.target == "cpu" and factors.overhead_clock_ghz is not None:
        clock_scale = factors.overhead_clock_ghz / device.cpu_clock_ghz
    working = _working_precision(device.target, precision)
    bytes_moved = counts.params * WEIGHT_BYTES[working] + counts.act_elems * ACTIVATION_BYTES[working]
    terms = {
        "overhead_ms": factors.call_overhead_ms + counts.nodes * factors.node_overhead_ms * clock_scale,
        "dense_ms": 1e3 * counts.flops_dense / (peak * factors.compute_efficiency),
        "depthwise_ms": 1e3 * counts.flops_depthwise / (peak * factors.depthwise_efficiency),
        "memory_ms": 1e3 * bytes_moved / (bandwidth * factors.memory_efficiency),
    }
    return sum(terms.values()), terms


def estimate_memory_mib(counts: ModelCounts, precision: str, factors: MemoryFactors) -> float:
    """Estimated peak resident memory (MiB) of a process running the model."""
    precision = _working_precision(factors.target, precision)
    weights = counts.params * WEIGHT_BYTES[precision] / MIB
    activations = counts.peak_activation_elems * ACTIVATION_BYTES[precision] / MIB
    return factors.base_mib + factors.weight_copies * weights + factors.activation_factor * activations


def estimate_file_mib(counts: ModelCounts, factors: FileFactors) -> float:
    """Estimated size (MiB) of the model file at the factors' precision."""
    return counts.params * factors.bytes_per_param / MIB + factors.overhead_mib


@dataclass(frozen=True)
class CostEstimate:
    """Estimated cost of one backbone at one resolution, runtime and precision on one device."""

    p50_ms: float
    p95_ms: float
    terms_ms: dict[str, float]
    memory_mib: float
    file_mib: float
    latency_factors: LatencyFactors
    memory_factors: MemoryFactors
    file_factors: FileFactors


class CostModel:
    """Priors overlaid with a calibration: factor lookup and estimates.

    Args:
        calibration: A :class:`Calibration`; by default the one shipped in
            ``calibration.json`` (priors only when it is absent). ``False``: priors only.
    """

    def __init__(self, calibration: Calibration | None | Literal[False] = None) -> None:
        #: the default calibration was taken (not one given): a profile of a class with its own may replace it
        self._stored = calibration is None
        if calibration is None:
            calibration = load_calibration()
        self.calibration: Calibration | None = calibration or None
        self._latency = {f.key: f for f in PRIOR_LATENCY}
        self._memory = {f.key: f for f in PRIOR_MEMORY}
        self._files = {f.key: f for f in PRIOR_FILES}
        if self.calibration is not None:
            self._latency.update({f.key: f for f in self.calibration.latency})
            self._memory.update({f.key: f for f in self.calibration.memory})
            self._files.update({f.key: f for f in self.calibration.files})

    def for_profile(self, profile: HardwareProfile) -> CostModel:
        """This model with ``profile``'s own factors (its ``cost_model`` section) over its own.

        A profile without that section gets this model itself, or, when this model took the
        default calibration and a calibration of the profile's class ships
        (:func:`calibration_for_profile`), a model with that one.
        """
        own = profile.cost_model
        if own is None:
            if self._stored:
                cal = calibration_for_profile(profile.name)
                if cal is not None and cal is not self.calibration:
                    return CostModel(cal)
            return self
        model = copy.copy(self)
        model._latency = {**self._latency, **{f.key: f for f in own.latency}}
        model._memory = {**self._memory, **{f.key: f for f in own.memory}}
        model._files = {**self._files, **{f.key: f for f in own.files}}
        return model

    def latency_factors(self, target: str, runtime: str, backend: str, precision: str) -> LatencyFactors:
        key = (target, runtime, backend, precision)
        found = self._latency.get(key)
        if found is None:
            raise EdgeclfError(
                f"the cost model has no latency factors for {runtime}/{backend} {precision} on a "
                f"{target}; calibrate it on such a device or measure the candidates on the target"
            )
        return found

    def memory_factors(self, target: str, runtime: str, backend: str) -> MemoryFactors:
        found = self._memory.get((target, runtime, backend))
        if found is None:
            raise EdgeclfError(f"the cost model has no memory factors for {runtime}/{backend} on a {target}")
        return found

    def file_factors(self, runtime: str, precision: str) -> FileFactors:
        found = self._files.get((runtime, precision))
        if found is None:
            raise EdgeclfError(f"the cost model has no file-size factors for {runtime} {precision}")
        return found

    def estimate(
        self,
        counts: ModelCounts,
        device: DeviceFigures,
        runtime: RuntimeSupport | tuple[str, str],
        precision: str,
    ) -> CostEstimate:
        """Estimate latency, memory and file size on ``device`` with ``runtime`` at ``precision``.

        ``runtime`` is a profile's :class:`RuntimeSupport` or a ``(runtime, backend)`` pair.
        """
        if isinstance(runtime, RuntimeSupport):
            name, backend = runtime.runtime, runtime.backend
        else:
            name, backend = runtime
        lat = self.latency_factors(device.target, name, backend, precision)
        mem = self.memory_factors(device.target, name, backend)
        fil = self.file_factors(name, precision)
        p50, terms = estimate_latency_ms(counts, device, lat)
        return CostEstimate(
            p50_ms=p50,
            p95_ms=p50 * lat.p95_factor,
            terms_ms=terms,
            memory_mib=estimate_memory_mib(counts, precision, mem),
            file_mib=estimate_file_mib(counts, fil),
            latency_factors=lat,
            memory_factors=mem,
            file_factors=fil,
        )
