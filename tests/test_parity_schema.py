"""``parity.json`` as a typed, versioned document (``edgeclf.export.parity_schema``): written from
the model, read back equal; a report of the layout before versioning still loads (migrated);
a tampered one is refused with a message that names the file and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclf.export.bundle import PARITY, BundleError, read_parity, write_parity
from edgeclf.export.parity_schema import (
    MIGRATED,
    SCHEMA_VERSION,
    ArtifactRecord,
    Attempt,
    DecisionCheck,
    GateResult,
    ParityReport,
    ParityRow,
    RecallTarget,
    RobustnessRow,
    RobustnessSummary,
    RuntimeDecision,
)

CLASSES = ["cat", "dog"]


def _gate(fmt: str, precision: str, *, passed: bool = True, failures: list[str] | None = None) -> GateResult:
    return GateResult(
        format=fmt,
        precision=precision,
        images=200,
        agreement=1.0 if passed else 0.95,
        max_abs_logit_diff=2e-6 if passed else 1.7,
        accuracy=0.9,
        macro_f1=0.89,
        accuracy_delta=0.0,
        macro_f1_delta=0.0 if passed else -0.03,
        per_class_recall_delta={"cat": 0.0, "dog": 0.0 if passed else -0.05},
        kl_divergence=0.0,
        ece_calibrated=0.03,
        ms_per_image=1.5,
        passed=passed,
        failures=failures or [],
        status="passed" if passed else "failed",
        rules={"all": "point estimate"},
    )


def _decision(agreement: float = 1.0) -> DecisionCheck:
    return DecisionCheck(
        decision_agreement=agreement,
        macro_f1=0.85,
        macro_f1_delta=0.0,
        coverage=0.8,
        targets={"dog": RecallTarget(target=0.9, recall=0.92, eager_recall=0.92)},
        failures=[],
    )


def _row(fmt: str, precision: str, status: str, **kw: Any) -> ParityRow:
    figures: dict[str, Any] = {"size_mb": None, "macro_f1": None, "delta_macro_f1": None, "agreement": None, "ms_per_image": None}
    return ParityRow(format=fmt, precision=precision, status=status, **{**figures, **kw})  # type: ignore[arg-type]


def report() -> ParityReport:
    """A report as ``export_run`` writes it: every kind of row, attempt and section."""
    int8_fail = "top-1 agreement 0.9500 < 0.98"
    return ParityReport(
        split="val",
        images=200,
        temperature=1.4,
        artifacts=[
            ArtifactRecord(
                format="onnx",
                precision="fp32",
                status="ok",
                details={"opset": 17, "exporter": "torchscript"},
                attempts=[Attempt(options={}, status="ok", parity=_gate("onnx", "fp32"), decision=_decision())],
            ),
            ArtifactRecord(
                format="onnx",
                precision="int8",
                status="parity_failed",
                details={},
                attempts=[
                    Attempt(
                        options={"calibration_method": "minmax"},
                        status="parity_failed",
                        parity=_gate("onnx", "int8", passed=False, failures=[int8_fail]),
                    ),
                    Attempt(
                        options={"calibration_method": "minmax", "keep_float": ["/conv0"]},
                        status="parity_failed",
                        parity=_gate("onnx", "int8", passed=False, failures=[int8_fail]),
                    ),
                ],
            ),
            ArtifactRecord(
                format="tensorrt",
                precision="fp16",
                status="skipped",
                details={"trt_command": "trtexec --onnx=model.onnx --fp16"},
                attempts=[Attempt(options={}, status="skipped", error="TensorRT is not installed")],
            ),
        ],
        table=[
            _row("eager (torch)", "fp32", "reference", macro_f1=0.89, delta_macro_f1=0.0, agreement=1.0),
            _row(
                "onnx",
                "fp32",
                "ok",
                size_mb=1.2,
                macro_f1=0.89,
                delta_macro_f1=0.0,
                agreement=1.0,
                ms_per_image=1.5,
                ece=0.03,
                gate_rules={"all": "point estimate"},
                decision=_decision(),
                decision_agreement=1.0,
            ),
            _row("onnx", "int8", "parity_failed", macro_f1=0.86, delta_macro_f1=-0.03, agreement=0.95, ms_per_image=0.9),
            _row("tensorrt", "fp16", "skipped", error="TensorRT is not installed"),
            _row(
                "c-runtime (onnxruntime)",
                "fp32",
                "ok",
                macro_f1=0.89,
                delta_macro_f1=0.0,
                agreement=1.0,
                ms_per_image=1.1,
                decision=RuntimeDecision(decision_match=1.0, images=200, mismatches=[]),
                decision_match=1.0,
            ),
        ],
        robustness=RobustnessSummary(
            artifact="onnx/fp32",
            images=100,
            rows=[
                RobustnessRow(
                    corruption="clean",
                    severity=None,
                    severity_label="",
                    accuracy={"eager fp32": 0.9, "onnx/fp32": 0.9},
                    macro_f1={"eager fp32": 0.89, "onnx/fp32": 0.89},
                    delta_macro_f1={"eager fp32": 0.0, "onnx/fp32": 0.0},
                    flip_rate={"eager fp32": 0.0, "onnx/fp32": 0.0},
                )
            ],
            mean_corruption_macro_f1={"eager fp32": 0.8, "onnx/fp32": 0.8},
        ),
    )


def _write(d: Path, doc: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / PARITY).write_text(json.dumps(doc), encoding="utf-8")
    return d


def _refused(tmp_path: Path, doc: Any) -> str:
    with pytest.raises(BundleError) as e:
        read_parity(_write(tmp_path / "b", doc))
    return str(e.value)


# ---- round trip ---------------------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    r = report()
    path = write_parity(tmp_path, r)
    raw = path.read_bytes()
    doc = json.loads(raw)
    assert doc["schema_version"] == SCHEMA_VERSION == "1.1.0"
    assert doc["robustness_skipped"] is None  # written even when null, like every field
    back = read_parity(tmp_path)
    assert back == r and back.migrated_from is None
    write_parity(tmp_path, back)
    assert path.read_bytes() == raw  # canonical: the same report, the same bytes
    # what the C runtime reads is where it reads it
    assert [(row["format"], row["precision"], row["ms_per_image"]) for row in doc["table"]][1] == ("onnx", "fp32", 1.5)
    # readers use attributes
    assert back.speeds() == {("onnx", "fp32"): 1.5, ("onnx", "int8"): 0.9, ("c-runtime (onnxruntime)", "fp32"): 1.1}
    int8 = back.artifacts[1]
    assert int8.last is not None and int8.last.parity is not None and int8.last.parity.status == "failed"
    assert int8.reason() == "top-1 agreement 0.9500 < 0.98"
    assert back.artifacts[2].reason() == "TensorRT is not installed"
    assert back.row("onnx", "int8") is not None and back.row("onnx", "int8").failed  # type: ignore[union-attr]
    assert isinstance(back.table[1].decision, DecisionCheck)
    assert isinstance(back.table[4].decision, RuntimeDecision)


def test_the_report_from_a_parity_result_round_trips(tmp_path: Path) -> None:
    """The export's own figures (numpy behind them) are recorded and read back as they were."""
    from edgeclf.export import parity as P

    y = np.repeat([0, 1], 100)
    eager = np.random.default_rng(0).normal(0, 1, (200, 2)).astype(np.float32)
    eager[np.arange(200), y] += 4
    res = P.compare("onnx", "int8", eager + 0.01, eager, y, CLASSES, 1.0, 0.1)
    r = report()
    r.artifacts[0].attempts[0].parity = res.record()
    write_parity(tmp_path, r)
    got = read_parity(tmp_path).artifacts[0].attempts[0].parity  # type: ignore[union-attr]
    assert got is not None and got.model_dump() == res.to_dict()


