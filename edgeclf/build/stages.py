"""The build's stages up to the benchmark: audit, split, select, train, evaluate, export, benchmark.

Each ``_stage_*`` function does one stage's work under ``OUT`` and returns the result the
chain (edgeclf.build.chain) records; a stage's finished directory is moved into place whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf._io import sha256_file
from edgeclf.build.host import host_is_target
from edgeclf.build.options import BuildError, BuildOptions, Log
from edgeclf.build.results import (
    AuditResult,
    BenchmarkResult,
    BenchmarkRow,
    DecisionResult,
    DecisionSummary,
    EvaluateResult,
    ExportStageResult,
    ParityLine,
    SelectResult,
    SplitResult,
    SplitScores,
    TrainResult,
)
from edgeclf.errors import EdgeclfError


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an older one is removed only after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _stage_audit(data_dir: Path, out: Path) -> AuditResult:
    from edgeclf.data._index import index_dataset
    from edgeclf.data.audit import audit_index

    index = index_dataset(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".audit.", dir=out))
    report = audit_index(index, tmp)
    _replace_dir(tmp, out / "audit")
    d = report.model_dump(mode="json")
    sizes = report.sizes
    return AuditResult(
        num_images=d["num_images"],
        num_classes=len(d["classes"]),
        imbalance_ratio=d["imbalance_ratio"],
        median_short_side=None if sizes is None else int(min(sizes.width_median, sizes.height_median)),
        audit="audit/audit.json",
    )


def _stage_split(data_dir: Path, out: Path, seed: int) -> SplitResult:
    from edgeclf.data._index import index_dataset
    from edgeclf.data.split import SplitConfig, run_split

    index = index_dataset(data_dir)
    summary = run_split(index, out / "splits.csv", SplitConfig(seed=seed))
    return SplitResult(fingerprint=summary.fingerprint, counts=summary.counts, manifest="splits.csv")


def _weights_here(name: str) -> bool:
    from edgeclf.models import get_backbone, package_weights_installed

    return package_weights_installed(get_backbone(name))


# Runtimes a selection can time on this host (the calibration's measuring worker).
_MEASURABLE = {"onnxruntime/CPU", "openvino/CPU"}
_MAX_MEASURED = 4


def _measure_candidate(c: Any, out: Path, log: Log) -> list[Any]:
    """Time one candidate here (batch 1) and return it as selection measurements."""
    from edgeclf.bench.calibrate import measure_backbones
    from edgeclf.select import Measurement, load_calibration

    cal = load_calibration()
    threads = cal.host.threads if cal is not None else max(1, os.cpu_count() or 1)
    work = out / "stages" / "select-measure"
    work.mkdir(parents=True, exist_ok=True)
    runtime = c.runtime.split("/")[0]
    log(f"select: measuring {c.describe()} on this host")
    points = measure_backbones(
        [c.backbone],
        [c.resolution],
        [c.resolution] if c.precision == "int8" else [],
        [runtime],
        threads,
        seconds=3.0,
        work_dir=work,
        passes=1,
    )
    out_rows = []
    for p in points:
        if p.runtime != runtime or p.resolution != c.resolution:
            continue
        precisions = [p.precision]
        if runtime == "openvino" and p.precision == "fp32":
            # OpenVINO's CPU plugin runs an fp16 model in fp32 (the runtime's f32 hint):
            # the fp32 timing is the fp16 artifact's timing on a CPU.
            precisions.append("fp16")
        out_rows += [
            Measurement(
                backbone=p.backbone,
                resolution=p.resolution,
                precision=q,
                runtime=c.runtime,
                latency_ms_p95=p.p95_ms,
                file_mb=p.file_mib if q == p.precision else None,
            )
            for q in precisions
        ]
    if not any(m.precision == c.precision for m in out_rows):
        raise BuildError(f"select: measuring {c.describe()} gave no timing")
    return out_rows


def _stage_select(opts: BuildOptions, out: Path, log: Log | None = None, data_size: int | None = None) -> SelectResult:
    """The selection's choice; ``data_size`` (the audit's median short side) is priced too, so
    training knows whether the budget allows the images' own resolution."""
    from edgeclf.profiles import load_profile
    from edgeclf.select import select_backbone
    from edgeclf.select.document import SelectionDocument, SelectionRow, write_selection

    log = log or (lambda s: None)
    measured: list[Any] = []
    rounds = 0
    measure = bool(opts.measure)
    if measure:
        measure, why = host_is_target(load_profile(opts.profile))
        if not measure:
            log(f"select: estimating, not measuring: {why}")
    while True:
        res = select_backbone(
            opts.profile, latency_ms=opts.budget_ms, candidates=opts.backbones, measured=measured, data_size=data_size
        )
        fitting = sorted((c for c in res.candidates if c.fits), key=lambda c: (-(c.accuracy or 0.0), c.latency_ms_p95))
        usable = [c for c in fitting if _weights_here(c.backbone)]
        # --measure: the choice's latency is timed here instead of estimated; a choice
        # that misses the budget once measured drops out and the next one is timed.
        top = usable[0] if usable else None
        if (
            not measure
            or top is None
            or top.latency_source == "measured"
            or top.runtime not in _MEASURABLE
            or rounds >= _MAX_MEASURED
        ):
            break
        measured += _measure_candidate(top, out, log)
        rounds += 1
    if not usable:
        raise BuildError(
            "select: no candidate that fits the budgets has pretrained weights available here "
            f"(fitting: {', '.join(c.describe() for c in fitting[:5]) or 'none'}); "
            "install its weight package or widen the budget with --budget-ms"
        )
    choice = usable[0]
    note = ""
    if fitting and fitting[0] is not choice:
        note = (
            f"{fitting[0].describe()} would be the first choice, but its pretrained weights are not available "
            "offline here; the next best with weights was taken"
        )
    doc = SelectionDocument(
        profile=res.profile,
        budgets=res.budgets,
        choice=choice,
        justification=res.justification
        if choice is res.choice
        else f"{choice.describe()}: the most accurate fitting candidate with weights here. {note}",
        note=note,
        accuracy_rule=res.accuracy_rule,
        candidates=[SelectionRow(**c.model_dump(), weights_here=_weights_here(c.backbone)) for c in res.candidates],
        table=res.table(),
    )
    write_selection(out, doc)
    same = [
        c
        for c in res.candidates
        if c.fits and c.backbone == choice.backbone and c.runtime == choice.runtime and c.precision == choice.precision
    ]
    return SelectResult(
        backbone=choice.backbone,
        resolution=choice.resolution,
        runtime=choice.runtime,
        max_resolution=max([c.resolution for c in same] + [choice.resolution]),
        precision=choice.precision,
        latency_ms_p95_estimate=choice.latency_ms_p95,
        latency_source=choice.latency_source,
        memory_mb=choice.memory_mb,
        file_mb=choice.file_mb,
        accuracy=choice.accuracy,
        justification=doc.justification,
        selection="selection.json",
    )


