"""The chain: every stage in order, each run through the stage cache, which skips a stage whose
inputs' key and outputs are unchanged and redoes it (and what depends on it) otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from edgeclf._io import canonical_json, sha256_file, write_json
from edgeclf.build.host import host_profile, resolve_data
from edgeclf.build.options import BuildError, BuildOptions, Log
from edgeclf.build.package import DEVICE_README, EXAMPLE_CMAKE, PREBUILT_USE, _runtime_files, _stage_package
from edgeclf.build.report import _stage_report
from edgeclf.build.results import (
    AuditResult,
    BenchmarkResult,
    BuildResults,
    BuildRun,
    EvaluateResult,
    ExportStageResult,
    PackageResult,
    ReportResult,
    SelectResult,
    SplitResult,
    StageResult,
    StageRun,
    TrainResult,
)
from edgeclf.build.stages import (
    _select_at,
    _stage_audit,
    _stage_benchmark,
    _stage_evaluate,
    _stage_export,
    _stage_select,
    _stage_split,
    _stage_train,
)
from edgeclf.errors import EdgeclfError

STAGES = ("audit", "split", "select", "train", "evaluate", "export", "benchmark", "package", "report")

R = TypeVar("R", bound=StageResult)


@dataclass
class StageRecord:
    name: str
    status: str  # "done" | "cached"
    seconds: float
    result: StageResult


def _key(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _file_key(path: Path | None) -> str | None:
    return sha256_file(path) if path is not None and Path(path).is_file() else None


def data_listing_key(root: Path) -> str:
    """A cheap fingerprint of a folder's files (relative path, size, mtime): changes when the data does."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


