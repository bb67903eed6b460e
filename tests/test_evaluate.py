"""Evaluation: metric functions on hand-computed cases, calibration, the test ledger, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import f1_score

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

    m = evaluate(tiny_run, "val", robustness_max_images=6).to_json()
    assert m["split"] == "val" and not m["test_reused"]
    assert set(m["verdict"]["gates"]) == {
        "best_candidate_shipped",
        "beats_majority",
        "every_class_recalled",
        "no_overfitting",
        "calibrated",
        "test_touched_once",
    }
    assert m["ci"]["accuracy"]["low"] <= m["accuracy"] <= m["ci"]["accuracy"]["high"]
    assert set(m["ci"]["per_class_recall"]) == {"a", "b", "c"}
    cal = json.loads((tiny_run / "calibration.json").read_text())
    assert cal["fitted_on"] == "val" and cal["temperature"] > 0
    for fig in ("confusion", "reliability", "mistakes", "robustness", "embeddings", "gradcam"):
        assert (tiny_run / "report" / "figures" / "val" / f"{fig}.png").is_file(), fig
    assert (tiny_run / "report" / "figures" / "val" / "mistakes.csv").read_text().startswith("path,true,predicted")
    assert m["robustness"]["rows"] and "image_size" in m["slices"]
    t = evaluate(tiny_run, "test", robustness=False, explain=False).to_json()
    assert t["temperature"] == m["temperature"]  # fitted on val, reused for test
    assert set(t["train_vs_heldout"]["splits"]) == {"train", "val", "test"}
    from edgeclf.evaluate.ledger import TestReuseError

    with pytest.raises(TestReuseError):
        evaluate(tiny_run, "test", robustness=False, explain=False)
    again = evaluate(tiny_run, "test", allow_test_reuse=True, robustness=False, explain=False).to_json()
    assert again["test_reused"] and not again["verdict"]["gates"]["test_touched_once"]["passed"]
    html = (tiny_run / "report" / "index.html").read_text(encoding="utf-8")
    assert "TEST SPLIT REUSED" in html and "data:image/png;base64," in html and "Verdict" in html
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["evaluation"]) == {"val", "test"} and metrics["baselines"]
    assert metrics["evaluation"]["test"]["ci"] == again["ci"] and metrics["evaluation"]["val"]["ci"]["n"] == m["n"]


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


def test_evaluate_json_has_intervals_and_compares_recorded_candidates(tiny_run: Path) -> None:
    """A run whose training recorded candidates: the CLI's JSON carries the intervals and the comparison."""
    from typer.testing import CliRunner

    from edgeclf.cli import app

    metrics_path = tiny_run / "metrics.json"
    original = metrics_path.read_text(encoding="utf-8")
    doc = json.loads(original)
    y = np.array([0, 0, 1, 1, 2, 2] * 10)
    preds = {"majority_class": np.zeros_like(y), "finetune": y.copy()}
    doc["candidates"] = [_candidate("majority_class", 0.17, nll=None, shippable=False), _candidate("finetune", 1.0)]
    doc["selection"] = {
        "selected": "finetune",
        "rule": "highest validation macro-F1; ties: lower validation NLL",
        "reason": "best validation macro-F1",
        "margins": {"majority_class": 0.83},
    }
    try:
        metrics_path.write_text(json.dumps(doc), encoding="utf-8")
        _write_predictions(tiny_run, y, preds)
        res = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--split", "val", "--no-robustness", "--no-explain", "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["ci"]["method"] == "stratified bootstrap, percentile" and out["ci"]["n_resamples"] == 1000
        assert out["ci"]["macro_f1"]["value"] == pytest.approx(out["macro_f1"])
        [row] = out["candidate_comparison"]
        assert row["candidate"] == "majority_class" and row["significant"] and row["low"] > 0
        gate = out["verdict"]["gates"]["best_candidate_shipped"]
        assert gate["passed"] and gate["selected"] == "finetune"
        assert "Model selection" in (tiny_run / "report" / "index.html").read_text(encoding="utf-8")
    finally:
        metrics_path.write_text(original, encoding="utf-8")
        (tiny_run / "candidates" / "val_predictions.npz").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- candidate selection, crafted runs


def _candidate(
    name: str, macro_f1: float, nll: float | None = 0.5, accuracy: float | None = None, shippable: bool = True
) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name.replace('_', ' ')} candidate",
        "seconds": 12.5,
        "shippable": shippable,
        "val": {"accuracy": macro_f1 if accuracy is None else accuracy, "macro_f1": macro_f1, "nll": nll, "per_class_recall": {}},
    }