def _stage_train(
    opts: BuildOptions, out: Path, sel: SelectResult, log: Log, progress: Callable[[str, int, int], None] | None
) -> TrainResult:
    from edgeclf.train import load_config, train
    from edgeclf.train.record import read_metrics, read_run_config

    run_dir = out / "run"
    overrides: dict[str, Any] = {
        "data.manifest": out / "splits.csv",
        "model.backbone": sel.backbone,
        "model.image_size": opts.image_size,
        "seed": opts.seed,
        "finetune.epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "data.workers": opts.workers,
        **opts.extra_train,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # a run that never reached its first checkpoint
    if resume:
        log("train: resuming the interrupted run")
    # The input size is the training data's choice (edgeclf.train.recipe) within what the
    # selected configuration's latency budget allows: the largest fitting resolution.
    cfg = load_config(opts.config, overrides)
    max_size = sel.max_resolution or sel.resolution
    if opts.time_budget_s:
        from edgeclf.select.document import read_selection, write_selection
        from edgeclf.train.search import search

        # the recipe and the backbone, among the selection's fitting ones with weights here
        doc = read_selection(out)
        others = [b for b in doc.fitting_backbones_with_weights() if b != sel.backbone]
        log(f"train: searching the recipe for {opts.time_budget_s:.0f} s over {', '.join([sel.backbone, *others])}")
        table = search(cfg, run_dir, opts.time_budget_s, backbones=[sel.backbone, *others], log=log, max_image_size=max_size)
        write_selection(out, doc.model_copy(update={"search": table}))
    else:
        train(cfg, run_dir, resume=resume, log=log, progress=progress, max_image_size=max_size)
    m = read_metrics(run_dir)
    trained = read_run_config(run_dir).config
    return TrainResult(
        run="run",
        checkpoint_sha256=sha256_file(run_dir / "checkpoints" / "best.pt"),
        backbone=trained.model.backbone,
        search=bool(opts.time_budget_s),
        val_macro_f1=m.finetuned.macro_f1,
        val_accuracy=m.finetuned.accuracy,
        best_epoch=m.finetuned.epoch,
        candidate=m.finetuned.candidate,
        image_size=trained.model.image_size,
        baselines=m.baseline_macro_f1(),
        candidates=m.candidate_macro_f1(),
        selection=m.selection.model_dump(mode="json") if m.selection else None,
        quality_gates={k: g.model_dump(mode="json") for k, g in m.quality_gates.items()},
        recipe=m.recipe_choices(),
    )


def _select_at(out: Path, sel: SelectResult, resolution: int, backbone: str) -> SelectResult:
    """The selection's figures for the backbone and resolution training chose (the data's resolution
    rule or the recipe search, within the budget's fitting configurations)."""
    from edgeclf.select.document import read_selection

    rows = [c.model_dump(mode="json") for c in read_selection(out).rows_at(backbone, resolution)]
    why = (
        f" Trained {backbone} at {resolution} px: "
        + ("the recipe search's choice" if backbone != sel.backbone else "the data's resolution rule")
        + ", within the latency budget."
    )
    same = [c for c in rows if (c["runtime"], c["precision"]) == (sel.runtime, sel.precision)]
    pick = (same or sorted([c for c in rows if c["fits"]], key=lambda c: c["latency_ms_p95"]) or rows or [None])[0]
    doc = sel.model_dump() | {"backbone": backbone, "resolution": resolution, "justification": sel.justification + why}
    if pick is not None:
        doc |= {
            "runtime": pick["runtime"],
            "precision": pick["precision"],
            "latency_ms_p95_estimate": pick["latency_ms_p95"],
            "latency_source": pick["latency_source"],
            "memory_mb": pick["memory_mb"],
            "file_mb": pick["file_mb"],
            "accuracy": pick.get("accuracy"),
        }
    return SelectResult.model_validate(doc)


def _stage_evaluate(
    opts: BuildOptions, out: Path, log: Log, progress: Callable[[str, int, int], None] | None = None
) -> EvaluateResult:
    from edgeclf.evaluate.decision import DecisionRequest
    from edgeclf.evaluate.record import read_split_evaluation
    from edgeclf.evaluate.run import Evaluation

    run_dir = out / "run"
    ev = Evaluation(run_dir, log, progress)  # one model load for the policy fit, validation and test
    # the decision policy is fitted on validation before the test split is touched (argmax when none is asked)
    policy_doc = ev.fit_decision(opts.decision or DecisionRequest())
    val = ev.evaluate("val", robustness=opts.robustness, explain=False)
    test = read_split_evaluation(run_dir, "test")
    if test is not None:  # touched once already (an interrupted build): read, never re-evaluate
        if test.policy_document() != policy_doc["policy"] and opts.decision is not None:
            log(
                "the test split was evaluated before this decision policy was fitted; its test figures are not "
                "reported (the test split is touched once; evaluate it again with --allow-test-reuse, marked as reused)"
            )
    else:
        test = ev.evaluate("test", robustness=False, explain=False)
    pick = ("accuracy", "balanced_accuracy", "macro_f1")
    decision = None
    if opts.decision is not None:
        decision = DecisionResult(
            describe=(val.decision or {}).get("describe"),
            **{
                s: _decision_summary(m.decision or {})
                for s, m in (("val", val), ("test", test))
                if m.policy_document() == policy_doc["policy"]
            },
        )
    return EvaluateResult(
        val=SplitScores(**{k: getattr(val, k) for k in pick}),
        test=SplitScores(**{k: getattr(test, k) for k in pick}),
        val_ci=val.ci,
        test_ci=test.ci,
        temperature=val.calibration.temperature,
        report="run/report/index.html",
        decision=decision,
    )


def _decision_summary(d: dict[str, Any]) -> DecisionSummary:
    out = {
        side: {
            "macro_f1": d[side]["macro_f1"],
            "accuracy": d[side]["accuracy"],
            "coverage": d[side]["coverage"],
            "selective_accuracy": d[side]["selective_accuracy"],
            "recall": {c: v["recall"] for c, v in d[side]["per_class"].items()},
        }
        for side in ("policy", "argmax")
    }
    return DecisionSummary.model_validate({**out["policy"], "argmax": out["argmax"], **({"ood": d["ood"]} if "ood" in d else {})})


def _stage_export(opts: BuildOptions, out: Path, log: Log) -> ExportStageResult:
    from edgeclf.export.pipeline import export_run

    tmp = out / f".bundle.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    from edgeclf.runtime.gate import c_runtime_rows

    res = export_run(
        out / "run",
        tmp,
        profile=opts.profile,
        allow_failed=True,
        robustness=opts.robustness,
        calibration_images=opts.calibration_images,
        log=log,
        runtime_gate=c_runtime_rows,
    )
    _replace_dir(tmp, out / "bundle")
    return ExportStageResult(
        bundle="bundle",
        artifacts=[f"{a.format}/{a.precision}" for a in res.manifest.artifacts],
        failed=res.failed,
        parity=[ParityLine(**{k: getattr(r, k) for k in ParityLine.model_fields}) for r in res.parity.table],
    )


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)


