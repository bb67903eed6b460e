"""The training run directory is read through typed documents: a valid run round-trips, fields a
newer edgeclf adds survive a re-write, and a damaged or foreign file is one ConfigError naming the
file and the field (no training here: hand-written documents)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from edgeclf.errors import ConfigError
from edgeclf.preprocess import PreprocessSpec
from edgeclf.train.config import TrainConfig
from edgeclf.train.record import TrainMetrics, read_metrics, read_run_config, write_metrics

SPEC = PreprocessSpec(resize_size=256, crop_size=224, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def _scores(f1: float) -> dict:
    return {"accuracy": 0.8, "macro_f1": f1, "n": 10, "nll": 0.5, "per_class_recall": {"a": 1.0, "b": 0.0}}


def _metrics() -> dict:
    return {
        "schema_version": "1.1",
        "classes": ["a", "b"],
        "split": "val",
        "baselines": {"majority_class": {"macro_f1": 0.33}, "linear_probe": {"macro_f1": 0.6}},
        "candidates": [
            {"name": "majority_class", "description": "d", "epoch": 0, "seconds": 0.0, "shippable": True, "val": _scores(0.33)},
            {"name": "linear_probe", "description": "d", "epoch": 0, "seconds": 1.0, "shippable": True, "val": _scores(0.6)},
        ],
        "selection": {"selected": "linear_probe", "rule": "r", "reason": "why", "margins": {"majority_class": 0.27}},
        "quality_gates": {"every_class_recalled": {"passed": False, "classes": ["b"], "rule": "r"}},
        "finetuned": {"candidate": "linear_probe", "epoch": 0, "accuracy": 0.8, "macro_f1": 0.6, "n": 10, "nll": 0.5},
        "history": [],
        "recipe": {"choices": [{"key": "loss.class_weights", "value": "effective", "reason": "x", "source": "auto"}]},
        "stopped_early": False,
        "test_split": "untouched",
    }


def _config(tmp_path: Path) -> dict:
    cfg = TrainConfig.model_validate({"data": {"manifest": str(tmp_path / "splits.csv")}})
    return {
        "config": json.loads(cfg.model_dump_json()),
        "recipe": {"facts": {"num_train": 4}, "choices": []},
        "run": {
            "backbone": "tf_efficientnet_lite0",
            "classes": ["a", "b"],
            "preprocess": SPEC.to_dict(),
            "data_root": str(tmp_path),
            "dataset_fingerprint": "sha256:0",
            "amp": "off",
        },
    }


def test_metrics_round_trip_keeps_fields_a_newer_version_adds(tmp_path: Path) -> None:
    raw = _metrics() | {"search": {"best_trial": 3}}
    (tmp_path / "metrics.json").write_text(json.dumps(raw), encoding="utf-8")
    m = read_metrics(tmp_path)
    assert m.selection is not None and m.selection.selected == "linear_probe"
    assert m.candidate_macro_f1() == {"majority_class": 0.33, "linear_probe": 0.6}
    assert m.baseline_macro_f1() == {"majority_class": 0.33, "linear_probe": 0.6}
    assert not m.quality_gates["every_class_recalled"].passed
    assert m.finetuned.candidate == "linear_probe" and m.finetuned.nll == 0.5  # an open field, kept
    write_metrics(tmp_path, m)
    again = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert again["search"] == {"best_trial": 3}
    assert again["candidates"][1]["val"]["per_class_recall"] == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda m: m["candidates"][0].pop("val"), "candidates.0.val"),
        (lambda m: m["candidates"][0]["val"].pop("accuracy"), "candidates.0.val.accuracy"),
        (lambda m: m["candidates"][1]["val"].update(macro_f1="high"), "candidates.1.val.macro_f1"),
        (lambda m: m.update(schema_version="9.0"), "schema_version"),
        (lambda m: m["selection"].pop("selected"), "selection.selected"),
        (
            lambda m: m.update(quality_gates={"every_class_recalled": {"classes": []}}),
            "quality_gates.every_class_recalled.passed",
        ),
    ],
)
def test_damaged_metrics_name_the_file_and_field(tmp_path: Path, damage, field: str) -> None:
    raw = _metrics()
    damage(raw)
    (tmp_path / "metrics.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match="metrics\\.json: " + re.escape(field)):
        read_metrics(tmp_path)


def test_unreadable_or_missing_metrics(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did not finish"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON object"):
        read_metrics(tmp_path)


def test_write_refuses_a_document_that_does_not_validate(tmp_path: Path) -> None:
    raw = _metrics()
    raw["candidates"][0]["val"].pop("macro_f1")
    with pytest.raises(ValueError, match="macro_f1"):
        write_metrics(tmp_path, raw)
    assert not (tmp_path / "metrics.json").exists()  # nothing half-written


def test_run_config_is_validated(tmp_path: Path) -> None:
    doc = _config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    rc = read_run_config(tmp_path)
    assert rc.backbone == "tf_efficientnet_lite0" and rc.run.spec() == SPEC
    assert rc.manifest == tmp_path / "splits.csv"
    assert rc.run.model_extra == {"amp": "off"}

    bad = _config(tmp_path)
    bad["config"]["finetune"]["epochs_typo"] = 3  # a key this edgeclf does not know
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml: config\.finetune\.epochs_typo"):
        read_run_config(tmp_path)

    bad = _config(tmp_path)
    bad["run"]["preprocess"]["interpolation"] = "lanczos"  # not one the runtime implements
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml: run\.preprocess.*lanczos"):
        read_run_config(tmp_path)

    (tmp_path / "config.yaml").write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_run_config(tmp_path)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="not a training run directory"):
        read_run_config(tmp_path)


def test_metrics_from_an_older_run_without_candidates_still_read() -> None:
    m = TrainMetrics.model_validate({"schema_version": "1.0", "classes": ["a"], "finetuned": {"macro_f1": 0.5, "epoch": 2}})
    assert m.selection is None and m.candidates == [] and m.finetuned.macro_f1 == 0.5


def test_a_re_write_adds_no_part_the_document_did_not_have(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"finetuned": None, "history": []}), encoding="utf-8")
    m = read_metrics(tmp_path)
    assert m.finetuned.macro_f1 is None and m.selection is None  # typed access, with defaults
    assert m.to_json() == {"history": []}  # the null part reads as absent; no default is written


def _split_doc() -> dict:
    return {
        "split": "val",
        "classes": ["a", "b"],
        "n": 10,
        "accuracy": 0.8,
        "balanced_accuracy": 0.75,
        "macro_f1": 0.7,
        "weighted_f1": 0.78,
        "per_class": {c: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 5} for c in ("a", "b")},
        "calibration": {"temperature": 1.2, "ece_before": 0.1, "ece_after": 0.05, "nll_before": 0.6, "nll_after": 0.5},
        "verdict": {"passed": True, "gates": {"beats_majority": {"passed": True, "rule": "r"}}},
        "robustness": {"rows": [1, 2]},  # a section only the report reads: kept as it is
    }


def test_split_evaluation_is_typed_and_checked_when_read(tmp_path: Path) -> None:
    from edgeclf.evaluate.record import read_split_evaluation, write_split_evaluation

    assert read_split_evaluation(tmp_path, "val") is None  # not evaluated
    doc = write_split_evaluation(tmp_path, _split_doc())
    assert doc.per_class["a"].support == 5 and doc.calibration.temperature == 1.2
    back = read_split_evaluation(tmp_path, "val")
    assert back is not None and back.to_json() == _split_doc() and back.policy_document() is None
    bad = _split_doc()
    del bad["calibration"]["ece_after"]
    (tmp_path / "eval" / "val" / "metrics.json").write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"eval/val/metrics\.json: calibration\.ece_after"):
        read_split_evaluation(tmp_path, "val")
    with pytest.raises(ValueError, match="per_class"):
        write_split_evaluation(tmp_path, {k: v for k, v in _split_doc().items() if k != "per_class"})