def test_the_writer_refuses_a_report_its_reader_would_refuse(tmp_path: Path) -> None:
    r = report()
    r.table[1].status = "great"  # type: ignore[assignment]  # assignment is not validated: the writer checks
    with pytest.raises(BundleError, match=r"table\.1\.status"):
        write_parity(tmp_path, r)
    assert not (tmp_path / PARITY).exists()
    with pytest.raises(ValueError, match="status is null"):
        _row("onnx", "fp32", None)  # type: ignore[arg-type]


def test_absent_report_is_none(tmp_path: Path) -> None:
    assert read_parity(tmp_path) is None


# ---- the layout before versioning ---------------------------------------------------------------------------------

#: parity.json as ``export_run`` wrote it before the report had a schema (no ``schema_version``;
#: the eager row without ``error``, ``error`` "" on rows that passed, keys absent when not applicable)
OLD_LAYOUT: dict[str, Any] = {
    "split": "val",
    "images": 200,
    "temperature": 1.4,
    "artifacts": [
        {
            "format": "onnx",
            "precision": "fp32",
            "status": "ok",
            "details": {"exporter": "torchscript", "opset": 17},
            "attempts": [
                {
                    "options": {},
                    "status": "ok",
                    "parity": {
                        "format": "onnx",
                        "precision": "fp32",
                        "images": 200,
                        "agreement": 1.0,
                        "max_abs_logit_diff": 2e-6,
                        "accuracy": 0.9,
                        "macro_f1": 0.89,
                        "accuracy_delta": 0.0,
                        "macro_f1_delta": 0.0,
                        "per_class_recall_delta": {"cat": 0.0, "dog": 0.0},
                        "kl_divergence": 0.0,
                        "ece_calibrated": 0.03,
                        "ms_per_image": 1.5,
                        "passed": True,
                        "failures": [],
                        "status": "passed",
                        "rules": {"all": "point estimate"},
                    },
                    "decision": {
                        "decision_agreement": 1.0,
                        "macro_f1": 0.85,
                        "macro_f1_delta": 0.0,
                        "coverage": 0.8,
                        "targets": {"dog": {"target": 0.9, "recall": 0.92, "eager_recall": 0.92}},
                        "failures": [],
                    },
                }
            ],
        },
        {
            "format": "tensorrt",
            "precision": "fp16",
            "status": "skipped",
            "details": {},
            "attempts": [{"options": {}, "status": "skipped", "error": "TensorRT is not installed"}],
        },
    ],
    "table": [
        {
            "format": "eager (torch)",
            "precision": "fp32",
            "status": "reference",
            "size_mb": None,
            "macro_f1": 0.89,
            "delta_macro_f1": 0.0,
            "agreement": 1.0,
            "ms_per_image": None,
        },
        {
            "format": "onnx",
            "precision": "fp32",
            "status": "ok",
            "size_mb": 1.2,
            "macro_f1": 0.89,
            "delta_macro_f1": 0.0,
            "agreement": 1.0,
            "ms_per_image": 1.5,
            "error": "",
            "ece": 0.03,
            "gate_rules": {"all": "point estimate"},
            "decision": {
                "decision_agreement": 1.0,
                "macro_f1": 0.85,
                "macro_f1_delta": 0.0,
                "coverage": 0.8,
                "targets": {"dog": {"target": 0.9, "recall": 0.92, "eager_recall": 0.92}},
                "failures": [],
            },
            "decision_agreement": 1.0,
        },
        {
            "format": "tensorrt",
            "precision": "fp16",
            "status": "skipped",
            "size_mb": None,
            "macro_f1": None,
            "delta_macro_f1": None,
            "agreement": None,
            "ms_per_image": None,
            "error": "TensorRT is not installed",
        },
        {
            "format": "c-runtime (onnxruntime)",
            "precision": "fp32",
            "status": "ok",
            "size_mb": None,
            "macro_f1": 0.89,
            "delta_macro_f1": 0.0,
            "agreement": 1.0,
            "ms_per_image": 1.1,
            "error": None,
            "decision": {"decision_match": 1.0, "images": 200, "mismatches": []},
            "decision_agreement": None,
            "decision_match": 1.0,
            "gate_rules": {"all": "point estimate"},
            "ece": 0.03,
        },
    ],
}


