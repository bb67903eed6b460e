"""The build's stage results are typed: each round-trips its document, the stage cache loads what
an older build recorded and runs a stage again when its record does not validate, and the
report, build.json and the CLI read the models (no training here: hand-written documents)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from edgeclf.build import BuildOptions, Stages, weak_classes
from edgeclf.build.report import _stage_report
from edgeclf.build.results import (
    AuditResult,
    BenchmarkResult,
    BuildRecord,
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
from tests.build_documents import ESTIMATE, stage_results

MODELS: dict[str, type[StageResult]] = {
    "audit": AuditResult,
    "split": SplitResult,
    "select": SelectResult,
    "train": TrainResult,
    "evaluate": EvaluateResult,
    "export": ExportStageResult,
    "benchmark": BenchmarkResult,
    "package": PackageResult,
    "report": ReportResult,
}


@pytest.mark.parametrize("stage", list(MODELS))
def test_each_stage_result_round_trips_its_document(stage: str) -> None:
    doc = stage_results()[stage]
    model = MODELS[stage].model_validate(doc)
    assert model.model_dump(mode="json") == doc
    assert MODELS[stage].model_validate_json(json.dumps(doc)).model_dump(mode="json") == doc


def test_keys_a_stage_leaves_out_stay_out() -> None:
    assert BenchmarkResult.model_validate(ESTIMATE).model_dump(mode="json") == ESTIMATE  # no "rows": null
    ev = stage_results()["evaluate"]
    del ev["decision"]
    assert EvaluateResult.model_validate(ev).model_dump(mode="json") == ev
    dec = EvaluateResult.model_validate(stage_results()["evaluate"]).decision
    assert dec is not None and dec.test is None and "test" not in dec.model_dump(mode="json")
    assert dec.val is not None and dec.val.ood is not None and dec.val.argmax.coverage == 1.0


def test_numbers_keep_their_values() -> None:
    """What the stage wrote is what the model writes: ints stay ints, floats floats."""
    for stage, doc in stage_results().items():
        dumped = json.dumps(MODELS[stage].model_validate(doc).model_dump(mode="json"), sort_keys=True)
        assert dumped == json.dumps(doc, sort_keys=True), stage


def test_a_wrong_type_or_an_unknown_key_is_refused() -> None:
    with pytest.raises(ValidationError):
        AuditResult.model_validate({**stage_results()["audit"], "num_images": "thirty"})
    with pytest.raises(ValidationError):
        SplitResult.model_validate({**stage_results()["split"], "extra": 1})
    with pytest.raises(ValidationError):
        BenchmarkResult.model_validate({**ESTIMATE, "source": "guessed"})


def test_build_run_and_record_round_trip() -> None:
    docs = stage_results()
    run_doc = {
        "out": "out",
        "stages": [{"stage": s, "status": "cached", "seconds": 0.0} for s in docs],
        "results": docs,
    }
    run = BuildRun.model_validate(run_doc)
    assert run.model_dump(mode="json") == run_doc
    assert run.results.train.recipe[0].key == "model.image_size" and run.stages[0] == StageRun(
        stage="audit", status="cached", seconds=0.0
    )
    # while the report is written, the results have no "report" key (the report stage's key is theirs)
    partial = {k: v for k, v in docs.items() if k != "report"}
    assert BuildResults.model_validate(partial).model_dump(mode="json") == partial
    record = {
        "profile": "x86-64-avx512",
        "choice": {"backbone": "tf_efficientnet_lite0", "resolution": 224, "anything": "as selection.json has it"},
        "benchmark": docs["benchmark"],
        "package": docs["package"],
        "test": docs["evaluate"]["test"],
        "val": docs["evaluate"]["val"],
    }
    assert BuildRecord.model_validate(record).model_dump(mode="json") == record


def test_weak_classes_reads_the_model_and_a_mapping() -> None:
    train = TrainResult.model_validate(stage_results()["train"])
    assert weak_classes(train) == ["c"]
    assert weak_classes({"quality_gates": train.quality_gates}) == ["c"]
    assert weak_classes(train.model_copy(update={"quality_gates": None})) == [] == weak_classes({})


# ---- the stage cache -------------------------------------------------------------------------------------------------


def _record(tmp_path: Path, stage: str, result: Any, inputs: dict[str, Any]) -> Path:
    """A finished stage's record as an earlier build left it (the key of ``inputs``)."""
    from edgeclf.build.chain import _key

    path = tmp_path / "stages" / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"stage": stage, "key": _key(inputs), "inputs": inputs, "result": result, "seconds": 1.0, "finished": "x"}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _never() -> Any:
    raise AssertionError("a cached stage ran again")


