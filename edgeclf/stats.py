"""Honest uncertainty (stratified bootstrap confidence intervals) and the calibrated softmax."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeclf.errors import EdgeclfError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64: the bundles' calibrated probabilities."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


#: Resampled items held in memory at once (indices + gathered labels, int64): about 50 MB.
#: Larger splits are resampled in blocks of rows; results do not depend on the block size.
_BOOTSTRAP_BLOCK_ITEMS = 2_000_000

BOOTSTRAP_METHOD = "stratified bootstrap, percentile"


class MetricInputError(EdgeclfError):
    """Labels or predictions handed to a metric are inconsistent (lengths, class indices, settings)."""


def _labels(y: Any, n_classes: int, what: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise MetricInputError(f"{what} must be a 1-D array of class indices, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise MetricInputError(f"{what} must hold integer class indices")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise MetricInputError(f"{what} holds class indices outside 0..{n_classes - 1}")
    return a


def _check_settings(n_resamples: int, level: float) -> None:
    if int(n_resamples) < 1:
        raise MetricInputError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < float(level) < 1.0:
        raise MetricInputError(f"level must lie strictly between 0 and 1, got {level}")


def stratified_resamples(
    y_true: np.ndarray, n_resamples: int, seed: int = 0, block_items: int = _BOOTSTRAP_BLOCK_ITEMS
) -> Iterator[np.ndarray]:
    """Blocks of bootstrap resamples, each row one resample: positions into ``y_true``.

    Every row draws, within each true class, as many items as that class has, with
    replacement, so each resample keeps the class sizes of the original split (the
    evaluated split was itself drawn per class); within a row the items come class by
    class, in class order. The draws depend only on ``y_true`` and ``seed``, not on ``block_items``.
    """
    y_true = np.asarray(y_true)
    groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    n = len(y_true)
    # one generator per class, spawned from the seed, so a block boundary never shifts a draw
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(groups))]
    rows = max(1, block_items // max(1, n))
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        yield np.concatenate([g[r.integers(0, len(g), size=(b, len(g)))] for g, r in zip(groups, rngs, strict=True)], axis=1)
        done += b


def _counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (rows x items) label arrays: true positives and predictions, per class (rows x classes)."""
    rows = y_true.shape[0]
    offset = (np.arange(rows, dtype=np.int64) * n_classes)[:, None]
    size = rows * n_classes
    tp = np.bincount((offset + y_true)[y_true == y_pred], minlength=size).reshape(rows, n_classes)
    predicted = np.bincount((offset + y_pred).ravel(), minlength=size).reshape(rows, n_classes)
    return tp, predicted


