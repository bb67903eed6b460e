"""What gets timed: one runner per (runtime, artifact), built by a factory keyed by runtime name.

Built-in runtimes are the Python runners of :mod:`edgeclf.export.runners`, keyed by
the runtime each artifact names in the bundle manifest: ``onnxruntime``, ``openvino``,
``torch`` (TorchScript) and ``tensorrt``. Other runtimes plug in through
:data:`extra_runners` (or :func:`register_runner`, the ``extra_runners`` argument of
:func:`~edgeclf.bench.run_bench`, or the ``edgeclf.bench_runners`` entry-point group):
a factory takes a :class:`RunnerRequest` and returns a :class:`BenchRunner`, ``None``
when that runtime does not run this artifact's format, or raises
:class:`RunnerUnavailable` with a reason (recorded as a skipped row).

Example: the C runtime (:class:`edgeclf.runtime.Classifier`) as runtime ``cpp``::

    from edgeclf.bench import BenchInput, RunnerRequest, RunnerUnavailable, register_runner
    from edgeclf.errors import EdgeclfError

    class CppRunner:
        includes_preprocess = True  # frames in: the C++ preprocessing (from the manifest) is timed too

        def __init__(self, request: RunnerRequest) -> None:
            from edgeclf.runtime import Classifier

            a = request.artifact
            self.clf = Classifier(request.bundle_dir, backend=a.runtime, precision=a.precision,
                                  threads=request.threads or 0, verify=False)
            if self.clf.artifact != a.file:  # keep the row's label true
                raise RunnerUnavailable(f"the C runtime chose {self.clf.artifact}, not {a.file}")

        def __call__(self, batch: BenchInput) -> object:
            return self.clf.probabilities(batch.images)

        def close(self) -> None:
            self.clf.close()

    def cpp_factory(request: RunnerRequest) -> CppRunner | None:
        if request.artifact.runtime not in ("onnxruntime", "openvino"):
            return None  # not a backend of the C runtime: no row
        try:
            return CppRunner(request)
        except EdgeclfError as e:  # not built, backend missing, artifact refused
            raise RunnerUnavailable(str(e)) from None

    register_runner("cpp", cpp_factory)

For ``edgeclf bench --runtime cpp`` (a fresh process), declare the factory as an entry
point instead of calling :func:`register_runner`::

    [project.entry-points."edgeclf.bench_runners"]
    cpp = "edgeclf.bench._cpp:cpp_factory"

A runner that starts from the preprocessed tensor (``Classifier.run_tensor``) sets
``includes_preprocess = False`` and times ``batch.tensor`` instead.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from edgeclf.errors import ConfigError, EdgeclfError

if TYPE_CHECKING:  # importing edgeclf.export loads torch; `import edgeclf.bench` stays light
    from edgeclf.export.bundle import ArtifactEntry, BundleManifest

__all__ = [
    "BUILTIN_RUNTIMES",
    "ENTRY_POINT_GROUP",
    "BenchInput",
    "BenchRunner",
    "RunnerFactory",
    "RunnerRequest",
    "RunnerUnavailable",
    "extra_runners",
    "make_input",
    "normalize_runtime",
    "register_runner",
    "runner_factories",
    "unregister_runner",
]

log = logging.getLogger("edgeclf.bench")

#: Built-in runtimes: the ``runtime`` an artifact names in the manifest, and the module it needs.
BUILTIN_RUNTIMES: dict[str, str] = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "torch": "torch",
    "tensorrt": "tensorrt",
}
#: Short names accepted wherever a runtime is named.
RUNTIME_ALIASES = {"ort": "onnxruntime", "ov": "openvino", "torchscript": "torch", "trt": "tensorrt"}
#: Entry-point group an installed package can use to add runner factories (name = runtime).
ENTRY_POINT_GROUP = "edgeclf.bench_runners"


class RunnerUnavailable(EdgeclfError):
    """A runtime cannot run an artifact here (not installed, not built, no device); the row is skipped."""


@dataclass(frozen=True)
class BenchInput:
    """One batch, in the two forms a runner may take.

    ``images`` are decoded H x W x 3 uint8 RGB frames (what an application hands the C
    API); ``tensor`` is the same batch after the bundle's reference preprocessing
    (N x 3 x crop x crop float32), what a Python runner's ``run_tensor`` takes.
    """

    images: list[np.ndarray]
    tensor: np.ndarray

    @property
    def batch(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class RunnerRequest:
    """What a runner factory gets: one shipped artifact of a bundle and the run's settings."""

    bundle_dir: Path
    manifest: BundleManifest
    artifact: ArtifactEntry
    threads: int | None = None
    include_preprocess: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The artifact's main file."""
        return self.bundle_dir / self.artifact.file


