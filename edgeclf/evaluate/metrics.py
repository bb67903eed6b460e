"""Metrics that a ship / no-ship decision can rest on (scikit-learn underneath)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

#: Train macro-F1 above validation macro-F1 by more than this is flagged as overfitting:
#: on small data sets a gap of a few points is normal, ten points means memorisation.
OVERFIT_GAP = 0.10
#: Below this many images of a class in a split, one image moves the class's recall by more than 10
#: points and even a perfect recall's 95 % interval reaches below 0.7 (Clopper-Pearson, 9 of 9:
#: [0.66, 1]): the class's figures on that split are named as thin evidence.
THIN_EVIDENCE_IMAGES = 10


def thin_evidence(counts: dict[str, int]) -> dict[str, int]:
    """The classes with fewer than :data:`THIN_EVIDENCE_IMAGES` images among ``counts`` (class -> images)."""
    return {c: int(n) for c, n in counts.items() if int(n) < THIN_EVIDENCE_IMAGES}


def thin_evidence_note(classes: dict[str, int], where: str) -> str:
    """One sentence naming the classes of :func:`thin_evidence` on ``where`` (e.g. "validation")."""
    listed = ", ".join(f"{c} ({n} image{'s' if n != 1 else ''})" for c, n in classes.items())
    return (
        f"thin evidence on {where}: {listed}; under {THIN_EVIDENCE_IMAGES} images one image moves a class's recall by "
        "more than 10 points, so its figures there are not evidence either way (more images of it would be)"
    )


def full_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], top_ks: tuple[int, ...] = (2, 3, 5)
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/weighted F1, top-k, per-class P/R/F1/support, confusion."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))
        if len(set(y_true.tolist())) > 1
        else float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.round(cm_norm, 6).tolist(),
    }
    for k in top_ks:
        if k < len(classes):
            out[f"top{k}_accuracy"] = float(top_k_accuracy_score(y_true, probs, k=k, labels=labels))
    return out


def confused_pairs(cm: list[list[int]], classes: list[str], top: int = 10) -> list[dict[str, Any]]:
    """The most frequent (true, predicted) mistakes, largest first."""
    m = np.asarray(cm)
    pairs = [
        {"true": classes[i], "predicted": classes[j], "count": int(m[i, j]), "share_of_true": float(m[i, j] / max(1, m[i].sum()))}
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and m[i, j] > 0
    ]
    return sorted(pairs, key=lambda d: (-d["count"], d["true"], d["predicted"]))[:top]


# The bootstrap and the softmax live in edgeclf.stats (training and serving use them too); re-exported here.
from edgeclf.stats import (  # noqa: E402,F401
    BOOTSTRAP_METHOD,
    MetricInputError,
    bootstrap_ci,
    paired_bootstrap_diff,
    softmax,
    stratified_resamples,
)
