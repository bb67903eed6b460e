"""Latency measurement of a bundle's artifacts, used by ``edgeclf bench`` and by ``benchmarks/``.

::

    from edgeclf.bench import run_bench, write_report, compare

    report = run_bench("bundle/", batches=[1, 8], rounds=50, profile="raspberry-pi-5")
    for r in report.results:
        print(r.label, r.latency.p95_ms, r.budget.verdict if r.budget else "")
    write_report("pi5.json", report)
    table = compare(["pi5.json", "laptop.json", "pytest-benchmark.json"])

Per runtime and precision it reports single-image and batch latency (p50/p90/p95/p99,
mean, min, max), throughput, load time and peak resident memory, with the CPU model
and library versions. A budget verdict (p95 at batch 1 against a hardware profile)
only means something when the bench ran on that device. Other runtimes (the C++
runtime) plug in through :data:`extra_runners` / :func:`register_runner`.
"""

from edgeclf.bench._compare import CompareRow, CompareSource, Comparison, compare, load_rows, write_comparison
from edgeclf.bench._measure import (
    DEFAULT_BATCHES,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP,
    Measurement,
    parse_batches,
    plan,
    resolve_profile,
    resolve_threads,
    run_bench,
    time_calls,
)
from edgeclf.bench._runners import (
    BUILTIN_RUNTIMES,
    ENTRY_POINT_GROUP,
    BenchInput,
    BenchRunner,
    RunnerFactory,
    RunnerRequest,
    RunnerUnavailable,
    extra_runners,
    make_input,
    normalize_runtime,
    register_runner,
    runner_factories,
    unregister_runner,
)
from edgeclf.bench._schema import (
    KIND,
    SCHEMA_VERSION,
    BenchError,
    BenchReport,
    BenchResult,
    BenchSettings,
    BudgetVerdict,
    BundleInfo,
    ProfileInfo,
    SkippedRow,
    budget_verdict,
    parse_report,
    read_report,
    write_report,
)
from edgeclf.bench._stats import Latency, percentile
from edgeclf.bench._system import Environment, MemoryProbe, cpu_model, environment, library_versions

__all__ = [
    "BUILTIN_RUNTIMES",
    "DEFAULT_BATCHES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_ROUNDS",
    "DEFAULT_WARMUP",
    "ENTRY_POINT_GROUP",
    "KIND",
    "SCHEMA_VERSION",
    "BenchError",
    "BenchInput",
    "BenchReport",
    "BenchResult",
    "BenchRunner",
    "BenchSettings",
    "BudgetVerdict",
    "BundleInfo",
    "CompareRow",
    "CompareSource",
    "Comparison",
    "Environment",
    "Latency",
    "Measurement",
    "MemoryProbe",
    "ProfileInfo",
    "RunnerFactory",
    "RunnerRequest",
    "RunnerUnavailable",
    "SkippedRow",
    "budget_verdict",
    "compare",
    "cpu_model",
    "environment",
    "extra_runners",
    "library_versions",
    "load_rows",
    "make_input",
    "normalize_runtime",
    "parse_batches",
    "parse_report",
    "percentile",
    "plan",
    "read_report",
    "register_runner",
    "resolve_profile",
    "resolve_threads",
    "run_bench",
    "runner_factories",
    "time_calls",
    "unregister_runner",
    "write_comparison",
    "write_report",
]
