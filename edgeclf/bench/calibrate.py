"""Cost-model calibration on the machine in hand: export and quantise every registered backbone,
time each model file in a clean worker process, fit the factors (:mod:`edgeclf.select.calibration`),
store ``calibration.json``. Run it with ``edgeclf profiles calibrate-costmodel``;
``edgeclf profiles calibrate --measure-backbones`` fits the same factors into a device's profile.

It lives in ``bench`` because it needs the exporters: selection (``select``) runs before
training and must not depend on the export stage; it only reads the calibration written here.

Measuring: before each file, wait until other work leaves the CPUs (mostly) idle
(:data:`QUIET_MAX_BUSY`, at most :data:`QUIET_TIMEOUT_S`), time every file in :data:`PASSES`
passes (the second in the reverse order) and keep each file's quietest pass.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf._io import write_json
from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.select.calibration import VALIDATION_PATH, ValidationReport, detect_host, fit_calibration, write_validation
from edgeclf.select.costmodel import CALIBRATION_PATH, MIB, Calibration, CalibrationPoint

log = logging.getLogger("edgeclf.select")

WORKER = Path(__file__).with_name("_measure_worker.py")
# Before each measurement, wait (up to QUIET_TIMEOUT_S) until other work uses at most
# QUIET_MAX_BUSY of the CPUs; each model file is timed in PASSES passes (the second in the
# reverse order) and the quietest pass kept: on a shared machine other work only adds time.
QUIET_MAX_BUSY = 0.15
QUIET_TIMEOUT_S = 120.0
PASSES = 2
_DEFAULT_FP32_SIZES = (192, 128)  # besides each backbone's native resolution
_DEFAULT_INT8_SIZES = (224, 160)


def weights_available(backbone: str) -> bool:
    from edgeclf.models import get_backbone, package_weights_installed

    return package_weights_installed(get_backbone(backbone))


def _cpu_busy_fraction(window_s: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``window_s`` (from /proc/stat; 0 where unreadable)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return idle, sum(values)

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


def _wait_for_quiet(max_busy: float = QUIET_MAX_BUSY, timeout_s: float = QUIET_TIMEOUT_S) -> bool:
    """Wait until other work leaves the CPUs (mostly) idle; False when it never did."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = _cpu_busy_fraction()
        if busy <= max_busy:
            return True
        if time.monotonic() > deadline:
            log.warning("the CPUs stayed %.0f %% busy with other work; measuring anyway", 100 * busy)
            return False
        time.sleep(1.0)


