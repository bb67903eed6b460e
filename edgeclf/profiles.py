"""Hardware profiles: what a target device is, what it runs, and what a model may cost.

A profile is one YAML file validated by :class:`HardwareProfile`. Built-in profiles
ship with edgeclf (``edgeclf/hardware_profiles/`` in the wheel, the top-level
``hardware_profiles/`` folder in a source checkout); users may load their own file
by path. Every problem with a profile is raised as :class:`~edgeclf.errors.ProfileError`
with the file and the field path in the message.

Units are part of every figure's field name: ``*_gflops`` (10^9 floating-point
operations per second), ``*_gops`` (10^9 integer operations per second), ``*_gb_per_s``
(10^9 bytes per second), ``*_gb`` / ``*_mb`` (memory sizes), ``*_ms`` (milliseconds).
Peak figures are *dense* (no structured sparsity): the latency cost model assumes
ordinary dense models.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeclf.errors import ProfileError

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

__all__ = [
    "Accelerator",
    "Budgets",
    "Compute",
    "CostModelFactors",
    "Cpu",
    "FileFactors",
    "FitSummary",
    "Gpu",
    "HardwareProfile",
    "LatencyFactors",
    "Memory",
    "MemoryFactors",
    "Precision",
    "ProfileSummary",
    "RuntimeName",
    "RuntimeSupport",
    "builtin_profiles_dir",
    "list_profiles",
    "load_profile",
    "parse_profile",
    "profile_summaries",
]

Precision = Literal["fp32", "fp16", "int8"]
RuntimeName = Literal["onnxruntime", "openvino", "tensorrt", "tflite"]
Target = Literal["cpu", "gpu"]
FactorSource = Literal["fitted", "derived", "prior"]

PRECISIONS: tuple[str, ...] = get_args(Precision)

_SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"

# ISA feature names: Linux /proc/cpuinfo flag names on x86-64; Arm architecture
# feature names on AArch64. A closed list, so that a typo ("avx521") is an error.
ISA_FEATURES: dict[str, frozenset[str]] = {
    "x86_64": frozenset(
        {
            "sse4_2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512cd",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512_vnni",
            "avx512_bf16",
            "avx512_fp16",
            "avx_vnni",
            "amx_tile",
            "amx_int8",
            "amx_bf16",
        }
    ),
    "aarch64": frozenset({"neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2"}),
}

# Which compute unit each ONNX Runtime execution provider runs a model on.
ORT_EXECUTION_PROVIDERS: dict[str, Target] = {
    "CPUExecutionProvider": "cpu",
    "XnnpackExecutionProvider": "cpu",
    "DnnlExecutionProvider": "cpu",
    "ACLExecutionProvider": "cpu",
    "ArmNNExecutionProvider": "cpu",
    "CUDAExecutionProvider": "gpu",
    "TensorrtExecutionProvider": "gpu",
    "ROCMExecutionProvider": "gpu",
    "MIGraphXExecutionProvider": "gpu",
}
_CUDA_EXECUTION_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})

# Device names each runtime accepts (OpenVINO device names, TensorRT engine targets,
# TFLite CPU kernels vs GPU delegate) and the compute unit each runs on. TensorRT on
# a DLA is not listed: the cost model has no DLA figures yet (see Accelerator).
RUNTIME_DEVICES: dict[str, dict[str, Target]] = {
    "openvino": {"CPU": "cpu", "GPU": "gpu"},
    "tensorrt": {"GPU": "gpu"},
    "tflite": {"CPU": "cpu", "GPU": "gpu"},
}
_DEFAULT_DEVICE = {"openvino": "CPU", "tensorrt": "GPU", "tflite": "CPU"}

_PEAK_FIELDS: dict[str, str] = {
    "fp32": "peak_fp32_gflops",
    "fp16": "peak_fp16_gflops",
    "int8": "peak_int8_gops",
}


class _Strict(BaseModel):
    """Base of every profile section: unknown keys are errors, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, str_strip_whitespace=True)


