"""One table from several bench results: ``edgeclf bench --out`` files and pytest-benchmark JSON.

A pytest-benchmark file (``pytest benchmarks --benchmark-only --benchmark-json F``)
contributes the benchmarks whose ``extra_info`` names a runtime and precision (the
latency suite's, see :meth:`~edgeclf.bench.BenchResult.extra_info`); others (data,
training throughput) are counted as ignored. Rows with the same runtime, format,
precision, batch size and preprocessing mode line up, and each gets its p50 as a ratio
to the first file that has that row. Ratios between files compare the machines and
runs as well as the artifacts: they are only fair between runs on the same machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from edgeclf.bench._schema import KIND, SCHEMA_VERSION, BenchError, load_json, parse_report

__all__ = ["CompareRow", "CompareSource", "Comparison", "compare", "load_rows", "write_comparison"]

SourceKind = Literal["edgeclf.bench", "pytest-benchmark"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CompareSource(_Model):
    """One input file."""

    label: str
    path: str
    kind: SourceKind
    created: str | None = None
    bundle: str | None = None
    profile: str | None = None
    cpu_models: list[str] = []
    rows: int = 0
    ignored: int = 0


class CompareRow(_Model):
    """One measurement from one file."""

    source: str
    bundle: str | None = None
    profile: str | None = None
    runtime: str
    format: str
    precision: str
    batch: int
    includes_preprocess: bool | None = None
    threads: int | None = None
    p50_ms: float
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    images_per_s: float | None = None
    peak_rss_mb: float | None = None
    verdict: str | None = None
    cpu_model: str | None = None
    p50_ratio: float | None = None
    baseline: str | None = None

    @property
    def key(self) -> tuple[str, str, str, int, bool | None]:
        return (self.runtime, self.format, self.precision, self.batch, self.includes_preprocess)


class Comparison(_Model):
    """The table ``edgeclf bench --compare`` prints (and its ``--json`` document)."""

    kind: Literal["edgeclf.bench.compare"] = "edgeclf.bench.compare"
    schema_version: str = SCHEMA_VERSION
    sources: list[CompareSource]
    rows: list[CompareRow]
    notes: list[str] = []

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _from_report(doc: dict[str, Any], path: Path, label: str) -> tuple[CompareSource, list[CompareRow]]:
    rep = parse_report(doc, str(path))
    profile = rep.profile.name if rep.profile else None
    rows = [
        CompareRow(
            source=label,
            bundle=rep.bundle.name,
            profile=profile,
            runtime=r.runtime,
            format=r.format,
            precision=r.precision,
            batch=r.batch,
            includes_preprocess=r.includes_preprocess,
            threads=r.threads,
            p50_ms=r.latency.p50_ms,
            p90_ms=r.latency.p90_ms,
            p95_ms=r.latency.p95_ms,
            p99_ms=r.latency.p99_ms,
            images_per_s=r.images_per_s,
            peak_rss_mb=r.peak_rss_mb,
            verdict=r.budget.verdict if r.budget else None,
            cpu_model=rep.environment.cpu_model,
        )
        for r in rep.results
    ]
    src = CompareSource(
        label=label,
        path=str(path),
        kind="edgeclf.bench",
        created=rep.created,
        bundle=rep.bundle.name,
        profile=profile,
        cpu_models=[rep.environment.cpu_model],
        rows=len(rows),
    )
    return src, rows


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _from_pytest_benchmark(doc: dict[str, Any], path: Path, label: str) -> tuple[CompareSource, list[CompareRow]]:
    machine_cpu = ((doc.get("machine_info") or {}).get("cpu") or {}).get("brand_raw")
    rows: list[CompareRow] = []
    ignored = 0
    for b in doc.get("benchmarks") or []:
        ei = (b.get("extra_info") or {}) if isinstance(b, dict) else {}
        stats = (b.get("stats") or {}) if isinstance(b, dict) else {}
        p50 = _num(ei.get("p50_ms"))
        if p50 is None and _num(stats.get("median")) is not None:
            p50 = float(stats["median"]) * 1000
        if not ei.get("runtime") or not ei.get("precision") or p50 is None:
            ignored += 1
            continue
        batch = int(ei.get("batch") or 1)
        ips = _num(ei.get("images_per_s"))
        if ips is None and _num(stats.get("mean")):
            ips = round(batch / float(stats["mean"]), 2)
        rows.append(
            CompareRow(
                source=label,
                bundle=ei.get("bundle"),
                profile=ei.get("profile"),
                runtime=str(ei["runtime"]),
                format=str(ei.get("format") or "-"),
                precision=str(ei["precision"]),
                batch=batch,
                includes_preprocess=ei.get("includes_preprocess"),
                threads=ei.get("threads"),
                p50_ms=round(p50, 4),
                p90_ms=_num(ei.get("p90_ms")),
                p95_ms=_num(ei.get("p95_ms")),
                p99_ms=_num(ei.get("p99_ms")),
                images_per_s=ips,
                peak_rss_mb=_num(ei.get("peak_rss_mb")),
                verdict=ei.get("budget_verdict"),
                cpu_model=ei.get("cpu_model") or machine_cpu,
            )
        )
    cpus = sorted({r.cpu_model for r in rows if r.cpu_model} or ({machine_cpu} if machine_cpu else set()))
    bundles = sorted({r.bundle for r in rows if r.bundle})
    profiles = sorted({r.profile for r in rows if r.profile})
    src = CompareSource(
        label=label,
        path=str(path),
        kind="pytest-benchmark",
        created=doc.get("datetime"),
        bundle=", ".join(bundles) or None,
        profile=", ".join(profiles) or None,
        cpu_models=cpus,
        rows=len(rows),
        ignored=ignored,
    )
    return src, rows


def load_rows(path: str | Path, label: str | None = None) -> tuple[CompareSource, list[CompareRow]]:
    """The rows of one result file (edgeclf bench JSON or pytest-benchmark JSON).

    Raises:
        BenchError: Unreadable, or neither kind of result.
    """
    p = Path(path)
    doc = load_json(p)
    label = label or p.name
    if isinstance(doc, dict) and doc.get("kind") == KIND:
        return _from_report(doc, p, label)
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        return _from_pytest_benchmark(doc, p, label)
    raise BenchError(
        f"{p} is neither an edgeclf bench result (edgeclf bench --out) nor a pytest-benchmark "
        "JSON file (pytest benchmarks --benchmark-only --benchmark-json FILE)"
    )


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    labels = [str(Path(p.parent.name) / p.name) if names.count(p.name) > 1 else p.name for p in paths]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def compare(paths: Sequence[str | Path]) -> Comparison:
    """Line up the rows of several result files (see the module docstring).

    Raises:
        BenchError: No files, or a file that cannot be read as a result.
    """
    if not paths:
        raise BenchError("give at least one bench result file to compare")
    ps = [Path(p) for p in paths]
    sources: list[CompareSource] = []
    all_rows: list[CompareRow] = []
    for p, label in zip(ps, _labels(ps), strict=False):
        src, rows = load_rows(p, label)
        sources.append(src)
        all_rows.extend(rows)
    order: dict[tuple[Any, ...], list[CompareRow]] = {}
    for r in all_rows:
        order.setdefault(r.key, []).append(r)
    rows: list[CompareRow] = []
    for group in order.values():
        base = group[0]
        for r in group:
            r.baseline = base.source
            r.p50_ratio = round(r.p50_ms / base.p50_ms, 3) if base.p50_ms > 0 else None
            rows.append(r)
    notes = ["p50 ratio: each row's p50 over the first file's with the same runtime, format, precision, batch and preprocessing"]
    cpus = sorted({c for s in sources for c in s.cpu_models})
    if len(cpus) > 1:
        notes.append(
            f"the files were measured on different CPUs ({'; '.join(cpus)}): ratios between them compare "
            "the machines as well as the artifacts"
        )
    for s in sources:
        if s.rows == 0:
            notes.append(f"{s.label}: no latency rows" + (f" ({s.ignored} other benchmarks ignored)" if s.ignored else ""))
        elif s.ignored:
            notes.append(f"{s.label}: {s.ignored} benchmarks without runtime/precision ignored")
    return Comparison(sources=sources, rows=rows, notes=notes)


def write_comparison(path: str | Path, comparison: Comparison) -> Path:
    """Write ``comparison`` as canonical JSON (atomically), as ``write_report`` writes a result."""
    from edgeclf._io import write_json

    write_json(path, comparison.to_json_dict())
    return Path(path)
