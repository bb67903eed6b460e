"""Shared benchmark fixtures, the library versions every result carries, and the latency budget check.

``pytest benchmarks --benchmark-disable`` runs every benchmark once as a plain test (a
quick check that the suites work); benchmarks marked ``heavy`` (minutes per round) are
skipped then, and the latency benchmarks skip without ``--bundle``.

Latency options (see test_bench_latency.py):

    --bundle DIR          bundle to measure (latency benchmarks skip without one)
    --profile NAME|YAML   hardware profile: recorded with every result; rows get a budget verdict
    --budget-check        fail the run when a batch-1 p95 exceeds the profile's budget
                          (a verdict about the machine the run is on: use it on the target device)
    --bench-runtime LIST  only these runtimes (onnxruntime, openvino, torch, tensorrt, or a registered one)
    --bench-batch LIST    batch sizes (default 1,8)
    --bench-rounds N      timed rounds per row; --bench-warmup N untimed calls first
    --bench-threads N     intra-op threads (default: the profile's, else the runtime's)
    --serve-requests N    test_bench_serve.py: requests per configuration; --serve-seconds S caps its time
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"

# Rounds and warm-up: the same defaults as `edgeclf bench`.
ROUNDS = 50
WARMUP = 5


def versions() -> dict[str, str]:
    """Library versions and the CPU model, flat (what every suite's extra_info carries)."""
    from edgeclf.bench import cpu_model, library_versions

    return {**library_versions(), "cpu": platform.machine(), "cpu_model": cpu_model()}


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{name} not available at ../shared/datasets")
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgeclf latency", "edgeclf latency benchmarks")
    group.addoption("--bundle", default=None, help="bundle directory to benchmark (from `edgeclf export`)")
    group.addoption(
        "--profile",
        default=None,
        help="hardware profile (name or YAML path): recorded with the results; rows get a budget verdict",
    )
    group.addoption(
        "--budget-check",
        action="store_true",
        default=False,
        help="fail the run when a measured batch-1 p95 exceeds the --profile budget (only meaningful on the target device)",
    )
    group.addoption("--bench-runtime", default=None, help="comma list of runtimes to measure (default: all here)")
    group.addoption("--bench-batch", default="1,8", help="comma list of batch sizes (default 1,8)")
    group.addoption("--bench-rounds", type=int, default=ROUNDS, help=f"timed rounds per row (default {ROUNDS})")
    group.addoption("--bench-warmup", type=int, default=WARMUP, help=f"untimed calls before them (default {WARMUP})")
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="intra-op threads (default: the profile's compute.threads, else the runtime's)",
    )
    serve = parser.getgroup("edgeclf serve load", "edgeclf serve load benchmark (test_bench_serve.py)")
    serve.addoption("--serve-requests", type=int, default=2000, help="requests per configuration (default 2000)")
    serve.addoption("--serve-seconds", type=float, default=120.0, help="stop a configuration after this long (default 120)")


@dataclass
class LatencySuite:
    """What the latency benchmarks share in one session: the bundle, profile, inputs, results."""

    bundle_dir: Path | None
    manifest: Any = None
    profile: Any = None  # edgeclf.bench.ProfileInfo
    env: Any = None  # edgeclf.bench.Environment
    threads: int | None = None
    batches: list[int] = field(default_factory=list)
    rounds: int = ROUNDS
    warmup: int = WARMUP
    measuring: bool = True  # False under --benchmark-disable (one call per test, no statistics)
    results: list[Any] = field(default_factory=list)  # edgeclf.bench.BenchResult
    p50: dict[tuple[str, str, str, int], float] = field(default_factory=dict)
    _inputs: dict[int, Any] = field(default_factory=dict)
    _open: Any = None  # the edgeclf.bench.Measurement currently loaded

    def input(self, batch: int) -> Any:
        from edgeclf.bench import DEFAULT_IMAGE_SIZE, make_input

        if batch not in self._inputs:
            self._inputs[batch] = make_input(self.manifest, batch, DEFAULT_IMAGE_SIZE, seed=batch)
        return self._inputs[batch]

    def open(self, measurement: Any) -> Any:
        """Load ``measurement``'s artifact (closing the previous one); skip when its runtime cannot run it."""
        from edgeclf.bench import RunnerUnavailable

        if self._open is measurement:
            return measurement
        self.close()
        try:
            runner = measurement.open()
        except RunnerUnavailable as e:
            pytest.skip(f"{measurement.runtime} cannot run {measurement.artifact.file} here: {e}")
        if runner is None:
            pytest.skip(f"{measurement.runtime} does not run {measurement.artifact.format} artifacts")
        self._open = measurement
        return measurement

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


_SUITE = pytest.StashKey[LatencySuite]()
_CASES = pytest.StashKey[list]()


def _usage(message: str) -> pytest.UsageError:
    return pytest.UsageError(message)


