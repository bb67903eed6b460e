"""Evaluation: metric functions on hand-computed cases, calibration, the test ledger, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeclf.evaluate.calibration import ece, fit_temperature, nll
from edgeclf.evaluate.ledger import TestReuseError, check_and_record, read_ledger
from edgeclf.evaluate.metrics import confused_pairs, full_metrics, softmax


def _onehot_probs(pred: list[int], n_classes: int, conf: float = 1.0) -> np.ndarray:
    p = np.full((len(pred), n_classes), (1 - conf) / max(1, n_classes - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_accuracy_paradox() -> None:
    y = np.array([0] * 95 + [1] * 5)
    m = full_metrics(y, _onehot_probs([0] * 100, 2), ["ok", "defect"], top_ks=())
    assert m["accuracy"] == pytest.approx(0.95)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 * 0.95 / 1.95 + 0.0) / 2)  # ~0.487
    assert m["per_class"]["defect"]["recall"] == 0.0


def test_hand_computed_per_class_and_confusion() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = [0, 0, 1, 1, 2, 2]
    m = full_metrics(y, _onehot_probs(pred, 3, 0.9), ["a", "b", "c"], top_ks=(2,))
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["confusion_matrix_normalized"][1] == [0.0, 0.5, 0.5]
    assert m["accuracy"] == pytest.approx(4 / 6)
    pairs = confused_pairs(m["confusion_matrix"], ["a", "b", "c"])
    assert {(p["true"], p["predicted"]) for p in pairs} == {("a", "b"), ("b", "c")}


def test_ece_known_case() -> None:
    # every prediction has confidence 0.8, half are right: ECE = |0.5 - 0.8| = 0.3
    probs = np.array([[0.8, 0.2]] * 10)
    y = np.array([0] * 5 + [1] * 5)
    assert ece(probs, y) == pytest.approx(0.3)
    # perfectly calibrated bins: confidence 1.0 and always right
    assert ece(np.array([[1.0, 0.0]] * 4), np.zeros(4, int)) == pytest.approx(0.0)


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    n, c = 2000, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += 1.0  # a moderately good model...
    over = logits * 5.0  # ...made over-confident
    t = fit_temperature(over, y)
    assert t == pytest.approx(5.0, rel=0.15)
    assert nll(over, y, t) < nll(over, y) - 0.5
    assert ece(softmax(over, t), y) < ece(softmax(over), y)


def test_ledger_refuses_reuse(tmp_path: Path) -> None:
    assert check_and_record(tmp_path, "abc", "sha256:x", allow_reuse=False) is False
    with pytest.raises(TestReuseError, match="already evaluated"):
        check_and_record(tmp_path, "abc", "sha256:x", allow_reuse=False)
    assert check_and_record(tmp_path, "abc", "sha256:x", allow_reuse=True) is True
    entries = read_ledger(tmp_path)
    assert [e["reuse"] for e in entries] == [False, True] and entries[0]["model_sha256"] == "abc"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("evalrun"))


def test_evaluate_val_then_test_once_and_report(tiny_run: Path) -> None:
    from edgeclf.evaluate import evaluate

    m = evaluate(tiny_run, "val", robustness_max_images=6)
    assert m["split"] == "val" and not m["test_reused"]
    assert set(m["verdict"]["gates"]) >= {"beats_linear_probe", "calibrated", "test_touched_once"}
    cal = json.loads((tiny_run / "calibration.json").read_text())
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0
    for fig in ("confusion", "reliability", "mistakes", "robustness", "embeddings", "gradcam"):
        assert (tiny_run / "report" / "figures" / "val" / f"{fig}.png").is_file(), fig
    assert (tiny_run / "report" / "figures" / "val" / "mistakes.csv").read_text().startswith("path,true,predicted")
    assert m["robustness"]["rows"] and "image_size" in m["slices"]
    t = evaluate(tiny_run, "test", robustness=False, explain=False)
    assert t["temperature"] == m["temperature"]  # fitted on val, reused for test
    assert set(t["train_vs_heldout"]["splits"]) == {"train", "val", "test"}
    from edgeclf.evaluate.ledger import TestReuseError

    with pytest.raises(TestReuseError):
        evaluate(tiny_run, "test", robustness=False, explain=False)
    again = evaluate(tiny_run, "test", allow_test_reuse=True, robustness=False, explain=False)
    assert again["test_reused"] and not again["verdict"]["gates"]["test_touched_once"]["passed"]
    html = (tiny_run / "report" / "index.html").read_text(encoding="utf-8")
    assert "TEST SPLIT REUSED" in html and "data:image/png;base64," in html and "Verdict" in html
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["evaluation"]) == {"val", "test"} and metrics["baselines"]


def test_label_commands_through_cli(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeclf.cli import app
    from tests.conftest import blob_image, save

    unl = tmp_path / "unlabeled"
    for i in range(3):
        save(blob_image(500 + i), unl / f"u{i}.png")
    (unl / "broken.jpg").write_bytes(b"not a jpeg")
    res = CliRunner().invoke(app, ["label", "suggest", str(tiny_run), str(unl), "--out", str(tmp_path / "sug"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [s["rank"] for s in doc["suggestions"]] == [1, 2, 3]
    margins = [s["margin"] for s in doc["suggestions"]]
    assert margins == sorted(margins)  # most uncertain first
    assert [p["path"] for p in doc["skipped"]] == ["broken.jpg"]
    assert (tmp_path / "sug" / "suggestions.csv").is_file() and (tmp_path / "sug" / "most_uncertain.png").is_file()
    res = CliRunner().invoke(app, ["label", "audit", str(tiny_run), "--out", str(tmp_path / "aud"), "--folds", "3", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["images"] > 0 and (tmp_path / "aud" / "label_audit.csv").is_file()