def _scores(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and per-class recall from confusion counts (rows x classes).

    F1 of a class is 2 TP / (support + predicted), 0 where both are 0, averaged over every
    class: the same as scikit-learn's ``f1_score(average="macro", zero_division=0)`` over
    all labels.
    """
    tp = tp.astype(np.float64)
    denom = support[None, :] + predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2.0 * tp / np.where(denom > 0, denom, 1), 0.0)
        recall = tp / np.where(support > 0, support, 1)[None, :]
    return {"accuracy": tp.sum(axis=1) / max(1, int(support.sum())), "macro_f1": f1.mean(axis=1), "recall": recall}


def _interval(value: float, samples: np.ndarray, level: float) -> dict[str, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"value": float(value), "low": float(lo), "high": float(hi)}


def _bootstrap_scores(
    y_true: np.ndarray, preds: list[np.ndarray], n_classes: int, n_resamples: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Scores of each prediction array on the same stratified resamples (one row per resample)."""
    support = np.bincount(y_true, minlength=n_classes).astype(np.float64)
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in preds]
    for idx in stratified_resamples(y_true, n_resamples, seed):
        t = y_true[idx]
        for k, p in enumerate(preds):
            parts[k].append(_scores(*_counts(t, p[idx], n_classes), support))
    return [{key: np.concatenate([d[key] for d in ps]) for key in ps[0]} for ps in parts]


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Percentile intervals for accuracy, macro-F1 and each class's recall.

    Stratified bootstrap: each of ``n_resamples`` resamples draws, within every true class,
    that class's size in items with replacement (see :func:`stratified_resamples`); the
    interval is the central ``level`` share of the resampled values. Per-resample scores
    come from confusion counts, so 1,000 resamples of a few hundred items take milliseconds.
    A class with no items in ``y_true`` has no recall to resample: its interval is ``None``.
    """
    _check_settings(n_resamples, level)
    k = len(classes)
    t = _labels(y_true, k, "y_true")
    p = _labels(y_pred, k, "y_pred")
    if len(t) != len(p):
        raise MetricInputError(f"y_true has {len(t)} items but y_pred has {len(p)}")
    if len(t) == 0:
        raise MetricInputError("no items to resample: y_true is empty")
    support = np.bincount(t, minlength=k).astype(np.float64)
    point = _scores(*_counts(t[None, :], p[None, :], k), support)
    boot = _bootstrap_scores(t, [p], k, n_resamples, seed)[0]
    recall: dict[str, dict[str, float | None]] = {}
    for i, c in enumerate(classes):
        if support[i] > 0:
            recall[c] = _interval(point["recall"][0, i], boot["recall"][:, i], level)
        else:
            recall[c] = {"value": None, "low": None, "high": None}
    return {
        "method": BOOTSTRAP_METHOD,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "level": float(level),
        "n": int(len(t)),
        "accuracy": _interval(point["accuracy"][0], boot["accuracy"], level),
        "macro_f1": _interval(point["macro_f1"][0], boot["macro_f1"], level),
        "per_class_recall": recall,
    }


#: Metrics :func:`paired_bootstrap_diff` can compare.
PAIRED_METRICS = ("macro_f1", "accuracy")


def paired_bootstrap_diff(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    classes: list[str],
    metric: str = "macro_f1",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Interval of ``metric(a) - metric(b)``, both scored on the same stratified resamples.

    Pairing removes the variation the two models share (the same hard images land in both),
    so the interval is far tighter than the difference of two separate intervals.
    ``significant`` is true when the interval excludes 0.
    """
    if metric not in PAIRED_METRICS:
        raise MetricInputError(f"metric must be one of {', '.join(PAIRED_METRICS)}, got {metric!r}")
    _check_settings(n_resamples, level)
    k = len(classes)
    t = _labels(y_true, k, "y_true")
    a = _labels(pred_a, k, "pred_a")
    b = _labels(pred_b, k, "pred_b")
    if not len(t) == len(a) == len(b):
        raise MetricInputError(f"y_true, pred_a and pred_b have {len(t)}, {len(a)} and {len(b)} items")
    if len(t) == 0:
        raise MetricInputError("no items to resample: y_true is empty")
    support = np.bincount(t, minlength=k).astype(np.float64)
    va = float(_scores(*_counts(t[None, :], a[None, :], k), support)[metric][0])
    vb = float(_scores(*_counts(t[None, :], b[None, :], k), support)[metric][0])
    sa, sb = _bootstrap_scores(t, [a, b], k, n_resamples, seed)
    ci = _interval(va - vb, sa[metric] - sb[metric], level)
    ra = _scores(*_counts(t[None, :], a[None, :], k), support)["recall"][0]
    rb = _scores(*_counts(t[None, :], b[None, :], k), support)["recall"][0]
    recall = []
    for c in range(k):
        rc = _interval(float(ra[c] - rb[c]), sa["recall"][:, c] - sb["recall"][:, c], level)
        recall.append(
            {"class": classes[c], "support": int(support[c]), "diff": rc["value"], "low": rc["low"], "high": rc["high"]}
        )
    return {
        "method": f"paired {BOOTSTRAP_METHOD}",
        "metric": metric,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "level": float(level),
        "a": va,
        "b": vb,
        "diff": ci["value"],
        "low": ci["low"],
        "high": ci["high"],
        "significant": bool(ci["low"] > 0 or ci["high"] < 0),
        "recall": recall,
    }


def balanced_log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean over the classes present of each class's mean negative log-likelihood (nats):
    every class weighs the same, as in macro-F1, but every image's confidence counts."""
    t = np.asarray(y_true, np.int64)
    nll = -np.log(np.clip(np.asarray(probs, np.float64)[np.arange(len(t)), t], 1e-12, None))
    return float(np.mean([nll[t == c].mean() for c in np.unique(t)]))


def paired_bootstrap_loss_diff(
    y_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Interval of ``balanced_log_loss(b) - balanced_log_loss(a)`` (positive: ``a`` is better) on
    the same stratified resamples as :func:`paired_bootstrap_diff`.

    A proper scoring rule on every image is a far less noisy comparison of two feature sets than
    macro-F1, whose value on a small class turns on a handful of decisions.
    """
    _check_settings(n_resamples, level)
    t = np.asarray(y_true, np.int64)
    pa, pb = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    if pa.shape != pb.shape or pa.ndim != 2 or len(pa) != len(t):
        raise MetricInputError(f"probs_a {pa.shape} and probs_b {pb.shape} must both be (items, classes) for {len(t)} items")
    if len(t) == 0:
        raise MetricInputError("no items to resample: y_true is empty")
    rows = np.arange(len(t))
    # per-image loss difference, then its class-balanced mean on each resample
    d = np.log(np.clip(pa[rows, t], 1e-12, None)) - np.log(np.clip(pb[rows, t], 1e-12, None))
    present = np.unique(t)
    weight = np.zeros(len(t))
    for c in present:
        weight[t == c] = 1.0 / (np.sum(t == c) * len(present))
    samples = np.concatenate([(d[idx] * weight[idx]).sum(axis=1) for idx in stratified_resamples(t, n_resamples, seed)])
    ci = _interval(float((d * weight).sum()), samples, level)
    return {"diff": ci["value"], "low": ci["low"], "high": ci["high"]}