def test_an_older_layout_loads_from_the_cache(tmp_path: Path) -> None:
    """Fields older builds did not record have defaults: their stages stay cached."""
    docs = stage_results()
    old = {
        "select": {k: v for k, v in docs["select"].items() if k != "max_resolution"},
        "train": {k: v for k, v in docs["train"].items() if k not in ("backbone", "image_size")},
        "benchmark": {
            **docs["benchmark"],
            "rows": [{k: v for k, v in docs["benchmark"]["rows"][0].items() if k != "configuration"}],
        },
        "export": {
            **docs["export"],
            "parity": [{k: v for k, v in r.items() if not k.startswith("decision_")} for r in docs["export"]["parity"]],
        },
    }
    lines: list[str] = []
    stages = Stages(tmp_path, lines.append)
    for name, result in old.items():
        _record(tmp_path, name, result, {"k": name})
        got = stages.run(name, {"k": name}, [], _never, MODELS[name])
        assert isinstance(got, MODELS[name])
    assert [r.status for r in stages.records] == ["cached"] * len(old) and lines == []
    sel = stages.records[0].result
    assert isinstance(sel, SelectResult) and sel.max_resolution is None
    train = stages.records[1].result
    assert isinstance(train, TrainResult) and (train.backbone, train.image_size) == (None, None)
    bench = stages.records[2].result
    assert isinstance(bench, BenchmarkResult) and bench.rows and bench.rows[0].configuration is None
    assert "configuration" not in bench.model_dump(mode="json")["rows"][0]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: {**r, "num_images": "thirty"},  # a wrong type
        lambda r: {**r, "left_over": 1},  # a key this version does not write
        lambda r: {k: v for k, v in r.items() if k != "audit"},  # a key it needs
        lambda r: None,  # no result at all
        lambda r: [r],  # not an object
    ],
)
def test_a_record_that_does_not_validate_is_stale(tmp_path: Path, tamper: Any) -> None:
    good = stage_results()["audit"]
    path = _record(tmp_path, "audit", tamper(good), {"data": "d"})
    lines: list[str] = []
    calls: list[int] = []

    def redo() -> AuditResult:
        calls.append(1)
        return AuditResult.model_validate(good)

    got = Stages(tmp_path, lines.append).run("audit", {"data": "d"}, [], redo, AuditResult)
    assert calls == [1] and got == AuditResult.model_validate(good)
    assert len(lines) == 1 and lines[0].startswith("audit: the recorded result in") and "running the stage again" in lines[0]
    assert json.loads(path.read_text(encoding="utf-8"))["result"] == good  # rewritten by this version
    # and now it is cached
    assert Stages(tmp_path, lines.append).run("audit", {"data": "d"}, [], _never, AuditResult) == got


def test_a_record_that_is_not_json_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "stages" / "audit.json"
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2", encoding="utf-8")
    good = AuditResult.model_validate(stage_results()["audit"])
    assert Stages(tmp_path, lambda m: None).run("audit", {}, [], lambda: good, AuditResult) == good
    path.write_text("[1, 2]", encoding="utf-8")  # JSON, but not a record
    assert Stages(tmp_path, lambda m: None).run("audit", {}, [], lambda: good, AuditResult) == good


# ---- the report and the CLI read the models --------------------------------------------------------------------------


def _candidate(**kw: Any) -> dict[str, Any]:
    row = {
        "backbone": "tf_efficientnet_lite0",
        "resolution": 224,
        "native_resolution": 224,
        "runtime": "onnxruntime/CPU",
        "precision": "fp32",
        "latency_ms_p95": 6.25,
        "latency_source": "estimate",
        "memory_mb": 48.0,
        "memory_source": "estimate",
        "file_mb": 18.5,
        "file_source": "estimate",
        "gflops": 0.8,
        "accuracy": 74.8,
        "accuracy_source": "registry",
        "accuracy_penalty": 0.0,
        "fits": True,
        "reason": None,
        "overshoot": 0.3,
        "factors": "prior",
        "weights_here": True,
    }
    return row | kw


