"""Latency of every shipped artifact of a bundle, batch 1 and 8, and int8 vs fp32 per runtime.

Run: pytest benchmarks/test_bench_latency.py --benchmark-only --bundle BUNDLE [--profile NAME] -s
All artifacts are timed in the same session on the same random input, so the
int8/fp32 ratios are comparable; the statistics table gives median and IQR, and
extra_info carries p50/p90/p99.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from benchmarks.conftest import versions

WARMUP = 5
ROUNDS = 40
RESULTS: dict[tuple[str, str, int], float] = {}


def _artifacts(bundle_dir):
    from edgeclf.export.bundle import read_bundle

    m = read_bundle(bundle_dir)
    return m, [a for a in m.artifacts if a.status == "ok"]


def _runner(bundle_dir, m, a):
    from edgeclf.export.runners import load_runner

    return load_runner(bundle_dir, {"format": a.format, "precision": a.precision, "file": a.file,
                                    "extra_files": [e.file for e in a.extra_files], "runtime": a.runtime, "status": "ok",
                                    "error": None, "export_seconds": 0.0, "details": a.details}, m.spec(), m.labels)


KEYS = [(f, p) for f in ("onnx", "openvino", "torchscript") for p in ("fp32", "fp16", "int8")]


@pytest.mark.parametrize(("fmt", "precision"), KEYS)
@pytest.mark.parametrize("batch", [1, 8])
def test_latency(benchmark, request, bundle_dir, fmt, precision, batch) -> None:
    m, arts = _artifacts(bundle_dir)
    a = next((x for x in arts if (x.format, x.precision) == (fmt, precision)), None)
    if a is None:
        pytest.skip(f"{fmt}/{precision} not shipped in this bundle")
    runner = _runner(bundle_dir, m, a)
    x = np.random.default_rng(0).normal(0, 1, (batch, 3, m.spec().crop_size, m.spec().crop_size)).astype(np.float32)
    for _ in range(WARMUP):
        runner.run_tensor(x)
    times: list[float] = []

    def once():
        t = time.perf_counter()
        runner.run_tensor(x)
        times.append(time.perf_counter() - t)

    benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=0)
    ms = np.array(times) * 1000
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    RESULTS[(fmt, precision, batch)] = p50
    size_mb = (bundle_dir / a.file).stat().st_size / 1e6 + sum((bundle_dir / e.file).stat().st_size for e in a.extra_files) / 1e6
    benchmark.extra_info.update(versions())
    benchmark.extra_info.update(runtime=a.runtime, format=fmt, precision=precision, batch=batch, p50_ms=round(p50, 3),
                                p90_ms=round(p90, 3), p99_ms=round(p99, 3), images_per_s=round(1000 * batch / p50, 1),
                                size_mb=round(size_mb, 2), profile=request.config.getoption("--profile"))
    f32 = RESULTS.get((fmt, "fp32", batch))
    if precision != "fp32" and f32:
        benchmark.extra_info[f"{precision}_over_fp32_p50"] = round(p50 / f32, 3)
        print(f"\n{fmt} b{batch}: {precision}/fp32 p50 ratio {p50 / f32:.3f}")
    print(f"\n{fmt}/{precision} b{batch}: p50 {p50:.2f} ms, p90 {p90:.2f}, p99 {p99:.2f}, {1000 * batch / p50:.1f} img/s, {size_mb:.2f} MB")