@runtime_checkable
class BenchRunner(Protocol):
    """A loaded artifact, ready to be timed: ``runner(batch)`` runs one batch to completion.

    ``includes_preprocess`` says whether a call does the preprocessing (from
    ``batch.images``) or starts from the preprocessed ``batch.tensor``. A runner may
    also have ``close()``, called when its measurements are done.
    """

    includes_preprocess: bool

    def __call__(self, batch: BenchInput) -> object: ...


RunnerFactory = Callable[[RunnerRequest], "BenchRunner | None"]

#: Runner factories added to the built-in runtimes, keyed by runtime name (e.g. ``"cpp"``).
extra_runners: dict[str, RunnerFactory] = {}


def normalize_runtime(name: str) -> str:
    """A runtime name in canonical form (``ort`` -> ``onnxruntime``, ``torchscript`` -> ``torch``)."""
    key = name.strip().lower()
    return RUNTIME_ALIASES.get(key, key)


def register_runner(name: str, factory: RunnerFactory, *, replace: bool = False) -> None:
    """Add a runtime to every later :func:`~edgeclf.bench.run_bench` and ``edgeclf bench`` in this process.

    Raises:
        ConfigError: ``name`` is a built-in runtime, or is registered already and ``replace`` is false.
    """
    key = normalize_runtime(name)
    if not key or key in BUILTIN_RUNTIMES:
        raise ConfigError(
            f"cannot register a bench runner as {name!r}: built-in runtimes are "
            f"{', '.join(BUILTIN_RUNTIMES)}; pick another name (e.g. 'cpp')"
        )
    if key in extra_runners and not replace:
        raise ConfigError(f"a bench runner named {key!r} is registered already (pass replace=True to swap it)")
    if not callable(factory):
        raise ConfigError(f"bench runner factory for {key!r} is not callable")
    extra_runners[key] = factory


def unregister_runner(name: str) -> None:
    """Remove a runtime added with :func:`register_runner` (no-op when absent)."""
    extra_runners.pop(normalize_runtime(name), None)


class _PythonRunner:
    """A runner of :mod:`edgeclf.export.runners` as a :class:`BenchRunner`."""

    def __init__(self, runner: Any, include_preprocess: bool) -> None:
        self.runner = runner
        self.includes_preprocess = include_preprocess

    def __call__(self, batch: BenchInput) -> object:
        if self.includes_preprocess:
            return self.runner(batch.images)
        return self.runner.run_tensor(batch.tensor)


def _builtin_factory(runtime: str) -> RunnerFactory:
    def factory(request: RunnerRequest) -> BenchRunner | None:
        from edgeclf.export.runners import load_runner

        a = request.artifact
        if a.runtime != runtime:
            return None
        if importlib.util.find_spec(BUILTIN_RUNTIMES[runtime]) is None:
            raise RunnerUnavailable(f"{BUILTIN_RUNTIMES[runtime]} is not installed")
        entry = a.to_artifact()
        try:
            runner = load_runner(
                request.bundle_dir,
                entry,
                request.manifest.spec(),
                request.manifest.labels,
                threads=request.threads if runtime != "tensorrt" else None,
            )
        except ConfigError as e:
            raise RunnerUnavailable(str(e)) from None
        return _PythonRunner(runner, request.include_preprocess)

    factory.__name__ = f"{runtime}_factory"
    return factory


def _entry_point_runners() -> dict[str, RunnerFactory]:
    found: dict[str, RunnerFactory] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[normalize_runtime(ep.name)] = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not stop the built-in runtimes
            log.warning("bench runner %r from entry point %s could not be loaded: %s", ep.name, ep.value, e)
    return found


def runner_factories(extra: Mapping[str, RunnerFactory] | None = None) -> dict[str, RunnerFactory]:
    """Every runtime a bench can time: built-in, entry points, :data:`extra_runners`, then ``extra``.

    Raises:
        ConfigError: ``extra`` names a built-in runtime.
    """
    out: dict[str, RunnerFactory] = {name: _builtin_factory(name) for name in BUILTIN_RUNTIMES}
    added = {**_entry_point_runners(), **extra_runners, **{normalize_runtime(k): v for k, v in (extra or {}).items()}}
    for name, factory in added.items():
        if name in BUILTIN_RUNTIMES:
            raise ConfigError(f"bench runner {name!r} would replace a built-in runtime; pick another name")
        out[name] = factory
    return out


def make_input(manifest: BundleManifest, batch: int, image_size: tuple[int, int], seed: int = 0) -> BenchInput:
    """A batch of random frames (``image_size`` = height, width) and their preprocessed tensor."""
    from edgeclf.preprocess import preprocess

    rng = np.random.default_rng(seed)
    h, w = image_size
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(batch)]
    spec = manifest.spec()
    tensor = np.ascontiguousarray(np.stack([preprocess(im, spec) for im in images]), dtype=np.float32)
    return BenchInput(images=images, tensor=tensor)