def _write_predictions(run_dir: Path, y: np.ndarray, preds: dict[str, np.ndarray]) -> None:
    (run_dir / "candidates").mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / "candidates" / "val_predictions.npz", y_true=y, **preds)


def _side(val_f1: float, train_gap: float = 0.0) -> dict[str, Any]:
    train = min(1.0, val_f1 + train_gap)
    return {"train": {"accuracy": train, "macro_f1": train, "n": 10}, "val": {"accuracy": val_f1, "macro_f1": val_f1, "n": 10}}


def test_best_candidate_gate_passes_on_the_best_and_names_the_better_one() -> None:
    from edgeclf.evaluate.run import best_candidate_gate

    cands = [_candidate("majority_class", 0.2, shippable=False), _candidate("linear_probe", 0.7), _candidate("finetune", 0.8)]
    ok = best_candidate_gate({"candidates": cands, "selection": {"selected": "finetune"}}, 0.8)
    assert ok["passed"] and ok["best"] == ["finetune"]
    bad = best_candidate_gate({"candidates": cands, "selection": {"selected": "linear_probe"}}, 0.7)
    assert not bad["passed"] and "'finetune'" in bad["detail"] and "0.8000" in bad["detail"]
    # a baseline that beats every trained candidate fails the shipped one
    cands[0]["val"]["macro_f1"] = 0.9
    assert not best_candidate_gate({"candidates": cands, "selection": {"selected": "finetune"}}, 0.8)["passed"]


def test_best_candidate_gate_ties_go_to_lower_nll() -> None:
    from edgeclf.evaluate.run import best_candidate_gate, best_candidates

    cands = [_candidate("top_tune", 0.8, nll=0.50), _candidate("finetune", 0.8, nll=0.40), _candidate("probe", 0.8, nll=None)]
    assert best_candidates(cands) == ["finetune"]
    assert best_candidate_gate({"candidates": cands, "selection": {"selected": "finetune"}}, 0.8)["passed"]
    assert not best_candidate_gate({"candidates": cands, "selection": {"selected": "top_tune"}}, 0.8)["passed"]
    assert not best_candidate_gate({"candidates": cands, "selection": {"selected": "probe"}}, 0.8)["passed"]
    # a full tie (same F1, same NLL) accepts either
    same = [_candidate("x", 0.8, nll=0.4), _candidate("y", 0.8, nll=0.4)]
    assert best_candidate_gate({"candidates": same, "selection": {"selected": "y"}}, 0.8)["passed"]


def test_best_candidate_gate_on_runs_without_candidates_or_selection() -> None:
    from edgeclf.evaluate.run import best_candidate_gate

    # old runs: the fine-tuned model against the linear probe, as before
    old = {"baselines": {"linear_probe": {"macro_f1": 0.9}}}
    assert not best_candidate_gate(old, 0.8)["passed"]
    assert best_candidate_gate(old, 0.95)["passed"]
    assert best_candidate_gate({}, 0.1)["passed"]
    # candidates recorded, but nothing says which one shipped, or a name that is not a candidate
    cands = [_candidate("finetune", 0.8), {"name": "broken"}, "junk"]
    assert not best_candidate_gate({"candidates": cands}, 0.8)["passed"]
    nowhere = best_candidate_gate({"candidates": cands, "selection": {"selected": "ghost"}}, 0.8)
    assert not nowhere["passed"] and "ghost" in nowhere["detail"]
    assert best_candidate_gate({"candidates": cands, "selection": {"selected": "finetune"}}, 0.8)["passed"]


def test_every_class_recalled_gate_names_the_missed_classes() -> None:
    from edgeclf.evaluate.run import every_class_recalled_gate

    per_class = {
        "a": {"recall": 0.9, "support": 10},
        "b": {"recall": 0.0, "support": 4},
        "c": {"recall": 0.0, "support": 2},
        "d": {"recall": 0.0, "support": 0},
    }  # d is not in this split: nothing to recall
    g = every_class_recalled_gate(per_class)
    assert g["passed"] is False and g["classes"] == ["b", "c"] and "b, c" in g["detail"]
    per_class["b"]["recall"] = per_class["c"]["recall"] = 0.25
    assert every_class_recalled_gate(per_class) == {**every_class_recalled_gate(per_class), "passed": True, "classes": []}


