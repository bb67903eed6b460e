"""Timing a bundle's artifacts: warm-up, timed rounds per batch size, memory, budget verdicts.

For every runtime that can run a shipped artifact, the artifact is loaded once, then
for each batch size: ``warmup`` untimed calls, then ``rounds`` calls each timed with
``time.perf_counter_ns`` (the garbage collector paused during the timed calls, as
:mod:`timeit` does). Every runtime gets the same seeded random frames. A call starts
from the preprocessed tensor unless ``include_preprocess`` (then a Python runner also
runs the reference preprocessing on the frames; a runner of another runtime says
itself which it does).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeclf.bench._runners import (
    BUILTIN_RUNTIMES,
    BenchInput,
    BenchRunner,
    RunnerFactory,
    RunnerRequest,
    RunnerUnavailable,
    make_input,
    normalize_runtime,
    runner_factories,
)
from edgeclf.bench._schema import (
    BenchReport,
    BenchResult,
    BenchSettings,
    BundleInfo,
    ProfileInfo,
    SkippedRow,
    budget_verdict,
)
from edgeclf.bench._stats import Latency
from edgeclf.bench._system import Environment, MemoryProbe, environment
from edgeclf.errors import ConfigError

if TYPE_CHECKING:
    from edgeclf.export.bundle import ArtifactEntry, BundleManifest

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_ROUNDS",
    "DEFAULT_WARMUP",
    "Measurement",
    "parse_batches",
    "plan",
    "resolve_profile",
    "resolve_threads",
    "run_bench",
    "time_calls",
]

log = logging.getLogger("edgeclf.bench")

DEFAULT_BATCHES = (1, 8)
DEFAULT_ROUNDS = 50
DEFAULT_WARMUP = 5
#: Frames handed to runners that preprocess (height, width): a VGA camera frame.
DEFAULT_IMAGE_SIZE = (480, 640)
MAX_BATCH = 1024

#: ``progress(label, done, total)``: called before each (runtime, artifact) and once at the end.
ProgressFn = Callable[[str, int, int], None]


def parse_batches(text: str | Sequence[int]) -> list[int]:
    """``"1,8"`` (or a list) to sorted distinct batch sizes.

    Raises:
        ConfigError: Empty, not integers, or outside 1..MAX_BATCH.
    """
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        sizes = sorted({int(p) for p in parts if p != ""})
    except (TypeError, ValueError):
        raise ConfigError(f"batch sizes must be integers separated by commas, e.g. 1,8; got {text!r}") from None
    if not sizes:
        raise ConfigError("give at least one batch size, e.g. --batch 1,8")
    bad = [b for b in sizes if not 1 <= b <= MAX_BATCH]
    if bad:
        raise ConfigError(f"batch sizes must be within 1..{MAX_BATCH}; got {', '.join(map(str, bad))}")
    return sizes


def time_calls(fn: Callable[[], object], rounds: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``rounds`` timed calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e9)
    finally:
        if was_enabled:
            gc.enable()
    return times


class Measurement:
    """One loaded runner measured at several batch sizes (what a benchmark suite uses row by row).

    Use as a context manager: entering loads the artifact (memory probe started first),
    leaving closes it. ``measure(batch)`` returns the :class:`BenchResult`.
    """

    def __init__(self, runtime: str, factory: RunnerFactory, request: RunnerRequest) -> None:
        self.runtime = runtime
        self.factory = factory
        self.request = request
        self.runner: BenchRunner | None = None
        self.load_ms = 0.0
        self.probe = MemoryProbe()

    @property
    def artifact(self) -> ArtifactEntry:
        return self.request.artifact

    def open(self) -> BenchRunner | None:
        """Load the artifact; ``None`` when this runtime does not run its format.

        Raises:
            RunnerUnavailable: The runtime cannot run it here.
        """
        gc.collect()
        self.probe.start()
        t0 = time.perf_counter()
        self.runner = self.factory(self.request)
        self.load_ms = round((time.perf_counter() - t0) * 1000, 3)
        return self.runner

    def close(self) -> None:
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()
        self.runner = None  # the next open() collects it before taking its memory baseline

    def __enter__(self) -> Measurement:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def result(self, batch: BenchInput, seconds: Sequence[float], warmup: int, profile: ProfileInfo | None = None) -> BenchResult:
        """A result row from per-call durations (seconds) timed elsewhere (e.g. by pytest-benchmark)."""
        if self.runner is None:
            raise ConfigError(f"{self.runtime} {self.artifact.file}: measure after open()")
        lat = Latency.from_seconds(seconds)
        a = self.artifact
        res = BenchResult(
            runtime=self.runtime,
            engine=a.runtime,
            format=a.format,
            precision=a.precision,
            artifact=a.file,
            batch=batch.batch,
            warmup=warmup,
            threads=self.request.threads,
            includes_preprocess=bool(getattr(self.runner, "includes_preprocess", False)),
            load_ms=self.load_ms,
            latency=lat,
            per_image_ms_p50=round(lat.p50_ms / batch.batch, 4),
            images_per_s=lat.images_per_s(batch.batch),
            peak_rss_mb=round(self.probe.peak_mb(), 1),
            rss_delta_mb=None if (d := self.probe.delta_mb()) is None else round(d, 1),
            rss_method=self.probe.method,
            samples_ms=[round(s * 1000, 4) for s in seconds],
        )
        if profile is not None:
            res.budget = budget_verdict(profile, a.runtime, a.precision, batch.batch, lat.p95_ms)
        return res

    def measure(self, batch: BenchInput, rounds: int, warmup: int, profile: ProfileInfo | None = None) -> BenchResult:
        """Time ``rounds`` calls on ``batch`` after ``warmup`` untimed ones."""
        runner = self.runner
        if runner is None:
            raise ConfigError(f"{self.runtime} {self.artifact.file}: measure after open()")
        return self.result(batch, time_calls(lambda: runner(batch), rounds, warmup), warmup, profile)


def resolve_profile(profile: Any) -> ProfileInfo | None:
    """A profile name, YAML path, :class:`~edgeclf.profiles.HardwareProfile` or :class:`ProfileInfo` as the latter.

    Raises:
        ProfileError: The profile cannot be loaded.
    """
    if profile is None or isinstance(profile, ProfileInfo):
        return profile
    if isinstance(profile, (str, Path)):
        from edgeclf.profiles import load_profile

        profile = load_profile(profile)
    return ProfileInfo.from_profile(profile)


def resolve_threads(threads: int | None, profile: ProfileInfo | None, env: Environment) -> int | None:
    """``threads`` if given; else the profile's ``compute.threads``, at most the CPUs here (more threads
    than CPUs would only measure oversubscription); else ``None`` (each runtime's default)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        return threads
    if profile is not None and profile.threads is not None:
        return min(profile.threads, env.cpu_count)
    return None


def plan(
    bundle_dir: Path,
    manifest: BundleManifest,
    runtimes: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    threads: int | None = None,
    include_preprocess: bool = False,
    extra_runners: Mapping[str, RunnerFactory] | None = None,
) -> tuple[list[Measurement], list[SkippedRow]]:
    """The (runtime, artifact) pairs to measure, unopened, and the runtimes asked for that have nothing to run.

    Built-in runtimes get the artifacts exported for them; every extra runtime is
    offered every shipped artifact (its factory returns ``None`` for formats it does
    not run).

    Raises:
        ConfigError: An unknown runtime, or no shipped artifact at the precisions asked for.
    """
    factories = runner_factories(extra_runners)
    if runtimes:
        wanted = list(dict.fromkeys(normalize_runtime(r) for r in runtimes))
        unknown = [r for r in wanted if r not in factories]
        if unknown:
            raise ConfigError(
                f"unknown runtime {', '.join(unknown)}; available: {', '.join(factories)}"
                " (others can be added with edgeclf.bench.register_runner)"
            )
    else:
        wanted = list(factories)
    shipped = [a for a in manifest.artifacts if a.status == "ok"]
    if precisions:
        keep = {p.strip().lower() for p in precisions}
        shipped = [a for a in shipped if a.precision in keep]
        if not shipped:
            have = ", ".join(sorted({a.precision for a in manifest.artifacts})) or "none"
            raise ConfigError(f"no artifact at precision {', '.join(sorted(keep))} in {bundle_dir} (it has: {have})")
    todo: list[Measurement] = []
    skipped: list[SkippedRow] = []
    for rt in wanted:
        arts = [a for a in shipped if a.runtime == rt] if rt in BUILTIN_RUNTIMES else shipped
        if not arts and runtimes:
            skipped.append(
                SkippedRow(
                    runtime=rt,
                    format="-",
                    precision="-",
                    reason=f"the bundle has no {rt} artifact" + (" at these precisions" if precisions else ""),
                )
            )
        for a in arts:
            req = RunnerRequest(
                bundle_dir=bundle_dir, manifest=manifest, artifact=a, threads=threads, include_preprocess=include_preprocess
            )
            todo.append(Measurement(rt, factories[rt], req))
    return todo, skipped


def run_bench(
    bundle: str | Path,
    *,
    batches: Sequence[int] | str | None = DEFAULT_BATCHES,
    rounds: int | None = DEFAULT_ROUNDS,
    warmup: int | None = DEFAULT_WARMUP,
    runtimes: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    threads: int | None = None,
    profile: Any = None,
    include_preprocess: bool = False,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    extra_runners: Mapping[str, RunnerFactory] | None = None,
    progress: ProgressFn | None = None,
) -> BenchReport:
    """Measure every shipped artifact of ``bundle`` on every runtime here that can run it.

    Args:
        bundle: Bundle directory (hashes are verified first).
        batches: Batch sizes (``"1,8"`` or a list); ``None``: :data:`DEFAULT_BATCHES`.
        rounds: Timed calls per (runtime, artifact, batch); ``None``: :data:`DEFAULT_ROUNDS`.
        warmup: Untimed calls before them; ``None``: :data:`DEFAULT_WARMUP`.
        runtimes: Only these (``onnxruntime``, ``openvino``, ``torch``, ``tensorrt``, or an extra runner's
            name); default: all.
        precisions: Only artifacts at these precisions; default: all.
        threads: Intra-op threads for each runtime; default: the profile's ``compute.threads`` (at most
            the CPUs here) when a profile is given, else the runtime's own default.
        profile: A hardware profile (name, YAML path or loaded) whose p95 budget each batch-1 row is marked
            against. The verdict only means something when this runs on that device.
        include_preprocess: Time the reference preprocessing of decoded frames as well.
        image_size: Height, width of the frames (what preprocessing starts from).
        extra_runners: Runtimes for this call only (name -> factory), on top of :data:`extra_runners`.
        progress: ``progress(label, done, total)`` callback.

    Raises:
        ConfigError: A bad setting, an unknown runtime, or nothing to measure.
        BundleError: The bundle is missing, damaged or tampered with.
        ProfileError: The profile cannot be loaded.
    """
    sizes = parse_batches(DEFAULT_BATCHES if batches is None else batches)
    rounds = DEFAULT_ROUNDS if rounds is None else rounds
    warmup = DEFAULT_WARMUP if warmup is None else warmup
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    if warmup < 0:
        raise ConfigError(f"warmup must be 0 or more, got {warmup}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(f"image_size is (height, width) in pixels, got {image_size}")
    from edgeclf.export.bundle import read_bundle

    bundle_dir = Path(bundle)
    manifest = read_bundle(bundle_dir, verify=True)
    prof = resolve_profile(profile)
    env: Environment = environment()
    threads = resolve_threads(threads, prof, env)
    todo, skipped = plan(bundle_dir, manifest, runtimes, precisions, threads, include_preprocess, extra_runners)
    inputs = {b: make_input(manifest, b, (int(image_size[0]), int(image_size[1])), seed=b) for b in sizes}
    results: list[BenchResult] = []
    for i, m in enumerate(todo):
        a = m.artifact
        if progress:
            progress(f"{m.runtime} {a.format}/{a.precision}", i, len(todo))
        try:
            if m.open() is None:
                continue
            for b in sizes:
                results.append(m.measure(inputs[b], rounds, warmup, prof))
        except RunnerUnavailable as e:
            skipped.append(SkippedRow(runtime=m.runtime, format=a.format, precision=a.precision, reason=str(e)))
        except Exception as e:  # noqa: BLE001 - one runtime failing must not lose the others' figures
            log.warning("%s %s/%s failed: %s", m.runtime, a.format, a.precision, e, exc_info=True)
            skipped.append(
                SkippedRow(runtime=m.runtime, format=a.format, precision=a.precision, reason=f"failed: {type(e).__name__}: {e}")
            )
        finally:
            m.close()
    if progress:
        progress("done", len(todo), len(todo))
    if not results and not skipped:
        raise ConfigError(f"nothing to measure in {bundle_dir}: no runtime here runs its artifacts")
    spec = manifest.spec()
    return BenchReport(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        bundle=BundleInfo(
            path=str(bundle_dir),
            name=manifest.name,
            target_profile=manifest.target_profile,
            labels=len(manifest.labels),
            input_size=spec.crop_size,
        ),
        settings=BenchSettings(
            batches=sizes,
            rounds=rounds,
            warmup=warmup,
            threads=threads,
            include_preprocess=include_preprocess,
            image_size=(int(image_size[0]), int(image_size[1])),
            runtimes=[normalize_runtime(r) for r in runtimes] if runtimes else None,
            precisions=list(precisions) if precisions else None,
        ),
        environment=env,
        profile=prof,
        notes=prof.notes(env, threads) if prof is not None else [],
        results=results,
        skipped=skipped,
    )
