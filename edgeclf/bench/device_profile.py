"""A hardware profile of the machine in hand, from its measured figures: ``edgeclf profiles calibrate``.

Run on a device, :func:`calibrate_profile` writes a profile (the format of the built-in
``hardware_profiles/*.yaml``) whose figures are this device's, measured as the cost-model
calibration measures its host (:func:`edgeclf.select.calibration.detect_host`):

* ``compute``: the fp32 peak is the rate ONNX Runtime reaches on a large fp32 MatMul at the
  profile's thread count over the GEMM efficiency assumed; fp16 is computed in fp32 on a CPU
  (same peak); the int8 peak is the fp32 peak times the ISA's int8/fp32 ratio; the memory
  bandwidth is a large array copy (read + write bytes); ``threads`` is the thread count the
  GEMM ran at (default: one per physical core, as the built-in profiles assume).
* ``cpu``: the CPU model and ISA features from ``/proc/cpuinfo``, the physical cores and
  hardware threads this process may use, and as ``max_freq_ghz`` the effective clock the
  GEMM implies (the clock the per-node overheads are scaled by).
* ``memory``: the RAM (or the memory limit of this process's control group, when lower).
* ``cost_model``: the cost model's efficiency factors for the profile's runtimes. With
  ``measure_backbones`` a few real backbones are exported, timed and the factors fitted here
  (:func:`edgeclf.bench.calibrate.calibrate`, which does the same for ``calibration.json``);
  otherwise they are copied from the stored calibration and the priors. Either way the
  profile carries them, so its estimates do not change when ``calibration.json`` does.
* ``budgets``: given, copied from a base profile, or :data:`DEFAULT_BUDGETS`.

``edgeclf build --profile my-device.yaml`` then estimates latency from this device's
figures (and factors) instead of a built-in profile's nominal ones.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from edgeclf._io import atomic_write_text
from edgeclf.errors import ConfigError, EdgeclfError, ProfileError
from edgeclf.profiles import ISA_FEATURES, HardwareProfile, load_profile, parse_profile
from edgeclf.select.costmodel import Calibration, CostModel, HostInfo, calibration_for_profile

__all__ = [
    "DEFAULT_BUDGETS",
    "PROFILE_BACKBONES",
    "CalibratedProfile",
    "calibrate_profile",
    "default_profile_name",
    "physical_cores",
]

#: Backbones timed with ``measure_backbones``: dense and depthwise convolutions, small and
#: large, so that every latency term of the cost model is exercised (three backbones or more
#: also give the fit a leave-one-backbone-out error).
PROFILE_BACKBONES: tuple[str, ...] = ("tf_mobilenetv3_small_100", "mobilenetv2_100", "tf_efficientnet_lite0", "resnet18")
#: Budgets of a profile given neither budgets nor a base profile (the memory budget is at
#: most half the RAM, the file budget at most the memory budget).
DEFAULT_BUDGETS: dict[str, float] = {"latency_ms_p95": 50.0, "memory_mb": 1024.0, "model_file_mb": 100.0}
_YAML_SUFFIXES = (".yaml", ".yml")
_RUNTIMES: dict[str, dict[str, Any]] = {
    "onnxruntime": {"runtime": "onnxruntime", "execution_provider": "CPUExecutionProvider", "precisions": ["fp32", "int8"]},
    "openvino": {"runtime": "openvino", "device": "CPU", "precisions": ["fp32", "fp16", "int8"]},
}
# /proc/cpuinfo "Features" names on AArch64 -> the profiles' Arm feature names.
_ARM_FEATURES = {
    "asimd": "neon",
    "fphp": "fp16",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}


@dataclass(frozen=True)
class CalibratedProfile:
    """The profile written, the host figures it was made from, and what to know about them."""

    profile: HardwareProfile
    path: Path
    host: HostInfo
    fitted: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document ``edgeclf profiles calibrate --json`` prints."""
        return {"path": str(self.path), "fitted": self.fitted, "notes": self.notes, "profile": self.profile.to_json_dict()}