class Stages:
    """Runs named stages, skipping those whose recorded key matches, whose outputs exist and whose
    recorded result is a valid ``result_type`` (one that is not, an older layout or an edited
    file, is stale like a changed key: the stage runs again)."""

    def __init__(self, out: Path, log: Log, on_stage: Callable[[str, str], None] | None = None) -> None:
        self.dir = Path(out) / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.on_stage = on_stage or (lambda name, state: None)
        self.records: list[StageRecord] = []

    def run(self, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], R], result_type: type[R]) -> R:
        key = _key(inputs)
        rec_path = self.dir / f"{name}.json"
        if rec_path.is_file():
            try:
                rec = json.loads(rec_path.read_text(encoding="utf-8"))
            except ValueError:
                rec = {}
            if not isinstance(rec, dict):
                rec = {}
            if rec.get("key") == key and all(Path(p).exists() for p in outputs):
                try:
                    cached = result_type.model_validate(rec.get("result"))
                except ValidationError as e:
                    first = e.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "result"
                    self.log(
                        f"{name}: the recorded result in {rec_path} is not this version's layout "
                        f"({where}: {first['msg']}); running the stage again"
                    )
                else:
                    self.on_stage(name, "cached")
                    self.records.append(StageRecord(name, "cached", 0.0, cached))
                    return cached
            rec_path.unlink()  # stale: redo it
        self.on_stage(name, "running")
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        write_json(
            rec_path,
            {
                "stage": name,
                "key": key,
                "inputs": inputs,
                "result": result.model_dump(mode="json"),
                "seconds": round(seconds, 2),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        self.on_stage(name, "done")
        self.records.append(StageRecord(name, "done", seconds, result))
        return result


def build(
    opts: BuildOptions,
    log: Log | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> BuildRun:
    """Run (or resume) every stage; returns each stage's result and how it ran."""
    from edgeclf.profiles import load_profile

    log = log or (lambda s: None)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.profile == "auto":
        opts.profile = host_profile()
        log(f"profile auto: this host is a {opts.profile}")
    profile = load_profile(opts.profile)  # fail early on a bad name or file
    # opts.profile stays what loads it (a name, or the path of a profile file) for the stages
    data_dir = resolve_data(opts.data_dir, out, log)
    opts.data_dir = data_dir
    stages = Stages(out, log, on_stage)
    data_key = data_listing_key(data_dir)
    try:
        audit = stages.run("audit", {"data": data_key}, [out / "audit"], lambda: _stage_audit(data_dir, out), AuditResult)
        split = stages.run(
            "split",
            {"data": data_key, "seed": opts.seed},
            [out / "splits.csv"],
            lambda: _stage_split(data_dir, out, opts.seed),
            SplitResult,
        )
        from edgeclf.select import CostModel

        cal = CostModel().for_profile(profile).calibration  # the one this profile is estimated with
        sel = stages.run(
            "select",
            {
                "profile": profile.to_json_dict(),
                "budget_ms": opts.budget_ms,
                "backbones": opts.backbones,
                "measure": bool(opts.measure),
                "calibration": cal.model_dump(mode="json") if cal is not None else None,
                "data_size": audit.median_short_side,
            },
            [out / "selection.json"],
            lambda: _stage_select(opts, out, log, audit.median_short_side),
            SelectResult,
        )
        train_key = {
            "split": split.fingerprint,
            "backbone": sel.backbone,
            "resolution": opts.image_size or sel.resolution,
            "config": _file_key(opts.config),
            "epochs": opts.epochs,
            "batch_size": opts.batch_size,
            "seed": opts.seed,
            "extra": opts.extra_train,
            "time_budget_s": opts.time_budget_s,
            "max_resolution": sel.max_resolution,
            "recipe_version": 2,
        }
        if opts.image_size:
            sel = sel.model_copy(
                update={
                    "resolution": opts.image_size,
                    "justification": sel.justification + f" Trained at {opts.image_size} px (--image-size).",
                }
            )
        selected = sel
        train = stages.run(
            "train",
            train_key,
            [out / "run" / "checkpoints" / "best.pt"],
            lambda: _stage_train(opts, out, selected, log, progress),
            TrainResult,
        )
        best = out / "run" / "checkpoints" / "best.pt"
        if sha256_file(best) != train.checkpoint_sha256:  # a cached stage's output is data too
            raise BuildError(
                f"train: {best} does not match the SHA-256 recorded when it was trained "
                f"({train.checkpoint_sha256[:12]}...): the file is damaged; restore it or delete "
                f"{out / 'stages' / 'train.json'} to train again"
            )
        trained_at = train.image_size or sel.resolution
        trained = train.backbone or sel.backbone
        if (trained, trained_at) != (sel.backbone, sel.resolution):
            sel = _select_at(out, sel, int(trained_at), trained)
        ck = train.checkpoint_sha256
        decision_key = opts.decision.key() if opts.decision is not None else None
        evaluate = stages.run(
            "evaluate",
            {"checkpoint": ck, "robustness": opts.robustness, "decision": decision_key},
            [out / "run" / "report" / "index.html"],
            lambda: _stage_evaluate(opts, out, log, progress),
            EvaluateResult,
        )
        export = stages.run(
            "export",
            {"checkpoint": ck, "profile": profile.name, "calibration_images": opts.calibration_images, "decision": decision_key},
            [out / "bundle" / "edgeclf.json"],
            lambda: _stage_export(opts, out, log),
            ExportStageResult,
        )
        bundle_key = _file_key(out / "bundle" / "edgeclf.json")
        final_sel = sel
        benchmark = stages.run(
            "benchmark",
            {
                "bundle": bundle_key,
                "measure": opts.measure,
                "budget_ms": opts.budget_ms,
                "selected": [sel.runtime, sel.precision],
                "host": platform.node() if opts.measure is not False else None,
            },
            [],
            lambda: _stage_benchmark(opts, out, final_sel, log),
            BenchmarkResult,
        )
        # the package's own layout (README, example, its decoder) is part of its key: an upgrade re-packages
        layout = _key(
            [DEVICE_README, PREBUILT_USE, EXAMPLE_CMAKE, _file_key(_runtime_files() / "cpp-src" / "examples" / "classify.c")]
        )
        package = stages.run(
            "package",
            {
                "bundle": bundle_key,
                "benchmark": benchmark.model_dump(mode="json"),
                "version": _runtime_version(),
                "layout": layout,
            },
            [out / f"{out.name}-{profile.name}.tar.gz"],
            lambda: _stage_package(opts, out, final_sel, evaluate, benchmark),
            PackageResult,
        )
        results = BuildResults(
            audit=audit,
            split=split,
            select=sel,
            train=train,
            evaluate=evaluate,
            export=export,
            benchmark=benchmark,
            package=package,
        )
        results.report = stages.run(
            "report",
            {"all": _key(results.model_dump(mode="json"))},
            [out / "report.md"],
            lambda: _stage_report(opts, out, results),
            ReportResult,
        )
    except EdgeclfError as e:
        done = {rec.name for rec in stages.records}
        stage = next((s for s in STAGES if s not in done), "build")
        raise BuildError(f"{stage}: {e}") from e
    return BuildRun(
        out=str(out),
        stages=[StageRun(stage=s.name, status=s.status, seconds=round(s.seconds, 1)) for s in stages.records],
        results=results,
    )


def _runtime_version() -> str:
    try:
        from edgeclf import _runtime

        return str(_runtime.version())
    except ImportError:
        return "none"
