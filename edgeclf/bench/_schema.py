"""The bench result document (``edgeclf bench --json`` / ``--out``) and the profile budget verdict.

The document is canonical JSON with ``kind: "edgeclf.bench"`` and a semver
``schema_version``. Readers accept the same major version; a new field is a minor
bump, a renamed or removed one a major bump.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeclf._io import write_json
from edgeclf.bench._stats import Latency
from edgeclf.bench._system import Environment, RssMethod
from edgeclf.errors import EdgeclfError

__all__ = [
    "KIND",
    "SCHEMA_VERSION",
    "BenchError",
    "BenchReport",
    "BenchResult",
    "BenchSettings",
    "BudgetVerdict",
    "BundleInfo",
    "ProfileInfo",
    "SkippedRow",
    "budget_verdict",
    "read_report",
    "write_report",
]

KIND = "edgeclf.bench"
SCHEMA_VERSION = "1.0.0"

Verdict = Literal["fits", "over", "not_checked"]

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


class BenchError(EdgeclfError):
    """A bench result file cannot be read, or a bench cannot run as asked."""


class _Model(BaseModel):
    # Unknown fields are ignored, not errors: a reader of 1.x reads a later 1.y (which may add fields).
    model_config = ConfigDict(extra="ignore")


class BundleInfo(_Model):
    """The bundle that was measured."""

    path: str
    name: str
    target_profile: str | None = None
    labels: int = Field(description="Number of classes.")
    input_size: int = Field(description="Model input (crop) size in pixels.")


class ProfileInfo(_Model):
    """The hardware profile the verdicts are against (the fields they need)."""

    name: str
    device: str
    cpu_model: str
    arch: str
    threads: int | None = Field(description="Intra-op threads the profile's cost model assumes.")
    latency_ms_p95: float = Field(description="Budget: 95th-percentile latency at batch 1.")
    memory_mb: float = Field(description="Budget: peak resident memory of the inference process.")
    runtimes: dict[str, list[str]] = Field(description="Runtime -> precisions the device runs.")

    @classmethod
    def from_profile(cls, profile: Any) -> ProfileInfo:
        """From a :class:`~edgeclf.profiles.HardwareProfile`."""
        runtimes: dict[str, list[str]] = {}
        for rt in profile.runtimes:
            have = runtimes.setdefault(rt.runtime, [])
            have.extend(p for p in rt.precisions if p not in have)
        return cls(
            name=profile.name,
            device=profile.device,
            cpu_model=profile.cpu.model,
            arch=profile.cpu.arch,
            threads=profile.compute.threads,
            latency_ms_p95=profile.budgets.latency_ms_p95,
            memory_mb=profile.budgets.memory_mb,
            runtimes=runtimes,
        )

    def notes(self, env: Environment, threads: int | None) -> list[str]:
        """What a reader must know before trusting a verdict measured in ``env``."""
        notes = [
            f"budget verdicts compare p95 at batch 1 with {self.name}'s budget of {self.latency_ms_p95:g} ms; "
            f"they only mean something when measured on the target device ({self.device}). "
            f"This run: {env.cpu_model} ({env.machine}, {env.cpu_count} CPUs)."
        ]
        machine = _ARCH_ALIASES.get(env.machine.lower(), env.machine.lower())
        if machine != self.arch:
            notes.append(
                f"this machine is {machine} but {self.name} is {self.arch}: it is not the target device, "
                "so the verdicts say nothing about the device"
            )
        if threads and threads > env.cpu_count:
            notes.append(f"{threads} threads on {env.cpu_count} CPUs here: oversubscribed, latencies are inflated")
        if self.threads and (threads or 0) < self.threads:
            notes.append(
                f"{self.name} assumes {self.threads} intra-op threads; this run used "
                f"{threads or 'the runtime default'} ({env.cpu_count} CPUs here)"
            )
        return notes


class BudgetVerdict(_Model):
    """One row against the profile's latency budget."""

    profile: str
    budget_ms_p95: float
    verdict: Verdict
    reason: str


def budget_verdict(profile: ProfileInfo, engine: str, precision: str, batch: int, p95_ms: float) -> BudgetVerdict:
    """``fits`` when ``p95_ms`` <= the budget, ``over`` when above; ``not_checked`` for rows the budget
    does not describe: batch sizes other than 1, and runtime/precision pairs the profile does not list.

    ``engine`` is the runtime the artifact was exported for (``onnxruntime``, ``openvino``, ...).
    """
    budget = profile.latency_ms_p95

    def v(verdict: Verdict, reason: str) -> BudgetVerdict:
        return BudgetVerdict(profile=profile.name, budget_ms_p95=budget, verdict=verdict, reason=reason)

    if batch != 1:
        return v("not_checked", f"batch {batch}: the budget is for batch 1")
    if precision not in profile.runtimes.get(engine, []):
        listed = ", ".join(f"{r}/{p}" for r, ps in profile.runtimes.items() for p in ps)
        return v("not_checked", f"{engine}/{precision} is not a runtime of {profile.name} ({listed})")
    if p95_ms <= budget:
        return v("fits", f"p95 {p95_ms:.2f} ms <= {budget:g} ms")
    return v("over", f"p95 {p95_ms:.2f} ms > {budget:g} ms")