def test_the_report_and_build_json_come_from_the_models(tmp_path: Path) -> None:
    docs = stage_results()
    choice = _candidate()
    other = _candidate(
        backbone="resnet50", accuracy=80.1, fits=False, reason="p95 over budget", overshoot=2.0, weights_here=False
    )
    selection = {
        "profile": "x86-64-avx512",
        "budgets": {"latency_ms_p95": 50.0, "memory_mb": 512.0, "model_file_mb": 64.0, "overridden": []},
        "choice": {k: v for k, v in choice.items() if k != "weights_here"},
        "justification": docs["select"]["justification"],
        "note": "",
        "accuracy_rule": "ImageNet top-1",
        "candidates": [choice, other],
        "table": "",
    }
    (tmp_path / "selection.json").write_text(json.dumps(selection), encoding="utf-8")
    results = BuildResults.model_validate({k: v for k, v in docs.items() if k != "report"})
    opts = BuildOptions(profile="x86-64-avx512", data_dir=tmp_path / "data", out=tmp_path)
    assert _stage_report(opts, tmp_path, results) == ReportResult(report="report.md", summary="build.json")
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    for want in (
        "30 images, 3 classes",
        "tf_efficientnet_lite0 **(chosen)**",
        "Shipped: **linear_probe**, validation macro-F1 0.8812 (epoch 3) (95 % CI 0.710–0.950).",
        "Test (touched once): accuracy 0.8000, macro-F1 n/a.",
        "| linear_probe | 0.8812 | **yes** |",
        "Quality gate every_class_recalled FAILED:** the shipped model never predicts c",
        "Note: thin evidence on validation: a (2 images), b (2 images), c (2 images); under 10 images",
        "Note: thin evidence on test: a (1 image), b (1 image), c (1 image);",
        "- `model.image_size: 224` — auto: small objects",
        "Policy **argmax with recall(c) >= 0.9**",
        "| recall b | 0.8000 | 0.8000 |",
        "Out-of-distribution (val half of ood, 4 images): AUROC 0.9100",
        "| onnx | int8 | insufficient_evidence | 4.60 |",
        " 0.8333 | 1.0000 |",
        "p95 **3.50 ms** vs budget 50.0 ms — fits. Source: **MEASURED**",
        "(the selected artifact `model.onnx`, fp32, c-runtime/onnxruntime; p50 3.10 ms)",
        "Device package: `out-x86-64-avx512.tar.gz` (31.42 MB).",
    ):
        assert want in report, want
    record = json.loads((tmp_path / "build.json").read_text(encoding="utf-8"))
    assert record == {
        "profile": "x86-64-avx512",
        "choice": selection["choice"],
        "benchmark": docs["benchmark"],
        "package": docs["package"],
        "test": docs["evaluate"]["test"],
        "val": docs["evaluate"]["val"],
    }
    BuildRecord.model_validate(record)


def test_the_cli_renders_a_build_from_its_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import edgeclf.build
    from edgeclf.cli import app

    docs = stage_results()
    docs["evaluate"]["decision"]["test"] = docs["evaluate"]["decision"]["val"]
    run = BuildRun.model_validate(
        {"out": str(tmp_path), "stages": [{"stage": s, "status": "done", "seconds": 1.25} for s in docs], "results": docs}
    )
    monkeypatch.setattr(edgeclf.build, "build", lambda opts, **kw: run)
    args = ["build", "--profile", "x86-64-avx512", "--data", str(tmp_path), "--out", str(tmp_path)]
    runner = CliRunner()
    res = runner.invoke(app, [*args, "--allow-weak"])
    assert res.exit_code == 0, (res.output, res.exception)
    shown = " ".join(res.output.split())
    for want in ("30 images", "tf_efficientnet_lite0 @ 224 px", "val macro-F1 0.8812", "coverage 0.920", "2 artifacts, 1 failed"):
        assert want in res.output, want
    assert "never predicts c on validation" in shown
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 1  # the weak-class gate, without --allow-weak
    assert json.loads(res.stdout) == run.model_dump(mode="json")