def _split_metrics(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """What an evaluation holds for a split, from labels and predictions alone (no model)."""
    from edgeclf.evaluate.calibration import calibration_summary
    from edgeclf.evaluate.metrics import bootstrap_ci

    # confidence = accuracy: calibrated, as far as a single confidence can be
    probs = _onehot_probs(pred.tolist(), len(classes), float(np.clip((pred == y).mean(), 0.5, 0.99)))
    m = full_metrics(y, probs, classes, top_ks=())
    m["ci"] = bootstrap_ci(y, pred, classes)
    m["confused_pairs"] = confused_pairs(m["confusion_matrix"], classes)
    cal = calibration_summary(np.log(probs), y, 1.0)
    m["calibration"] = {k: v for k, v in cal.items() if not k.startswith("reliability")}
    m["train_vs_heldout"] = {
        "splits": _side(m["macro_f1"], train_gap=0.02),
        "train_minus_val_macro_f1": 0.02,
        "overfitting": False,
    }
    return m


def _crafted_run(
    tmp_path: Path,
    train_metrics: dict[str, Any],
    y: np.ndarray,
    pred: np.ndarray,
    candidate_preds: dict[str, np.ndarray] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """A run directory with config, metrics.json, candidate predictions and a val evaluation; no checkpoint."""
    import yaml

    from edgeclf.evaluate.run import candidate_comparison, compute_verdict

    run = tmp_path / "run"
    classes = ["cat", "dog", "fox"]
    run.mkdir(parents=True)
    cfg = {
        "config": {"data": {"manifest": str(tmp_path / "splits.csv")}},
        "run": {
            "backbone": "lite0",
            "classes": classes,
            "dataset_fingerprint": "f" * 16,
            "amp": "off",
            "device": "cpu",
            "git_commit": None,
            "versions": {"torch": "x", "timm": "y"},
            "weights": {"source": "test", "location": "-"},
            "preprocess": {"crop_size": 64, "resize_size": 64, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3},
            "data_root": str(tmp_path),
        },
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (run / "metrics.json").write_text(json.dumps(train_metrics), encoding="utf-8")
    if candidate_preds is not None:
        _write_predictions(run, y, candidate_preds)
    m = _split_metrics(y, pred, classes)
    m["candidate_comparison"] = candidate_comparison(run, train_metrics, classes)
    m["verdict"] = compute_verdict(m, train_metrics, m["train_vs_heldout"]["splits"], False, 0)
    m.update({"split": "val", "test_reused": False, "temperature": 1.0, "classes": classes})
    (run / "eval" / "val").mkdir(parents=True)
    (run / "eval" / "val" / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    return run, m


def _selection_case(rng_seed: int = 0) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """finetune (shipped) clearly beats the majority class and is within noise of top_tune."""
    rng = np.random.default_rng(rng_seed)
    y = np.repeat([0, 1, 2], 60)
    finetune = np.where(rng.random(len(y)) < 0.85, y, (y + 1) % 3)
    top_tune = finetune.copy()
    fix = np.flatnonzero(finetune != y)[:1]
    top_tune[np.flatnonzero(finetune == y)[:3]] = (y[np.flatnonzero(finetune == y)[:3]] + 1) % 3
    top_tune[fix] = y[fix]
    preds = {"majority_class": np.zeros_like(y), "top_tune": top_tune, "finetune": finetune}
    f1 = {k: float(f1_score(y, v, labels=[0, 1, 2], average="macro", zero_division=0)) for k, v in preds.items()}
    train = {
        "candidates": [_candidate(k, f1[k], shippable=k != "majority_class") for k in preds],
        "selection": {
            "selected": "finetune",
            "rule": "highest validation macro-F1; ties: lower validation NLL",
            "reason": "finetune has the highest validation macro-F1.",
            "margins": {k: f1["finetune"] - f1[k] for k in preds if k != "finetune"},
        },
        "quality_gates": {"every_class_recalled": {"passed": True, "rule": "every class recalled on val", "classes": []}},
        "recipe": {
            "choices": [
                {
                    "key": "loss.class_weights",
                    "value": "effective",
                    "reason": "audit: imbalance ratio 14.2 > 3",
                    "source": "auto",
                },
                {"key": "finetune.epochs", "value": 3, "reason": "set on the command line", "source": "user"},
            ]
        },
    }
    return train, y, preds


def test_candidate_comparison_pairs_the_selected_with_each_other(tmp_path: Path) -> None:
    from edgeclf.evaluate.run import candidate_comparison

    train, y, preds = _selection_case()
    run, m = _crafted_run(tmp_path, train, y, preds["finetune"], preds)
    rows = {r["candidate"]: r for r in m["candidate_comparison"]}
    assert list(rows) == ["majority_class", "top_tune"]  # candidates' order, the selected left out
    assert rows["majority_class"]["significant"] and rows["majority_class"]["low"] > 0
    assert not rows["top_tune"]["significant"] and rows["top_tune"]["low"] <= 0 <= rows["top_tune"]["high"]
    for name, r in rows.items():
        assert r["diff"] == pytest.approx(train["selection"]["margins"][name])
        assert r["val_macro_f1"] == pytest.approx(next(c["val"]["macro_f1"] for c in train["candidates"] if c["name"] == name))
    assert m["verdict"]["gates"]["best_candidate_shipped"]["passed"]
    # predictions that do not fit the labels are left out, and said so
    logged: list[str] = []
    _write_predictions(run, y, {**preds, "top_tune": preds["top_tune"][:-1]})
    assert [r["candidate"] for r in candidate_comparison(run, train, ["cat", "dog", "fox"], log=logged.append)] == [
        "majority_class"
    ]
    assert any("top_tune" in line for line in logged)
    # nothing to compare: no selection, or the selected one's predictions missing, or no file
    assert candidate_comparison(run, {**train, "selection": {}}, ["cat", "dog", "fox"]) == []
    _write_predictions(run, y, {"majority_class": preds["majority_class"]})
    assert candidate_comparison(run, train, ["cat", "dog", "fox"], log=logged.append) == []
    (run / "candidates" / "val_predictions.npz").unlink()
    assert candidate_comparison(run, train, ["cat", "dog", "fox"]) == []


def test_report_shows_model_selection_intervals_and_recipe(tmp_path: Path) -> None:
    import re

    from edgeclf.evaluate.report import write_report

    train, y, preds = _selection_case()
    run, m = _crafted_run(tmp_path, train, y, preds["finetune"], preds)
    html = write_report(run).read_text(encoding="utf-8")
    section = html[html.index("<h2>Model selection</h2>") : html.index("<h2>Data</h2>")]
    assert html.index("<h2>Verdict</h2>") < html.index("<h2>Model selection</h2>")
    for name in ("majority_class", "top_tune", "finetune"):
        assert name in section
    assert "✔ shipped" in section and "(baseline, not shippable)" in section
    assert "<b>finetune</b> shipped" in section
    assert re.search(r"beats <b>majority_class</b>[^<]*by [^<]*interval[^<]*<span class=\"sig\">significant", section)
    assert re.search(r"<b>top_tune</b>[^<]*interval[^<]*<span class=\"noise\">within the noise", section)
    assert "<code>loss.class_weights = effective</code> — audit: imbalance ratio 14.2 &gt; 3" in section
    assert "(user)" in section and "(auto)" in section
    # intervals next to the headline numbers and per-class recall
    ci = m["ci"]
    assert f"{ci['macro_f1']['value']:.3f} [{ci['macro_f1']['low']:.3f}, {ci['macro_f1']['high']:.3f}]" in html
    assert f"[{100 * ci['accuracy']['low']:.1f}%, {100 * ci['accuracy']['high']:.1f}%]" in html
    r = ci["per_class_recall"]["dog"]
    assert f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" in html
    assert m["verdict"]["passed"] and 'class="failrow"' not in html and "some gates failed" not in html


def test_report_and_verdict_flag_a_shipped_runner_up_and_an_unrecalled_class(tmp_path: Path) -> None:
    from edgeclf.evaluate.report import write_report

    train, y, preds = _selection_case()
    train["selection"]["selected"] = "top_tune"  # not the best on validation
    train["quality_gates"]["every_class_recalled"] = {"passed": False, "rule": "every class recalled on val", "classes": ["fox"]}
    shipped = preds["top_tune"].copy()
    shipped[y == 2] = 0  # fox never recalled
    run, m = _crafted_run(tmp_path, train, y, shipped, preds)
    gates = m["verdict"]["gates"]
    assert not m["verdict"]["passed"]
    assert not gates["best_candidate_shipped"]["passed"] and gates["best_candidate_shipped"]["best"] == ["finetune"]
    assert not gates["every_class_recalled"]["passed"] and gates["every_class_recalled"]["classes"] == ["fox"]
    html = write_report(run).read_text(encoding="utf-8")
    assert [g for g, v in gates.items() if not v["passed"]] == ["best_candidate_shipped", "every_class_recalled"]
    assert "classes never recalled: fox" in html and html.count('class="failrow"') == 3  # two gates + the fox row
    assert "Training quality gate every_class_recalled failed" in html
    assert "It trails <b>finetune</b>" in html


def test_report_of_an_old_run_renders_without_the_new_keys(tmp_path: Path) -> None:
    from edgeclf.evaluate.report import write_report

    y = np.repeat([0, 1, 2], 10)
    run, m = _crafted_run(tmp_path, {"history": [], "finetuned": None}, y, y.copy())
    doc = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    del doc["ci"], doc["candidate_comparison"]  # written before intervals existed
    (run / "eval" / "val" / "metrics.json").write_text(json.dumps(doc))
    html = write_report(run).read_text(encoding="utf-8")
    assert "Model selection" not in html and "interval" not in html and "Verdict" in html
    assert m["verdict"]["gates"]["best_candidate_shipped"]["passed"]  # nothing recorded to compare against


def test_report_without_predictions_shows_margins_without_intervals(tmp_path: Path) -> None:
    from edgeclf.evaluate.report import write_report

    train, y, preds = _selection_case()
    del train["recipe"], train["quality_gates"]
    run, _ = _crafted_run(tmp_path, train, y, preds["finetune"])
    html = write_report(run).read_text(encoding="utf-8")
    assert "Model selection" in html and "margins come without intervals" in html
    assert "within the noise" not in html and "Automatic recipe choices" not in html


def test_the_training_split_is_sampled_for_the_overfitting_gap(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The train-vs-held-out gap needs the training split's level, not every image: a class-stratified,
    seeded sample (the same images each time, cached on its own) keeps the evaluation's cost flat."""
    import edgeclf.evaluate.run as run_mod
    from edgeclf.evaluate.run import Evaluation

    ev = Evaluation(tiny_run)
    full = ev.split_data("train")
    a, b = ev.split_data("train", sample=6), Evaluation(tiny_run).split_data("train", sample=6)
    assert len(full.paths) > 6 and a.paths == b.paths and 6 <= len(a.paths) < len(full.paths)
    assert set(a.y.tolist()) == set(full.y.tolist())  # every class kept
    at = {p: i for i, p in enumerate(full.paths)}
    assert np.allclose(a.logits, full.logits[[at[p] for p in a.paths]], atol=1e-5)  # the same model's figures
    monkeypatch.setattr(run_mod, "TRAIN_GAP_SAMPLE", 6)
    m = ev.evaluate("val", robustness=False, explain=False).to_json()
    train = m["train_vs_heldout"]["splits"]["train"]
    assert train["n"] == len(a.paths) and train["sampled_from"] == len(full.paths)
    assert "sampled_from" not in m["train_vs_heldout"]["splits"]["val"]


def test_a_class_with_too_few_images_is_named_as_thin_evidence(tmp_path: Path) -> None:
    """A class with 1 validation image has a recall of 0 or 1: the verdict says so in a note (it fails
    nothing), and the build report names it from the split's counts."""
    from edgeclf.evaluate.metrics import THIN_EVIDENCE_IMAGES, thin_evidence
    from edgeclf.evaluate.run import compute_verdict

    assert thin_evidence({"a": 40, "b": THIN_EVIDENCE_IMAGES, "c": 1}) == {"c": 1}
    m = {
        "macro_f1": 0.9,
        "per_class": {"a": {"recall": 0.9, "support": 40}, "c": {"recall": 1.0, "support": 1}},
        "train_vs_heldout": {"train_minus_val_macro_f1": 0.0, "overfitting": False},
        "calibration": {"ece_after": 0.01},
    }
    v = compute_verdict(m, {}, {"val": {"macro_f1": 0.9}}, False, 0, "validation")
    assert len(v["notes"]) == 1 and "c (1 image)" in v["notes"][0] and "validation" in v["notes"][0]
    m["per_class"]["c"]["support"] = 25
    assert compute_verdict(m, {}, {"val": {"macro_f1": 0.9}}, False, 0)["notes"] == []
    # the HTML report shows the note beside the verdict: a crafted run with 4 validation images of "fox"
    import html

    from edgeclf.evaluate.report import write_report

    train, y, preds = _selection_case()
    keep = np.flatnonzero((y != 2) | (np.arange(len(y)) % 15 == 0))
    run, crafted = _crafted_run(tmp_path, train, y[keep], preds["finetune"][keep])
    assert crafted["verdict"]["notes"] and "fox (4 images)" in crafted["verdict"]["notes"][0]
    page = html.unescape(write_report(run).read_text(encoding="utf-8"))
    assert f'<p class="warn">{crafted["verdict"]["notes"][0]}</p>' in page