def pytest_configure(config: pytest.Config) -> None:
    """Validate the latency options early: a bad bundle or profile is a usage error, not N failures."""
    from edgeclf.errors import EdgeclfError

    config.addinivalue_line("markers", "heavy: one round takes minutes; skipped under --benchmark-disable")

    bundle = config.getoption("--bundle", None)
    profile = config.getoption("--profile", None)
    disabled = bool(config.getoption("benchmark_disable", False))
    if config.getoption("--budget-check", False):
        if not profile:
            raise _usage("--budget-check needs --profile NAME (the budget to check against)")
        if disabled:
            raise _usage("--budget-check needs measured latencies; drop --benchmark-disable (and use --benchmark-only)")
    suite = LatencySuite(bundle_dir=Path(bundle) if bundle else None, measuring=not disabled)
    try:
        from edgeclf.bench import environment, parse_batches, plan, resolve_profile, resolve_threads

        suite.batches = parse_batches(config.getoption("--bench-batch", "1,8"))
        suite.rounds = int(config.getoption("--bench-rounds", ROUNDS))
        suite.warmup = int(config.getoption("--bench-warmup", WARMUP))
        if suite.rounds < 1 or suite.warmup < 0:
            raise _usage("--bench-rounds must be >= 1 and --bench-warmup >= 0")
        suite.profile = resolve_profile(profile) if profile else None
        suite.env = environment()
        suite.threads = resolve_threads(config.getoption("--bench-threads", None), suite.profile, suite.env)
        cases: list = []
        if suite.bundle_dir is not None:
            from edgeclf.export.bundle import read_bundle

            suite.manifest = read_bundle(suite.bundle_dir, verify=True)
            runtimes = config.getoption("--bench-runtime", None)
            todo, _ = plan(suite.bundle_dir, suite.manifest, runtimes.split(",") if runtimes else None, threads=suite.threads)
            cases = [(m, b) for m in todo for b in suite.batches]
    except EdgeclfError as e:
        raise _usage(str(e)) from None
    config.stash[_SUITE] = suite
    config.stash[_CASES] = cases


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --benchmark-disable (a quick check that every suite runs), skip the benchmarks marked heavy."""
    if not config.getoption("benchmark_disable", False):
        return
    skip = pytest.mark.skip(reason="heavy: one round takes minutes; run it with --benchmark-only")
    for item in items:
        if item.get_closest_marker("heavy"):
            item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``latency_case``: one (runtime, artifact, batch) per test, in load order (each artifact loaded once)."""
    if "latency_case" not in metafunc.fixturenames:
        return
    cases = metafunc.config.stash.get(_CASES, [])
    if not cases:
        metafunc.parametrize("latency_case", [None], ids=["no-bundle"])
        return
    ids = [f"{m.runtime}-{m.artifact.format}-{m.artifact.precision}-b{b}" for m, b in cases]
    metafunc.parametrize("latency_case", cases, ids=ids)


@pytest.fixture(scope="session")
def latency_suite(request: pytest.FixtureRequest) -> Any:
    suite = request.config.stash[_SUITE]
    yield suite
    suite.close()


@pytest.fixture(scope="session")
def bundle_dir(request: pytest.FixtureRequest) -> Path:
    b = request.config.getoption("--bundle")
    if not b:
        pytest.skip("no --bundle given (pytest benchmarks --benchmark-only --bundle BUNDLE_DIR)")
    return Path(b)


def _checked(suite: LatencySuite) -> list[Any]:
    return [r for r in suite.results if r.budget is not None and r.budget.verdict != "not_checked"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``--budget-check`` with no batch-1 row of a runtime the profile lists fails: nothing was checked."""
    suite = session.config.stash.get(_SUITE, None)
    if suite is None or not session.config.getoption("--budget-check", False):
        return
    if not _checked(suite) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    suite = config.stash.get(_SUITE, None)
    if suite is None or suite.profile is None or not suite.results or not suite.measuring:
        return
    tr = terminalreporter
    prof = suite.profile
    tr.write_sep("=", f"latency budget: {prof.name}, p95 <= {prof.latency_ms_p95:g} ms at batch 1")
    for r in suite.results:
        if r.budget is None or r.budget.verdict == "not_checked":
            continue
        tr.write_line(
            f"{r.budget.verdict.upper():5} {r.label}: {r.budget.reason}",
            red=r.budget.verdict == "over",
            green=r.budget.verdict == "fits",
        )
    for note in prof.notes(suite.env, suite.threads):
        tr.write_line(f"note: {note}", yellow=True)
    if config.getoption("--budget-check", False):
        checked = _checked(suite)
        over = [r for r in checked if r.budget.verdict == "over"]
        if not checked:
            tr.write_line(
                f"BUDGET CHECK FAILED: no batch-1 row of a runtime/precision that {prof.name} lists "
                "was measured; nothing was checked",
                red=True,
                bold=True,
            )
        elif over:
            tr.write_line(f"BUDGET CHECK FAILED: {len(over)} of {len(checked)} rows over budget", red=True, bold=True)
        else:
            tr.write_line(f"budget check passed: {len(checked)} checked row(s) within budget", green=True, bold=True)