def default_profile_name() -> str:
    """A profile name (slug) from this host's name; ``this-device`` when it has none."""
    slug = re.sub(r"[^a-z0-9]+", "-", platform.node().split(".")[0].lower()).strip("-")
    return slug or "this-device"


def _arch() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if arch not in ISA_FEATURES:
        raise ConfigError(f"profiles describe x86_64 and aarch64 CPUs; this host is {platform.machine()}")
    return arch


def _available_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None) -> int:
    """Physical cores among ``cpus`` (default: the CPUs this process may run on).

    Hardware threads of one core share a ``thread_siblings_list`` in sysfs; where that is
    unreadable every CPU counts as a core.
    """
    cpus = _available_cpus() if cpus is None else cpus
    cores: set[str] = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add(siblings)
    return max(1, len(cores))


def _ram_gb() -> float:
    """Physical RAM in GB (2**30 bytes), or this process's cgroup memory limit when lower."""
    total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, float(limit))
    except OSError:
        pass
    return round(total / (1 << 30), 1)


def _isa_features(arch: str, flags: set[str]) -> list[str]:
    if arch == "aarch64":
        found = {_ARM_FEATURES[f] for f in flags if f in _ARM_FEATURES}
    else:
        found = flags & ISA_FEATURES[arch]
    return sorted(found)


def _budgets(
    base: str | None, latency_ms: float | None, memory_mb: float | None, file_mb: float | None, ram_gb: float
) -> tuple[dict[str, float], str]:
    if base is not None:
        given = load_profile(base).budgets.model_dump()
        source = f"copied from profile {base}"
    else:
        given = dict(DEFAULT_BUDGETS)
        given["memory_mb"] = min(given["memory_mb"], float(round(ram_gb * 1024 / 2)))
        given["model_file_mb"] = min(given["model_file_mb"], given["memory_mb"])
        source = "defaults"
    for key, value in (("latency_ms_p95", latency_ms), ("memory_mb", memory_mb), ("model_file_mb", file_mb)):
        if value is not None:
            given[key] = float(value)
    if any(v is not None for v in (latency_ms, memory_mb, file_mb)):
        source += ", with the budgets given"
    return given, source