def test_old_layout_loads_migrated(tmp_path: Path) -> None:
    r = read_parity(_write(tmp_path, OLD_LAYOUT))
    assert r is not None and r.migrated_from == MIGRATED and r.schema_version == SCHEMA_VERSION
    assert [row.status for row in r.table] == ["reference", "ok", "skipped", "ok"]
    assert r.table[0].error is None and r.table[1].error == ""
    assert r.speeds() == {("onnx", "fp32"): 1.5, ("c-runtime (onnxruntime)", "fp32"): 1.1}
    onnx = r.artifacts[0].last
    assert onnx is not None and onnx.parity is not None and onnx.parity.rules == {"all": "point estimate"}
    assert isinstance(r.table[3].decision, RuntimeDecision) and r.table[3].decision.decision_match == 1.0
    assert r.artifacts[1].reason() == "TensorRT is not installed" and r.robustness is None


def test_older_layouts_load_with_what_they_lack_empty(tmp_path: Path) -> None:
    """Earlier writers: gate results without ``status``/``rules`` (before the int8 intervals),
    recall targets without ``eager_recall``; hand-made reports with only the table."""
    old = copy.deepcopy(OLD_LAYOUT)
    p = old["artifacts"][0]["attempts"][0]["parity"]
    del p["status"], p["rules"]
    p["passed"] = False
    del old["artifacts"][0]["attempts"][0]["decision"]["targets"]["dog"]["eager_recall"]
    r = read_parity(_write(tmp_path / "a", old))
    gate = r.artifacts[0].attempts[0].parity  # type: ignore[union-attr]
    assert gate is not None and gate.status == "failed" and gate.rules == {}
    assert r.artifacts[0].attempts[0].decision.targets["dog"].eager_recall is None  # type: ignore[union-attr]

    sparse = {"table": [{"format": "onnx", "precision": "fp32", "ms_per_image": 0.1}]}
    r = read_parity(_write(tmp_path / "b", sparse))
    assert r is not None and r.table[0].status is None and r.artifacts == [] and r.split is None
    assert r.speeds() == {("onnx", "fp32"): 0.1}