def _stage_benchmark(opts: BuildOptions, out: Path, sel: SelectResult, log: Log) -> BenchmarkResult:
    from edgeclf.profiles import load_profile

    profile = load_profile(opts.profile)
    here, why = host_is_target(profile)
    measure = here if opts.measure is None else opts.measure
    budget = opts.budget_ms or profile.budgets.latency_ms_p95
    if not measure:
        est = sel.latency_ms_p95_estimate
        log(f"benchmark: ESTIMATED for {profile.name} ({why}): p95 {est:.2f} ms")
        return BenchmarkResult(
            source="estimate",
            why=why,
            latency_ms_p95=est,
            budget_ms=budget,
            fits=est <= budget,
            label=f"estimated by the cost model ({why}); measure on the device "
            "with `edgeclf bench` or `pytest benchmarks --benchmark-only`",
        )
    from edgeclf.runtime import Classifier

    frame = _frame()
    rows: list[BenchmarkRow] = []
    # The selected configuration (what the budget was checked against), then the runtime's
    # own default (`auto`: the fastest artifact it can run) when that is another artifact.
    backend = str(sel.runtime).split("/")[0]
    for want in ((backend, sel.precision, "selected"), ("auto", "auto", "runtime default")):
        try:
            clf = Classifier(out / "bundle", backend=want[0], precision=want[1])
        except EdgeclfError as e:
            log(f"benchmark: {want[2]} configuration not runnable here: {e}")
            continue
        with clf:
            if any(r.artifact == clf.artifact and r.runtime == f"c-runtime/{clf.backend}" for r in rows):
                continue
            for _ in range(10):
                clf.classify(frame, top_k=5)
            ts = []
            for _ in range(100):
                t0 = time.perf_counter()
                clf.classify(frame, top_k=5)
                ts.append((time.perf_counter() - t0) * 1000)
            rows.append(
                BenchmarkRow(
                    runtime=f"c-runtime/{clf.backend}",
                    precision=clf.precision,
                    artifact=clf.artifact,
                    configuration=want[2],
                    p50_ms=float(np.percentile(ts, 50)),
                    p95_ms=float(np.percentile(ts, 95)),
                    p99_ms=float(np.percentile(ts, 99)),
                )
            )
    if not rows:
        raise BuildError("benchmark: the C runtime could run no artifact of the bundle here")
    p95 = rows[0].p95_ms
    log(f"benchmark: MEASURED on this host: p95 {p95:.2f} ms ({rows[0].artifact}, 640x480 frame -> top-5, C runtime)")
    return BenchmarkResult(
        source="measured",
        why=why if here else "forced with --measure",
        latency_ms_p95=p95,
        budget_ms=budget,
        fits=p95 <= budget,
        rows=rows,
        label="measured on this host, end to end through the C runtime (640x480 RGB8 frame -> top-5)",
    )