class Cpu(_Strict):
    """The host CPU."""

    model: str = Field(min_length=1, description="CPU core or part, e.g. 'Arm Cortex-A76'.")
    arch: Literal["aarch64", "x86_64"]
    cores: int = Field(gt=0, description="Physical cores available to inference.")
    threads: int | None = Field(default=None, gt=0, description="Hardware threads (SMT); defaults to cores.")
    max_freq_ghz: float = Field(gt=0)
    isa_features: list[str] = Field(
        default_factory=list,
        description="SIMD/matrix ISA extensions, e.g. avx2, avx512_vnni, neon, dotprod.",
    )

    @field_validator("isa_features")
    @classmethod
    def _check_features(cls, features: list[str], info: ValidationInfo) -> list[str]:
        arch = info.data.get("arch")
        if arch is None:  # arch itself is invalid; that error is reported already
            return features
        known = ISA_FEATURES[arch]
        seen: set[str] = set()
        for feature in features:
            if feature in seen:
                raise ValueError(f"{feature!r} is listed twice")
            seen.add(feature)
            if feature in known:
                continue
            for other, other_features in ISA_FEATURES.items():
                if other != arch and feature in other_features:
                    raise ValueError(f"{feature!r} is an {other} feature but arch is {arch}")
            hint = difflib.get_close_matches(feature, sorted(known), n=1)
            raise ValueError(
                f"unknown {arch} feature {feature!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; known: {', '.join(sorted(known))}"
            )
        return features

    @model_validator(mode="after")
    def _check(self) -> Cpu:
        if self.threads is not None and self.threads < self.cores:
            raise ValueError(
                f"threads ({self.threads}) is less than cores ({self.cores}); "
                "threads counts hardware threads, so it is at least the number of cores"
            )
        return self

    @property
    def hardware_threads(self) -> int:
        return self.threads if self.threads is not None else self.cores


class Gpu(_Strict):
    """An integrated or discrete GPU."""

    name: str = Field(min_length=1)
    cuda_compute_capability: str | None = Field(
        default=None, pattern=r"^\d+\.\d+$", description="e.g. '8.7'; absent for non-CUDA GPUs."
    )
    cuda_cores: int | None = Field(default=None, gt=0)
    tensor_cores: int | None = Field(default=None, ge=0)
    max_freq_mhz: float | None = Field(default=None, gt=0)

    @field_validator("cuda_compute_capability", mode="before")
    @classmethod
    def _capability_is_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(
                f'write the compute capability as a quoted string, e.g. "{value}" (as a number, 8.10 would read as 8.1)'
            )
        return value


class Accelerator(_Strict):
    """A fixed-function inference accelerator (DLA, NPU, ...).

    Descriptive only for now: runtimes in a profile run on ``compute.target``.
    Peak figures are dense totals across all ``count`` units.
    """

    kind: Literal["dla", "npu", "tpu", "vpu"]
    name: str = Field(min_length=1)
    count: int = Field(default=1, gt=0)
    peak_int8_gops: float | None = Field(default=None, gt=0)
    peak_fp16_gflops: float | None = Field(default=None, gt=0)


class Memory(_Strict):
    """System memory."""

    ram_gb: float = Field(gt=0)
    technology: str | None = Field(default=None, min_length=1, description="e.g. 'LPDDR5, 256-bit'")
    shared_with_gpu: bool = Field(default=False, description="True on SoCs where CPU and GPU share one DRAM pool.")