def test_an_old_layout_is_still_checked(tmp_path: Path) -> None:
    old = copy.deepcopy(OLD_LAYOUT)
    old["table"][1]["status"] = "fine"
    msg = _refused(tmp_path, old)
    assert PARITY in msg and "table.1.status" in msg
    assert "parity.json" in _refused(tmp_path, {"table": [{"precision": "fp32"}]})
    assert "table" in _refused(tmp_path, {"rows": []})


# ---- tampered reports ---------------------------------------------------------------------------------------------


def _v1() -> dict[str, Any]:
    return report().to_dict()


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *head, last = path.split(".")
    node: Any = doc
    for k in head:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[int(last) if isinstance(node, list) else last] = value
    return doc


def _drop(doc: dict[str, Any], path: str) -> dict[str, Any]:
    *head, last = path.split(".")
    node: Any = doc
    for k in head:
        node = node[int(k)] if isinstance(node, list) else node[k]
    del node[last]
    return doc


@pytest.mark.parametrize(
    ("name", "tamper", "field", "words"),
    [
        ("wrong type", lambda d: _set(d, "table.1.agreement", "high"), "table.1.agreement", "number"),
        ("a figure as a bool", lambda d: _set(d, "images", True), "images", "integer"),
        ("unknown status", lambda d: _set(d, "table.2.status", "almost"), "table.2.status", "parity_failed"),
        ("unknown gate status", lambda d: _set(d, "artifacts.1.attempts.0.parity.status", "meh"), "status", "passed"),
        ("missing field", lambda d: _drop(d, "table.1.ms_per_image"), "table.1.ms_per_image", "required"),
        ("missing gate figure", lambda d: _drop(d, "artifacts.0.attempts.0.parity.agreement"), "agreement", "required"),
        ("a recorded value null", lambda d: _set(d, "split", None), "split", "null"),
        ("unknown key", lambda d: _set(d, "table.0.colour", "blue"), "table.0.colour", "extra"),
        ("row not an object", lambda d: _set(d, "table.0", "onnx"), "table.0", ""),
        ("gate rule not text", lambda d: _set(d, "table.1.gate_rules.all", 1), "table.1.gate_rules.all", "string"),
    ],
)
def test_tampered_report_is_refused_naming_the_field(tmp_path: Path, name: str, tamper: Any, field: str, words: str) -> None:
    msg = _refused(tmp_path, tamper(_v1()))
    assert str(tmp_path / "b" / PARITY) in msg and field in msg and words in msg.lower(), msg
    assert "re-export the bundle" in msg


@pytest.mark.parametrize(
    ("version", "words"),
    [("2.0.0", "not supported"), ("1.x", "not a semantic version"), (1, "not a semantic version")],
)
def test_other_schema_versions_are_refused(tmp_path: Path, version: Any, words: str) -> None:
    msg = _refused(tmp_path, _set(_v1(), "schema_version", version))
    assert PARITY in msg and "schema_version" in msg and words in msg


def test_a_later_minor_version_is_read_without_what_it_added(tmp_path: Path) -> None:
    later = _set(_set(_set(_v1(), "schema_version", "1.2.0"), "table.1.energy_mj", 3.5), "host", "x")
    r = read_parity(_write(tmp_path, later))
    assert r is not None and r.schema_version == "1.2.0" and r.migrated_from is None
    assert r.table[1].agreement == 1.0 and "energy_mj" not in r.table[1].to_dict()
    # the same fields in a document of this version are damage; and a later version still types what it shares
    assert "table.1.energy_mj" in _refused(tmp_path, _set(later, "schema_version", SCHEMA_VERSION))
    assert "table.1.agreement" in _refused(tmp_path, _set(later, "table.1.agreement", "high"))


def test_not_json_and_not_an_object_are_refused(tmp_path: Path) -> None:
    (tmp_path / PARITY).write_text('{"table": [', encoding="utf-8")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_parity(tmp_path)
    assert "not a JSON object" in _refused(tmp_path, [1, 2])


# ---- the C runtime reads what the schema writes -------------------------------------------------------------------


@pytest.mark.cpp
def test_the_c_runtime_loads_a_bundle_with_a_versioned_report(tmp_path: Path) -> None:
    runtime = pytest.importorskip("edgeclf.runtime")
    from edgeclf.runtime.reference import BundleClassifier
    from tests.conftest import make_synthetic_bundle

    b = make_synthetic_bundle(tmp_path / "bundle")
    write_parity(b, report())
    frame = np.zeros((40, 40, 3), np.uint8)
    BundleClassifier(b).classify([frame], top_k=1)
    with runtime.Classifier(b) as clf:
        clf.classify(frame, top_k=1)