def test_the_names_spelt_in_results_agree_with_their_layers() -> None:
    """results.py spells the select, export and train layers' names so reading a build imports none of them."""
    from typing import get_args

    from edgeclf.build import results
    from edgeclf.export.parity_schema import ParityRow, RowStatus
    from edgeclf.select.selection import Source
    from edgeclf.train.recipe import RecipeChoice

    assert get_args(results.Source) == get_args(Source)
    assert get_args(results.RowStatus) == get_args(RowStatus)
    assert set(results.RecipeLine.model_fields) == set(RecipeChoice.model_fields)
    assert set(results.ParityLine.model_fields) <= set(ParityRow.model_fields)


def test_the_chain_passes_models_and_resumes_from_their_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """build() with each stage's work replaced by its document: the records resume, all cached, to the same results."""
    import edgeclf.build.chain as chain
    from edgeclf._io import sha256_file

    docs = stage_results()
    out, data = tmp_path / "out", tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.png").write_bytes(b"x")
    seen: dict[str, Any] = {}

    def fake(stage: str, made: str) -> Any:
        def work(*args: Any) -> StageResult:
            seen[stage] = args
            path = out / made
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(stage, encoding="utf-8")
            doc = docs[stage]
            if stage == "train":
                doc = {**doc, "checkpoint_sha256": sha256_file(path)}
            return MODELS[stage].model_validate(doc)

        return work

    made = {
        "audit": "audit/audit.json",
        "split": "splits.csv",
        "select": "selection.json",
        "train": "run/checkpoints/best.pt",
        "evaluate": "run/report/index.html",
        "export": "bundle/edgeclf.json",
        "benchmark": "benchmark.txt",
        "package": "out-x86-64-avx512.tar.gz",
        "report": "report.md",
    }
    for stage, path in made.items():
        monkeypatch.setattr(chain, f"_stage_{stage}", fake(stage, path))
    opts = BuildOptions(profile="x86-64-avx512", data_dir=data, out=out, measure=False)
    first = chain.build(opts)
    assert [(s.stage, s.status) for s in first.stages] == [(s, "done") for s in chain.STAGES]
    assert isinstance(seen["train"][2], SelectResult) and seen["package"][2:] == (
        first.results.select,
        first.results.evaluate,
        first.results.benchmark,
    )
    assert isinstance(seen["report"][2], BuildResults)
    for stage in chain.STAGES:
        rec = json.loads((out / "stages" / f"{stage}.json").read_text(encoding="utf-8"))
        assert rec["result"] == getattr(first.results, stage).model_dump(mode="json")
    again = chain.build(opts)
    assert [(s.stage, s.status) for s in again.stages] == [(s, "cached") for s in chain.STAGES]
    assert again.model_dump(mode="json")["results"] == first.model_dump(mode="json")["results"]
    # a record edited to a wrong type: that stage runs again, the package and the report (keyed on it) too
    rec_path = out / "stages" / "benchmark.json"
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    rec["result"]["latency_ms_p95"] = "fast"
    rec_path.write_text(json.dumps(rec), encoding="utf-8")
    lines: list[str] = []
    third = chain.build(opts, log=lines.append)
    status = {s.stage: s.status for s in third.stages}
    assert status["benchmark"] == "done" and status["train"] == "cached"
    assert status["package"] == "cached" and status["report"] == "cached"  # the same result, so the same keys
    assert any(line.startswith("benchmark: the recorded result") for line in lines)


def test_selection_document_is_read_through_its_schema(tmp_path: Path) -> None:
    from edgeclf.errors import ConfigError
    from edgeclf.select.document import read_selection

    with pytest.raises(ConfigError, match="select stage did not run"):
        read_selection(tmp_path)
    (tmp_path / "selection.json").write_text(json.dumps({"profile": "p", "budgets": {}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"selection\.json: budgets\.latency_ms_p95: Field required"):
        read_selection(tmp_path)
