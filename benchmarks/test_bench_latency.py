"""Latency of every shipped artifact of a bundle, per runtime and precision, single image and batch.

Run: pytest benchmarks/test_bench_latency.py --benchmark-only --bundle BUNDLE [--profile NAME] [-s]
     ... --benchmark-json results.json, then `edgeclf bench --compare results.json other.json`
     ... --profile NAME --budget-check on the target device: fail when a batch-1 p95 is over budget

Each (runtime, artifact) is loaded once and timed at every batch size (``--bench-batch``)
with :mod:`edgeclf.bench`, the same measurement as ``edgeclf bench``: warm-up calls, then
timed rounds on the same seeded input for every runtime, so the int8/fp32 ratios in a
session are comparable. pytest-benchmark's table gives median and IQR; ``extra_info``
carries p50/p90/p95/p99, throughput, peak RSS, profile, runtime, precision, library
versions and the CPU model (see :meth:`edgeclf.bench.BenchResult.extra_info`).
"""

from __future__ import annotations

import time

import pytest


def test_latency(benchmark, request, latency_suite, latency_case) -> None:
    if latency_case is None:
        pytest.skip("no --bundle given (pytest benchmarks --benchmark-only --bundle BUNDLE_DIR)")
    measurement, batch = latency_case
    suite = latency_suite
    m = suite.open(measurement)
    runner = m.runner
    x = suite.input(batch)
    for _ in range(suite.warmup):
        runner(x)
    seconds: list[float] = []

    def once() -> None:
        t0 = time.perf_counter_ns()
        runner(x)
        seconds.append((time.perf_counter_ns() - t0) / 1e9)

    benchmark.pedantic(once, rounds=suite.rounds, warmup_rounds=0, iterations=1)
    result = m.result(x, seconds, suite.warmup, suite.profile)
    suite.results.append(result)
    info = result.extra_info(
        suite.env, suite.profile.name if suite.profile else request.config.getoption("--profile"), suite.manifest.name
    )
    size_mb = (suite.bundle_dir / m.artifact.file).stat().st_size + sum(e.size_bytes for e in m.artifact.extra_files)
    info["size_mb"] = round(size_mb / 1e6, 2)
    fp32 = suite.p50.get((result.runtime, result.format, "fp32", batch))
    if result.precision != "fp32" and fp32:
        info[f"{result.precision}_over_fp32_p50"] = round(result.latency.p50_ms / fp32, 3)
    suite.p50[(result.runtime, result.format, result.precision, batch)] = result.latency.p50_ms
    benchmark.extra_info.update(info)
    lat = result.latency
    print(
        f"\n{result.label}: p50 {lat.p50_ms:.2f} ms, p90 {lat.p90_ms:.2f}, p95 {lat.p95_ms:.2f}, p99 {lat.p99_ms:.2f}, "
        f"{result.images_per_s:.1f} img/s, peak RSS {result.peak_rss_mb:.0f} MB, {info['size_mb']:.2f} MB"
        + (
            f", {result.precision}/fp32 p50 {info[f'{result.precision}_over_fp32_p50']:.3f}"
            if f"{result.precision}_over_fp32_p50" in info
            else ""
        )
    )
    if request.config.getoption("--budget-check") and result.budget is not None and result.budget.verdict == "over":
        pytest.fail(
            f"over the {result.budget.profile} latency budget: {result.label} {result.budget.reason} "
            "(a verdict about this machine; it holds for the device only when run there)",
            pytrace=False,
        )