def _run_worker(
    path: Path,
    runtime: str,
    precision: str,
    resolution: int,
    threads: int,
    seconds: float,
    optimized: Path | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(WORKER),
        str(path),
        "--runtime",
        runtime,
        "--precision",
        precision,
        "--resolution",
        str(resolution),
        "--threads",
        str(threads),
        "--seconds",
        str(seconds),
    ]
    if optimized is not None:
        cmd += ["--optimized-model", str(optimized)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise EdgeclfError(f"timing {path.name} with {runtime} failed: {' | '.join(tail)}")
    return json.loads(done.stdout)


def _count_nodes(path: Path) -> int | None:
    try:
        import onnx

        return len(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001 - a count for the record only
        return None


@dataclass(frozen=True)
class _Job:
    path: Path
    backbone: str
    resolution: int
    runtime: str
    precision: str
    weights: str


def _time_job(job: _Job, threads: int, seconds: float, work: Path) -> dict[str, Any]:
    optimized = work / f"{job.path.stem}.ort-optimized.onnx" if job.runtime == "onnxruntime" else None
    _wait_for_quiet()
    result = _run_worker(job.path, job.runtime, job.precision, job.resolution, threads, seconds, optimized)
    if optimized is not None and optimized.exists():
        result["optimized_nodes"] = _count_nodes(optimized)
    return result


def _point(job: _Job, results: Sequence[dict[str, Any]], threads: int) -> CalibrationPoint:
    best = min(results, key=lambda r: float(r["p50_ms"]))  # the quietest pass
    point = CalibrationPoint(
        backbone=job.backbone,
        resolution=job.resolution,
        runtime=job.runtime,  # type: ignore[arg-type]
        backend="CPUExecutionProvider" if job.runtime == "onnxruntime" else "CPU",
        precision=job.precision,  # type: ignore[arg-type]
        weights=job.weights,  # type: ignore[arg-type]
        threads=threads,
        runs=int(sum(int(r["runs"]) for r in results)),
        p50_ms=round(float(best["p50_ms"]), 4),
        p95_ms=round(float(best["p95_ms"]), 4),
        min_ms=round(min(float(r["min_ms"]) for r in results), 4),
        pass_p50_ms=[round(float(r["p50_ms"]), 4) for r in results],
        file_mib=round(job.path.stat().st_size / MIB, 4),
        baseline_rss_mib=round(float(best["baseline_rss_mib"]), 2),
        peak_rss_mib=round(max(float(r["peak_rss_mib"]) for r in results), 2),
        optimized_nodes=best.get("optimized_nodes"),
    )
    log.info(
        "%s %d px %s %s: p50 %.2f ms (passes %s), p95 %.2f ms, peak RSS %.0f MiB",
        job.backbone,
        job.resolution,
        job.runtime,
        job.precision,
        point.p50_ms,
        "/".join(f"{v:.2f}" for v in point.pass_p50_ms),
        point.p95_ms,
        point.peak_rss_mib,
    )
    return point


def measure_backbones(
    backbones: Sequence[str],
    resolutions: Sequence[int] | None,
    int8_resolutions: Sequence[int],
    runtimes: Sequence[str],
    threads: int,
    seconds: float,
    work_dir: Path,
    passes: int = PASSES,
    int8_native: bool = False,
) -> list[CalibrationPoint]:
    """Export and quantise every model file, then time them all (see the module docstring).

    ``int8_native``: each backbone's native resolution is measured at int8 too (besides
    ``int8_resolutions``).
    """
    import timm

    from edgeclf.export.onnx_export import export_onnx_fp32
    from edgeclf.export.quantize import quantize_onnx_int8
    from edgeclf.models import get_backbone, load_pretrained, preprocess_spec

    jobs: list[_Job] = []
    for name in backbones:
        info = get_backbone(name)
        model = timm.create_model(info.timm_arch, pretrained=False).eval()
        weights = "random"
        if weights_available(name):
            load_pretrained(model, info, source="package")
            weights = "pretrained"
        extra = resolutions if resolutions is not None else _DEFAULT_FP32_SIZES
        sizes = {info.input_size, *(int(r) for r in extra)}
        int8_sizes = {*(int(r) for r in int8_resolutions), *([info.input_size] if int8_native else [])}
        for size in sorted({*sizes, *int8_sizes}, reverse=True):
            log.info("exporting %s at %d px (%s weights)", name, size, weights)
            spec = preprocess_spec(info, size)  # the export reads only the input size from it
            fp32 = work_dir / f"{name}.{size}.{weights}.fp32.onnx"
            if not fp32.exists():  # a work_dir kept from an earlier run is reused
                export_onnx_fp32(model, spec, fp32, "{}")
            files = {"fp32": fp32} if size in sizes else {}
            if size in int8_sizes:
                int8 = work_dir / f"{name}.{size}.{weights}.int8.onnx"
                calib = np.random.default_rng(size).standard_normal((8, 3, size, size)).astype(np.float32)
                scratch = work_dir / f"q-{name}-{size}"
                scratch.mkdir(exist_ok=True)
                if not int8.exists():
                    quantize_onnx_int8(fp32, int8, calib, scratch)
                files["int8"] = int8
            for precision, path in files.items():
                jobs.extend(_Job(path, name, size, runtime, precision, weights) for runtime in runtimes)
        del model
    results: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(jobs))}
    for n in range(max(1, passes)):
        order = list(range(len(jobs)))
        if n % 2:
            order.reverse()
        log.info("timing pass %d of %d (%d model files x runtimes)", n + 1, passes, len(jobs))
        for i in order:
            results[i].append(_time_job(jobs[i], threads, seconds, work_dir))
    return [_point(job, results[i], threads) for i, job in enumerate(jobs)]