class RuntimeSupport(_Strict):
    """One inference runtime (and its execution provider or device) the device supports."""

    runtime: RuntimeName
    precisions: list[Precision] = Field(min_length=1)
    execution_provider: str | None = Field(
        default=None,
        description="ONNX Runtime only, e.g. CUDAExecutionProvider; default CPUExecutionProvider.",
    )
    device: str | None = Field(
        default=None,
        description="OpenVINO device (CPU, GPU), TensorRT target (GPU) or TFLite (CPU, GPU).",
    )

    @field_validator("precisions", mode="before")
    @classmethod
    def _precisions_nonempty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError(f"list at least one precision ({', '.join(PRECISIONS)})")
        return value

    @model_validator(mode="after")
    def _check(self) -> RuntimeSupport:
        dupes = sorted({p for p in self.precisions if self.precisions.count(p) > 1})
        if dupes:
            raise ValueError(f"precisions lists {', '.join(dupes)} more than once")
        if self.runtime == "onnxruntime":
            if self.device is not None:
                raise ValueError(
                    "onnxruntime takes execution_provider, not device (e.g. execution_provider: CUDAExecutionProvider)"
                )
            ep = self.execution_provider or "CPUExecutionProvider"
            if ep not in ORT_EXECUTION_PROVIDERS:
                hint = difflib.get_close_matches(ep, list(ORT_EXECUTION_PROVIDERS), n=1)
                raise ValueError(
                    f"unknown ONNX Runtime execution_provider {ep!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; known: {', '.join(ORT_EXECUTION_PROVIDERS)}"
                )
        else:
            if self.execution_provider is not None:
                raise ValueError(f"execution_provider applies to onnxruntime only; for {self.runtime} use device")
            devices = RUNTIME_DEVICES[self.runtime]
            dev = self.device or _DEFAULT_DEVICE[self.runtime]
            if dev not in devices:
                raise ValueError(f"{self.runtime} device {dev!r} is not supported; use one of {', '.join(devices)}")
        return self

    @property
    def backend(self) -> str:
        """Execution provider or device, resolved to its default when omitted."""
        if self.runtime == "onnxruntime":
            return self.execution_provider or "CPUExecutionProvider"
        return self.device or _DEFAULT_DEVICE[self.runtime]

    @property
    def target(self) -> Target:
        """The compute unit this runtime runs the model on."""
        if self.runtime == "onnxruntime":
            return ORT_EXECUTION_PROVIDERS[self.backend]
        return RUNTIME_DEVICES[self.runtime][self.backend]

    @property
    def label(self) -> str:
        """Short display name, e.g. 'onnxruntime/CUDA' or 'openvino/CPU'."""
        return f"{self.runtime}/{self.backend.removesuffix('ExecutionProvider')}"


class Compute(_Strict):
    """Figures for the latency cost model: the unit the runtimes run on.

    Peaks are dense (no structured sparsity). A precision a runtime lists must have
    its peak here; a peak without a runtime using it is allowed (information).
    """

    target: Target = Field(description="Compute unit the figures describe: cpu or gpu.")
    peak_fp32_gflops: float | None = Field(default=None, gt=0)
    peak_fp16_gflops: float | None = Field(default=None, gt=0)
    peak_int8_gops: float | None = Field(default=None, gt=0)
    memory_bandwidth_gb_per_s: float = Field(gt=0, description="DRAM bandwidth, 10^9 bytes/s.")
    threads: int | None = Field(default=None, gt=0, description="Intra-op threads the runtime uses; required for cpu.")

    @model_validator(mode="after")
    def _check(self) -> Compute:
        if self.target == "cpu" and self.threads is None:
            raise ValueError("threads is required when target is cpu (intra-op threads)")
        if not any(getattr(self, f) is not None for f in _PEAK_FIELDS.values()):
            raise ValueError(f"give at least one peak figure ({', '.join(_PEAK_FIELDS.values())})")
        return self

    def peak_gops(self, precision: Precision) -> float | None:
        """Dense peak for ``precision`` in 10^9 operations per second, or None."""
        return getattr(self, _PEAK_FIELDS[precision])


class Budgets(_Strict):
    """What a model may cost on this device."""

    latency_ms_p95: float = Field(gt=0, description="95th-percentile latency at batch size 1.")
    memory_mb: float = Field(gt=0, description="Peak resident memory of the inference process.")
    model_file_mb: float = Field(gt=0, description="Size of the exported model file.")


# ------------------------------------------------------------------ cost-model factors
#
# The efficiency factors of the latency, memory and file-size cost model
# (edgeclf.select.costmodel, where the formulas are). They are defined here because a
# profile may carry its own: ``edgeclf profiles calibrate`` writes the factors measured on
# the device into the profile's ``cost_model`` section. ``calibration.json`` holds the same
# records.


