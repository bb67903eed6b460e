"""Hand-written stage results of a build, in the layout ``OUT/stages/<stage>.json`` records them
(for tests that need a build's documents without running one)."""

from __future__ import annotations

import copy
from typing import Any

_SCORES = {"accuracy": 0.9, "balanced_accuracy": 0.8833, "macro_f1": 0.8812}
_CI = {"macro_f1": {"low": 0.71, "high": 0.95, "point": 0.8812}, "level": 0.95}
_SIDE = {"macro_f1": 0.85, "accuracy": 0.86, "coverage": 0.92, "selective_accuracy": 0.93, "recall": {"a": 0.9, "b": 0.8}}

STAGE_RESULTS: dict[str, dict[str, Any]] = {
    "audit": {"num_images": 30, "num_classes": 3, "imbalance_ratio": 1.0, "median_short_side": 64, "audit": "audit/audit.json"},
    "split": {
        "fingerprint": "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6",
        "counts": {"train": {"a": 7, "b": 7, "c": 7}, "val": {"a": 2, "b": 2, "c": 2}, "test": {"a": 1, "b": 1, "c": 1}},
        "manifest": "splits.csv",
    },
    "select": {
        "backbone": "tf_efficientnet_lite0",
        "resolution": 224,
        "runtime": "onnxruntime/CPU",
        "max_resolution": 256,
        "precision": "fp32",
        "latency_ms_p95_estimate": 6.25,
        "latency_source": "estimate",
        "memory_mb": 48.0,
        "file_mb": 18.5,
        "accuracy": 74.8,
        "justification": "tf_efficientnet_lite0 at 224 px, fp32 on onnxruntime/CPU: the most accurate that fits.",
        "selection": "selection.json",
    },
    "train": {
        "run": "run",
        "checkpoint_sha256": "ab" * 32,
        "backbone": "tf_efficientnet_lite0",
        "search": False,
        "val_macro_f1": 0.8812,
        "val_accuracy": 0.9,
        "best_epoch": 3,
        "candidate": "linear_probe",
        "image_size": 224,
        "baselines": {"majority": 0.1667},
        "candidates": {"linear_probe": 0.8812, "finetune": 0.84},
        "selection": {"selected": "linear_probe", "rule": "highest validation macro-F1", "reason": "by 0.04", "margins": {}},
        "quality_gates": {"every_class_recalled": {"passed": False, "classes": ["c"]}},
        "recipe": [{"key": "model.image_size", "value": 224, "reason": "small objects", "source": "auto"}],
    },
    "evaluate": {
        "val": _SCORES,
        "test": {"accuracy": 0.8, "balanced_accuracy": 0.7778, "macro_f1": None},
        "val_ci": _CI,
        "test_ci": None,
        "temperature": 1.42,
        "report": "run/report/index.html",
        "decision": {
            "describe": "argmax with recall(c) >= 0.9",
            "val": {
                **_SIDE,
                "argmax": {**_SIDE, "coverage": 1.0},
                "ood": {"dir": "ood", "ood_images": 4, "auroc": 0.91, "fpr_at_95_tpr": 0.3},
            },
        },
    },
    "export": {
        "bundle": "bundle",
        "artifacts": ["onnx/fp32", "openvino/fp32"],
        "failed": ["onnx/int8: insufficient evidence (6 images)"],
        "parity": [
            {
                "format": "eager (torch)",
                "precision": "fp32",
                "status": "reference",
                "size_mb": None,
                "macro_f1": 0.8812,
                "delta_macro_f1": None,
                "agreement": None,
                "ms_per_image": None,
                "error": None,
                "decision_agreement": None,
                "decision_match": None,
            },
            {
                "format": "onnx",
                "precision": "int8",
                "status": "insufficient_evidence",
                "size_mb": 4.6,
                "macro_f1": 0.8,
                "delta_macro_f1": -0.0812,
                "agreement": 0.8333,
                "ms_per_image": 1.25,
                "error": "insufficient evidence (6 images)",
                "decision_agreement": 0.8333,
                "decision_match": 1.0,
            },
        ],
    },
    "benchmark": {
        "source": "measured",
        "why": "this host is the profile's device",
        "latency_ms_p95": 3.5,
        "budget_ms": 50.0,
        "fits": True,
        "rows": [
            {
                "runtime": "c-runtime/onnxruntime",
                "precision": "fp32",
                "artifact": "model.onnx",
                "configuration": "selected",
                "p50_ms": 3.1,
                "p95_ms": 3.5,
                "p99_ms": 3.9,
            }
        ],
        "label": "measured on this host, end to end through the C runtime (640x480 RGB8 frame -> top-5)",
    },
    "package": {"package": "out-x86-64-avx512.tar.gz", "sha256": "cd" * 32, "size_mb": 31.42, "prebuilt_library": True},
    "report": {"report": "report.md", "summary": "build.json"},
}

#: the estimate a benchmark gives for another device: no timed rows
ESTIMATE: dict[str, Any] = {
    "source": "estimate",
    "why": "the profile's device is a GPU",
    "latency_ms_p95": 3.0,
    "budget_ms": 20.0,
    "fits": True,
    "label": "estimated by the cost model (the profile's device is a GPU); measure on the device",
}


def stage_results() -> dict[str, dict[str, Any]]:
    """A fresh copy of every stage's result."""
    return copy.deepcopy(STAGE_RESULTS)