def _factors(
    runtimes: list[dict[str, Any]], calibration: Calibration | None, stored: CostModel
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The factor records for the profile's runtimes: fitted here first, else ``stored``'s (the
    cost model of this device's class).

    Returns the records by section, and the latency factors taken from the stored model.
    """
    lat = {f.key: f for f in calibration.latency} if calibration is not None else {}
    mem = {f.key: f for f in calibration.memory} if calibration is not None else {}
    fil = {f.key: f for f in calibration.files} if calibration is not None else {}
    out: dict[str, list[dict[str, Any]]] = {"latency": [], "memory": [], "files": []}
    copied: list[str] = []

    def add(section: str, found: Any, lookup: Any, label: str | None = None) -> None:
        if found is None:
            try:
                found = lookup()
            except EdgeclfError:
                return  # the cost model has none: its estimates fail as they would for any profile
            if label is not None:
                copied.append(label)
        out[section].append(found.model_dump(mode="json", exclude_none=True))

    for rt in runtimes:
        backend = rt.get("execution_provider") or rt.get("device")
        name = rt["runtime"]
        for precision in rt["precisions"]:
            key = ("cpu", name, backend, precision)
            add("latency", lat.get(key), lambda k=key: stored.latency_factors(*k), f"{name} {precision}")
        add("memory", mem.get(("cpu", name, backend)), lambda n=name, b=backend: stored.memory_factors("cpu", n, b))
        for precision in rt["precisions"]:
            add("files", fil.get((name, precision)), lambda n=name, p=precision: stored.file_factors(n, p))
    return out, copied


def calibrate_profile(
    out: Path | str,
    *,
    name: str | None = None,
    base: str | None = None,
    latency_ms: float | None = None,
    memory_mb: float | None = None,
    file_mb: float | None = None,
    threads: int | None = None,
    runtimes: Sequence[str] | None = None,
    measure_backbones: bool = False,
    backbones: Sequence[str] | None = None,
    seconds_per_point: float = 1.0,
    passes: int | None = None,
    work_dir: Path | str | None = None,
) -> CalibratedProfile:
    """Measure this host and write its hardware profile to ``out`` (see the module docstring).

    Args:
        out: The profile YAML file to write (``.yaml`` or ``.yml``; replaced atomically).
        name: The profile's name (a slug); default from the host name.
        base: A profile (name or path) to copy the budgets from.
        latency_ms, memory_mb, file_mb: Budgets (p95 ms at batch 1, MB, MB), over the base's.
        threads: Intra-op threads the profile assumes and the GEMM runs at (default: one
            per physical core this process may use).
        runtimes: ``onnxruntime`` and/or ``openvino`` (default: both where installed).
        measure_backbones: Time real backbones and fit the factors here (minutes) instead
            of copying the stored calibration's.
        backbones: With ``measure_backbones``: which ones (default :data:`PROFILE_BACKBONES`).
        seconds_per_point, passes, work_dir: With ``measure_backbones``: as for
            :func:`edgeclf.bench.calibrate.calibrate`.

    Raises:
        ConfigError: A bad option (name, file suffix, threads, runtime).
        ProfileError: The base profile cannot be loaded, or the budgets do not fit this
            device (a memory budget above its RAM).
    """
    from edgeclf import __version__
    from edgeclf.bench import calibrate as cost_calibration
    from edgeclf.select.calibration import GEMM_EFFICIENCY, _cpuinfo, detect_host

    path = Path(out)
    if path.suffix.lower() not in _YAML_SUFFIXES:
        raise ConfigError(f"--out {path}: a profile is a YAML file; name it with .yaml or .yml")
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; pass the profile file to write")
    slug = name if name is not None else default_profile_name()
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", slug):
        raise ConfigError(f"profile name {slug!r}: use lowercase letters, digits and single hyphens, e.g. my-device")
    wanted = list(runtimes) if runtimes is not None else ["onnxruntime", "openvino"]
    unknown = sorted(set(wanted) - set(_RUNTIMES))
    if unknown or not wanted:
        raise ConfigError(f"runtimes: {', '.join(unknown) or 'none given'}; a calibrated profile runs onnxruntime or openvino")
    if runtimes is None and not importlib.util.find_spec("openvino"):
        wanted.remove("openvino")
    elif "openvino" in wanted and not importlib.util.find_spec("openvino"):
        raise ConfigError("openvino is not installed here; leave it out of --runtimes or install it")
    arch = _arch()
    cpus = _available_cpus()
    cores = physical_cores(cpus)
    threads = cores if threads is None else int(threads)
    if not 1 <= threads <= len(cpus):
        raise ConfigError(f"threads {threads}: this process may use 1 to {len(cpus)} CPUs")
    ram_gb = _ram_gb()
    budgets, budgets_source = _budgets(base, latency_ms, memory_mb, file_mb, ram_gb)
    if measure_backbones and not backbones:
        backbones = list(PROFILE_BACKBONES)

    notes: list[str] = []
    busy = cost_calibration._cpu_busy_fraction()
    if busy > cost_calibration.QUIET_MAX_BUSY:
        notes.append(
            f"other work kept the CPUs {100 * busy:.0f} % busy while this host was measured: its figures "
            "(and so the estimates) are lower than the device's; measure again on a quiet device"
        )
    calibration: Calibration | None = None
    if measure_backbones:
        calibration = cost_calibration.calibrate(
            backbones,
            runtimes=wanted,
            threads=threads,
            seconds_per_point=seconds_per_point,
            passes=cost_calibration.PASSES if passes is None else passes,
            out=None,
            validation_out=None,
            work_dir=work_dir,
        )
        host = calibration.host
    else:
        host = detect_host(threads)

    rts = [_RUNTIMES[r] for r in wanted]
    class_model = CostModel(calibration_for_profile(host.matched_profile))  # what --profile auto estimates with here
    factors, copied = _factors(rts, calibration, class_model)
    stored = class_model.calibration
    stored_from = (
        f"the stored calibration ({stored.host.cpu_model}, an {stored.host.matched_profile} host, {stored.created}) "
        "and the priors"
        if stored
        else "the priors"
    )
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    if calibration is not None:
        origin = f"fitted on this device on {today} ({len(calibration.points)} measurements of {', '.join(backbones or [])})"
        if copied:
            origin += f"; not measured here, copied from {stored_from}: {', '.join(copied)}"
    else:
        origin = (
            f"copied from {stored_from} on {today}; they are fractions of this profile's measured figures. "
            "Fit them on this device with `edgeclf profiles calibrate --measure-backbones`"
        )
        notes.append("the efficiency factors are the stored calibration's; --measure-backbones fits them on this device")
    host_name = platform.node() or "this host"
    doc: dict[str, Any] = {
        "name": slug,
        "device": f"{host.cpu_model} ({len(cpus)} CPUs)",
        "description": (
            f"Measured on {host_name} by `edgeclf profiles calibrate` on {today}: fp32 GEMM {host.gemm_gflops:g} "
            f"GFLOP/s at {host.threads} threads, copy bandwidth {host.memory_bandwidth_gb_per_s:g} GB/s. "
            f"Budgets: {budgets_source}."
        ),
        "cpu": {
            "model": host.cpu_model,
            "arch": arch,
            "cores": cores,
            "threads": len(cpus),
            "max_freq_ghz": host.clock_ghz,
            "isa_features": _isa_features(arch, set(_flags(_cpuinfo()))),
        },
        "memory": {"ram_gb": ram_gb},
        "runtimes": rts,
        "compute": {
            "target": "cpu",
            "peak_fp32_gflops": host.peak_fp32_gflops,
            "peak_fp16_gflops": host.peak_fp32_gflops,
            "peak_int8_gops": host.peak_int8_gops,
            "memory_bandwidth_gb_per_s": host.memory_bandwidth_gb_per_s,
            "threads": host.threads,
        },
        "budgets": budgets,
        "cost_model": {"origin": origin, **factors},
    }
    header = [
        f"# Hardware profile of {doc['device']}, measured by `edgeclf profiles calibrate` (edgeclf {__version__}).",
        f"# compute.peak_fp32_gflops: ONNX Runtime fp32 MatMul 2048^3 at {host.threads} threads ({host.gemm_gflops:g} "
        f"GFLOP/s) / {GEMM_EFFICIENCY:g},",
        f"#   the fraction of the peak such a GEMM reaches; peak_int8_gops: x {host.int8_ops_per_fp32_flop:g} (the ISA's "
        "int8/fp32 ratio);",
        "#   fp16 runs in fp32 on a CPU; memory_bandwidth_gb_per_s: a large array copy (read + write bytes).",
        "# cpu.max_freq_ghz: the effective clock the GEMM implies (what per-node overheads scale with).",
        "# cost_model: the cost model's efficiency factors for this device, fractions of the figures above.",
        f"# Use it with: edgeclf build --profile {path.name}",
        "",
    ]
    text = "\n".join(header) + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    try:
        profile = parse_profile(text, "the measured profile")
    except ProfileError as exc:
        raise ProfileError(f"{exc} (fix the budgets: --base, --latency-ms, --memory-mb, --file-mb)") from None
    atomic_write_text(path, text)
    return CalibratedProfile(profile=profile, path=path, host=host, fitted=calibration is not None, notes=notes)


class _Dumper(yaml.SafeDumper):
    """Writes lists of plain values on one line (``precisions: [fp32, int8]``), as the built-in profiles do."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, (str, int, float, bool)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _flags(info: dict[str, str]) -> list[str]:
    return info.get("flags", info.get("Features", "")).split()