class _Factors(BaseModel):
    """Base of the factor records: unknown keys are errors, the records are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FitSummary(_Factors):
    """How well fitted factors reproduce the measurements they were fitted on."""

    points: int
    rms_log_error: float = Field(description="Root mean square of ln(estimate / measured).")
    max_abs_error_pct: float = Field(description="Largest |estimate / measured - 1|, percent.")
    mean_abs_error_pct: float
    loo_max_abs_error_pct: float | None = Field(
        default=None,
        description="Largest error when each backbone's points are predicted by factors fitted "
        "without that backbone (leave-one-backbone-out); None with fewer than 3 backbones.",
    )
    loo_mean_abs_error_pct: float | None = None


class LatencyFactors(_Factors):
    """Efficiency factors of one runtime at one precision on one kind of compute unit."""

    target: Target
    runtime: RuntimeName
    backend: str = Field(description="Execution provider or device, e.g. CPUExecutionProvider, GPU.")
    precision: Precision
    compute_efficiency: float = Field(gt=0, description="Fraction of the precision's peak on dense nodes.")
    depthwise_efficiency: float = Field(gt=0, description="Fraction of the precision's peak on depthwise nodes.")
    memory_efficiency: float = Field(gt=0, description="Fraction of the memory bandwidth (above 1: caches help).")
    call_overhead_ms: float = Field(ge=0, description="Fixed cost of one inference call.")
    node_overhead_ms: float = Field(ge=0, description="Dispatch cost per graph node, at overhead_clock_ghz.")
    overhead_clock_ghz: float | None = Field(
        default=None, gt=0, description="CPU clock the overheads hold at (CPU targets); None: as given."
    )
    p95_factor: float = Field(ge=1, description="p95 latency = p50 latency x this factor.")
    source: FactorSource
    note: str = ""
    fit: FitSummary | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.target, self.runtime, self.backend, self.precision)


class MemoryFactors(_Factors):
    """Peak resident memory of an inference process running one runtime."""

    target: Target
    runtime: RuntimeName
    backend: str
    base_mib: float = Field(ge=0, description="Process + runtime libraries with no model loaded.")
    weight_copies: float = Field(ge=0, description="Resident copies of the weights (file bytes, prepacked).")
    activation_factor: float = Field(ge=0, description="Arena bytes per byte of planned peak activations.")
    source: FactorSource
    note: str = ""
    max_abs_error_pct: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target, self.runtime, self.backend)


class FileFactors(_Factors):
    """Size of the model file one runtime loads, at one precision."""

    runtime: RuntimeName
    precision: Precision
    bytes_per_param: float = Field(gt=0)
    overhead_mib: float = Field(ge=0)
    source: FactorSource
    note: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.runtime, self.precision)


class CostModelFactors(_Strict):
    """Cost-model factors for this device; for this profile they replace the stored calibration's.

    Their efficiencies are fractions of this profile's ``compute`` figures, as every
    factor set is of the figures of the device it is applied to.
    """

    origin: str = Field(min_length=1, description="Where the factors come from (measured here, or copied).")
    latency: list[LatencyFactors] = Field(default_factory=list)
    memory: list[MemoryFactors] = Field(default_factory=list)
    files: list[FileFactors] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> CostModelFactors:
        for section in ("latency", "memory", "files"):
            seen: dict[tuple[str, ...], int] = {}
            for i, factors in enumerate(getattr(self, section)):
                if factors.key in seen:
                    raise ValueError(f"{section}[{i}] repeats {section}[{seen[factors.key]}] ({'/'.join(factors.key)}); keep one")
                seen[factors.key] = i
        return self


class ProfileSummary(_Strict):
    """The few fields a profiles table shows."""

    name: str
    device: str
    runtimes: list[str]
    latency_budget_ms_p95: float
    memory_budget_mb: float
    model_file_budget_mb: float


class HardwareProfile(_Strict):
    """A validated hardware profile."""

    name: str = Field(pattern=_SLUG_PATTERN, description="Slug, e.g. 'jetson-orin'.")
    device: str = Field(min_length=1, description="Marketing name of the device.")
    description: str = Field(min_length=1)
    cpu: Cpu
    gpu: Gpu | None = None
    accelerator: Accelerator | None = None
    memory: Memory
    runtimes: list[RuntimeSupport] = Field(min_length=1)
    compute: Compute
    budgets: Budgets
    cost_model: CostModelFactors | None = Field(
        default=None,
        description="Factors measured on this device (edgeclf profiles calibrate); absent: the stored calibration's.",
    )

    @model_validator(mode="after")
    def _check(self) -> HardwareProfile:
        seen: dict[tuple[str, str], int] = {}
        for i, rt in enumerate(self.runtimes):
            where = f"runtimes[{i}] ({rt.label})"
            key = (rt.runtime, rt.backend)
            if key in seen:
                raise ValueError(f"{where} repeats runtimes[{seen[key]}]; merge their precisions")
            seen[key] = i
            if rt.target != self.compute.target:
                raise ValueError(
                    f"{where} runs on the {rt.target} but compute.target is "
                    f"{self.compute.target}; a profile's runtimes must run on the unit its "
                    "compute figures describe"
                )
            needs_cuda = rt.runtime == "tensorrt" or rt.backend in _CUDA_EXECUTION_PROVIDERS
            if needs_cuda and (self.gpu is None or self.gpu.cuda_compute_capability is None):
                raise ValueError(f"{where} needs an NVIDIA GPU: add gpu with cuda_compute_capability")
            for precision in rt.precisions:
                if self.compute.peak_gops(precision) is None:
                    raise ValueError(
                        f"{where} lists {precision} but compute.{_PEAK_FIELDS[precision]} "
                        f"is missing: add the figure or remove {precision}"
                    )
        if self.compute.target == "gpu" and self.gpu is None:
            raise ValueError("compute.target is gpu but the profile has no gpu section")
        if self.compute.threads is not None and self.compute.threads > self.cpu.hardware_threads:
            raise ValueError(
                f"compute.threads ({self.compute.threads}) exceeds the CPU's {self.cpu.hardware_threads} hardware threads"
            )
        ram_mb = self.memory.ram_gb * 1024
        if self.budgets.memory_mb > ram_mb:
            raise ValueError(
                f"budgets.memory_mb ({self.budgets.memory_mb:g}) exceeds memory.ram_gb "
                f"({self.memory.ram_gb:g} GB = {ram_mb:g} MB)"
            )
        if self.budgets.model_file_mb > self.budgets.memory_mb:
            raise ValueError(
                f"budgets.model_file_mb ({self.budgets.model_file_mb:g}) exceeds "
                f"budgets.memory_mb ({self.budgets.memory_mb:g}); the model must fit in memory"
            )
        if self.cost_model is not None:
            for section in ("latency", "memory"):
                for i, factors in enumerate(getattr(self.cost_model, section)):
                    if factors.target != self.compute.target:
                        raise ValueError(
                            f"cost_model.{section}[{i}] ({factors.runtime}/{factors.backend}) is for a "
                            f"{factors.target} but compute.target is {self.compute.target}"
                        )
        return self

    def runtime(self, name: RuntimeName) -> list[RuntimeSupport]:
        """The entries for one runtime (several when it has several providers)."""
        return [rt for rt in self.runtimes if rt.runtime == name]

    def summary(self) -> ProfileSummary:
        """Key fields for a table row, e.g. ``edgeclf profiles list``."""
        return ProfileSummary(
            name=self.name,
            device=self.device,
            runtimes=[f"{rt.label} ({', '.join(rt.precisions)})" for rt in self.runtimes],
            latency_budget_ms_p95=self.budgets.latency_ms_p95,
            memory_budget_mb=self.budgets.memory_mb,
            model_file_budget_mb=self.budgets.model_file_mb,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The profile as plain JSON-ready data (what ``--json`` prints)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading

_YAML_SUFFIXES = (".yaml", ".yml")


def builtin_profiles_dir() -> Traversable:
    """Where the built-in profile YAML files live.

    The installed wheel carries them as package data in ``edgeclf/hardware_profiles``;
    a source checkout or editable install has them in the repository's top-level
    ``hardware_profiles/`` folder.
    """
    packaged = resources.files("edgeclf") / "hardware_profiles"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "hardware_profiles"


def _builtin_files() -> dict[str, Traversable]:
    directory = builtin_profiles_dir()
    if not directory.is_dir():
        return {}
    files: dict[str, Traversable] = {}
    for entry in directory.iterdir():
        if entry.is_file() and entry.name.endswith(_YAML_SUFFIXES):
            files[entry.name.rsplit(".", 1)[0]] = entry
    return dict(sorted(files.items()))


def list_profiles() -> list[str]:
    """Names of the built-in profiles, sorted."""
    return list(_builtin_files())


def profile_summaries() -> list[ProfileSummary]:
    """One :class:`ProfileSummary` per built-in profile, in :func:`list_profiles` order (each validated)."""
    return [load_profile(name).summary() for name in list_profiles()]


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.lower().endswith(_YAML_SUFFIXES)


def load_profile(name_or_path: str | os.PathLike[str]) -> HardwareProfile:
    """Load a built-in profile by name, or a user's profile YAML by path.

    A ``Path``, or a string that contains a slash or ends in ``.yaml``/``.yml``, is a
    path. Any other string is a built-in name; a string that is no built-in name but
    names an existing file is loaded as a path.
    """
    if isinstance(name_or_path, os.PathLike):
        return _load_path(Path(name_or_path))
    text = str(name_or_path).strip()
    if _looks_like_path(text):
        return _load_path(Path(text))
    builtins = _builtin_files()
    if text in builtins:
        profile = parse_profile(builtins[text].read_text(encoding="utf-8"), str(builtins[text]))
        if profile.name != text:
            raise ProfileError(
                f"{builtins[text]}: built-in profile file is named {text!r} but its name "
                f"field is {profile.name!r}; they must match"
            )
        return profile
    if text and Path(text).is_file():
        return _load_path(Path(text))
    available = ", ".join(builtins) if builtins else (f"none found in {builtin_profiles_dir()} (the installation is incomplete)")
    hint = difflib.get_close_matches(text, list(builtins), n=1)
    raise ProfileError(
        f"unknown hardware profile {text!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; available: {available}. To use your own profile, pass the path to its YAML file."
    )


def _load_path(path: Path) -> HardwareProfile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"hardware profile file not found: {path}") from None
    except IsADirectoryError:
        raise ProfileError(f"{path} is a directory; pass a profile YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read hardware profile {path}: {exc}") from None
    return parse_profile(text, str(path))


def parse_profile(text: str, source: str = "<string>") -> HardwareProfile:
    """Validate profile YAML text; ``source`` names it in error messages."""
    data = _parse_yaml(text, source)
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ProfileError(f"{source}: a hardware profile is a YAML mapping, but this is {kind}")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation_error(exc, source)) from None


# ------------------------------------------------------------------------ YAML parsing


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key repeated in one mapping (a silent overwrite)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ProfileError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: invalid YAML: {exc}") from None


# ------------------------------------------------------------- validation messages

_MAX_ERRORS = 8


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (list, Union, types.UnionType):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the section that ``loc`` points into (for 'did you mean')."""
    model: type[BaseModel] | None = HardwareProfile
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    msg = error["msg"]
    if kind == "missing":
        text = "field required"
    elif kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = "unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        if allowed:
            text += f"; allowed: {', '.join(allowed)}"
    else:
        text = msg.removeprefix("Value error, ")
        if kind != "value_error" and not isinstance(error.get("input"), (dict, list)):
            text += f" (got {error['input']!r})"
    path = _loc_to_path(loc)
    return f"{path}: {text}" if path else text


def _iter_messages(exc: ValidationError) -> Iterator[str]:
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        message = _describe(error)
        if message not in seen:
            seen.add(message)
            yield message


def _format_validation_error(exc: ValidationError, source: str) -> str:
    messages = list(_iter_messages(exc))
    shown = messages[:_MAX_ERRORS]
    more = len(messages) - len(shown)
    body = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    return f"{source}: invalid hardware profile: {body}"