class BenchSettings(_Model):
    """How the measurements were taken."""

    batches: list[int]
    rounds: int
    warmup: int
    threads: int | None = Field(description="Intra-op threads asked of each runtime (None: its default).")
    include_preprocess: bool
    image_size: tuple[int, int] = Field(description="Height, width of the input frames.")
    runtimes: list[str] | None = Field(description="Runtimes asked for (None: all available).")
    precisions: list[str] | None = None


class BenchResult(_Model):
    """One (runtime, artifact, batch) measurement."""

    runtime: str = Field(description="What ran it: onnxruntime, openvino, torch, tensorrt, or an extra runner (cpp).")
    engine: str = Field(description="The runtime the artifact was exported for (the manifest's).")
    format: str
    precision: str
    artifact: str = Field(description="The artifact's file in the bundle.")
    batch: int
    warmup: int
    threads: int | None
    includes_preprocess: bool = Field(description="Calls started from decoded frames (True) or the preprocessed tensor.")
    load_ms: float = Field(description="Time to load the artifact (first batch size's row; later rows repeat it).")
    latency: Latency
    per_image_ms_p50: float
    images_per_s: float
    peak_rss_mb: float = Field(description="Peak resident memory of the process, MiB (see rss_method).")
    rss_delta_mb: float | None = Field(description="Peak minus the RSS before the artifact was loaded, MiB.")
    rss_method: RssMethod
    samples_ms: list[float] = Field(description="Every timed call, ms, in order.")
    budget: BudgetVerdict | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.runtime, self.format, self.precision, self.batch)

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.format}/{self.precision} b{self.batch}"

    def extra_info(self, environment: Environment, profile: str | None, bundle: str | None) -> dict[str, Any]:
        """The flat record a pytest-benchmark ``extra_info`` carries (and :func:`~edgeclf.bench.compare` reads)."""
        lat = self.latency
        info: dict[str, Any] = {
            "schema": f"{KIND}.extra_info/{SCHEMA_VERSION}",
            "bundle": bundle,
            "profile": profile,
            "runtime": self.runtime,
            "engine": self.engine,
            "format": self.format,
            "precision": self.precision,
            "artifact": self.artifact,
            "batch": self.batch,
            "threads": self.threads,
            "rounds": lat.rounds,
            "warmup": self.warmup,
            "includes_preprocess": self.includes_preprocess,
            "p50_ms": lat.p50_ms,
            "p90_ms": lat.p90_ms,
            "p95_ms": lat.p95_ms,
            "p99_ms": lat.p99_ms,
            "mean_ms": lat.mean_ms,
            "images_per_s": self.images_per_s,
            "load_ms": self.load_ms,
            "peak_rss_mb": self.peak_rss_mb,
            "rss_delta_mb": self.rss_delta_mb,
            "rss_method": self.rss_method,
            "cpu_model": environment.cpu_model,
            "machine": environment.machine,
            "versions": dict(environment.versions),
        }
        if self.budget is not None:
            info.update(budget_ms_p95=self.budget.budget_ms_p95, budget_verdict=self.budget.verdict)
        return info


class SkippedRow(_Model):
    """An artifact a runtime could not measure here, and why."""

    runtime: str
    format: str
    precision: str
    reason: str


class BenchReport(_Model):
    """A whole ``edgeclf bench`` run."""

    kind: Literal["edgeclf.bench"] = KIND
    schema_version: str = SCHEMA_VERSION
    created: str = Field(description="UTC, ISO 8601.")
    bundle: BundleInfo
    settings: BenchSettings
    environment: Environment
    profile: ProfileInfo | None = None
    notes: list[str] = []
    results: list[BenchResult] = []
    skipped: list[SkippedRow] = []

    def over_budget(self) -> list[BenchResult]:
        """Rows whose p95 exceeds the profile's budget."""
        return [r for r in self.results if r.budget is not None and r.budget.verdict == "over"]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def write_report(path: str | Path, report: BenchReport) -> Path:
    """Write ``report`` as canonical JSON (atomically)."""
    write_json(path, report.to_json_dict())
    return Path(path)


def _major(version: str) -> int | None:
    try:
        return int(version.split(".")[0])
    except (ValueError, AttributeError):
        return None


def load_json(path: str | Path) -> Any:
    """A JSON file's content, or a :class:`BenchError` a user can act on."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise BenchError(f"{p} is a directory; pass a bench result JSON file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"{p} is not a readable JSON file ({e})") from None


def parse_report(doc: Any, source: str = "<document>") -> BenchReport:
    """Validate a bench document (see :func:`read_report`)."""
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise BenchError(f'{source} is not an edgeclf bench result (no "kind": "{KIND}")')
    version = str(doc.get("schema_version", ""))
    if _major(version) != _major(SCHEMA_VERSION):
        raise BenchError(
            f"{source}: bench schema_version {version!r} is not supported (this edgeclf reads {SCHEMA_VERSION.split('.')[0]}.x)"
        )
    try:
        return BenchReport.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise BenchError(f"{source}: {where}: {first['msg']}") from None


def read_report(path: str | Path) -> BenchReport:
    """Load a bench result written by :func:`write_report` or ``edgeclf bench --out``.

    Raises:
        BenchError: Missing, not JSON, not a bench result, another major schema version, or invalid.
    """
    return parse_report(load_json(path), str(path))