def calibrate(
    backbones: Sequence[str] | None = None,
    *,
    resolutions: Sequence[int] | None = None,
    int8_resolutions: Sequence[int] = _DEFAULT_INT8_SIZES,
    runtimes: Sequence[str] | None = None,
    threads: int | None = None,
    seconds_per_point: float = 1.0,
    passes: int = PASSES,
    out: Path | str | None = CALIBRATION_PATH,
    validation_out: Path | str | None = VALIDATION_PATH,
    work_dir: Path | str | None = None,
) -> Calibration:
    """Measure the backbones on this host, fit the cost model's factors, store them.

    Args:
        backbones: Registry names (default: all registered).
        resolutions: fp32 resolutions besides each backbone's native one
            (default 192 and 128 px).
        int8_resolutions: Resolutions measured at int8 as well, besides each backbone's native
            one (empty: no int8). An int8 graph can be much slower at a size that is not a
            multiple of 32 than the fp32 trend says (lite1 at 240 px and lite2 at 260 px
            took 1.4-2.1x their 224 px int8 time on an AVX2 host), so the native size is always measured.
        runtimes: ``onnxruntime`` and/or ``openvino`` (default: both where installed).
        threads: Intra-op threads (default: every CPU this process may use).
        seconds_per_point: Timed seconds per model file and pass (after warm-up).
        passes: Timing passes over all model files; the quietest is kept per file.
        out: Where ``calibration.json`` goes (``None``: not written).
        validation_out: Where the estimated-vs-measured table goes (``None``: not written).
        work_dir: Folder for the model files (default: a temporary one); files already
            there from an earlier run are reused, not exported again.

    Returns:
        The calibration (also written to ``out``).
    """
    from edgeclf.models import get_backbone, list_backbones

    names = list(backbones) if backbones is not None else [b.name for b in list_backbones()]
    for name in names:
        get_backbone(name)
    if runtimes is None:
        runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    unknown = sorted(set(runtimes) - {"onnxruntime", "openvino"})
    if unknown:
        raise ConfigError(f"calibration measures onnxruntime and openvino only, not {', '.join(unknown)}")
    started = time.monotonic()
    log.info("measuring the host")
    host = detect_host(threads)
    log.info(
        "host: %s, %d threads, GEMM %.0f GFLOP/s -> peak %.0f GFLOP/s, copy %.1f GB/s",
        host.cpu_model,
        host.threads,
        host.gemm_gflops,
        host.peak_fp32_gflops,
        host.memory_bandwidth_gb_per_s,
    )
    with tempfile.TemporaryDirectory(prefix="edgeclf-calibration-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        points = measure_backbones(
            names,
            resolutions,
            list(int8_resolutions),
            list(runtimes),
            host.threads,
            seconds_per_point,
            work,
            passes=passes,
            int8_native=bool(int8_resolutions),
        )
    calibration = fit_calibration(points, host)
    log.info("calibration took %.0f s", time.monotonic() - started)
    if out is not None:
        write_json(Path(out), calibration.model_dump(mode="json"))
        from edgeclf.select.costmodel import _load_calibration

        _load_calibration.cache_clear()
    if validation_out is not None:
        write_validation(validation_out, calibration)
    return calibration


@dataclass(frozen=True)
class CostModelCalibration:
    """What :func:`calibrate_cost_model` used or wrote: the calibration and its estimated-vs-measured table."""

    calibration: Calibration
    validation: ValidationReport
    calibration_path: Path
    validation_path: Path
    #: False with ``validate_only``: the stored calibration was read, nothing measured
    measured: bool


def calibrate_cost_model(
    backbones: Sequence[str] | None = None,
    *,
    resolutions: Sequence[int] | None = None,
    int8_resolutions: Sequence[int] | None = None,
    runtimes: Sequence[str] | None = None,
    threads: int | None = None,
    seconds_per_point: float = 1.0,
    passes: int | None = None,
    out: Path | str | None = None,
    validation_out: Path | str | None = None,
    work_dir: Path | str | None = None,
    validate_only: bool = False,
) -> CostModelCalibration:
    """``edgeclf profiles calibrate-costmodel``: :func:`calibrate` here (or, with ``validate_only``,
    read the stored calibration), then write its estimated-vs-measured table.

    ``out`` defaults to the calibration edgeclf reads (:data:`CALIBRATION_PATH`), ``validation_out``
    to :data:`VALIDATION_PATH`, ``int8_resolutions`` to 224 and 160 px, ``passes`` to :data:`PASSES`.

    Raises:
        ConfigError: ``validate_only`` and no calibration at ``out``; or a bad setting.
    """
    from edgeclf.select.costmodel import load_calibration

    cal_path = Path(out) if out is not None else CALIBRATION_PATH
    val_path = Path(validation_out) if validation_out is not None else VALIDATION_PATH
    if validate_only:
        calibration = load_calibration(cal_path)
        if calibration is None:
            raise ConfigError(f"no cost-model calibration at {cal_path}; run this command without --validate-only first")
    else:
        calibration = calibrate(
            backbones,
            resolutions=resolutions,
            int8_resolutions=_DEFAULT_INT8_SIZES if int8_resolutions is None else int8_resolutions,
            runtimes=runtimes,
            threads=threads,
            seconds_per_point=seconds_per_point,
            passes=PASSES if passes is None else passes,
            out=cal_path,
            validation_out=None,
            work_dir=work_dir,
        )
    report = write_validation(val_path, calibration)
    return CostModelCalibration(
        calibration=calibration,
        validation=report,
        calibration_path=cal_path,
        validation_path=val_path,
        measured=not validate_only,
    )


__all__ = [
    "PASSES",
    "WORKER",
    "CostModelCalibration",
    "calibrate",
    "calibrate_cost_model",
    "measure_backbones",
    "weights_available",
]


if __name__ == "__main__":
    sys.exit("the cost-model calibration is a command of the edgeclf CLI: run `edgeclf profiles calibrate-costmodel --help`")
