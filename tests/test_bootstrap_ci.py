"""Bootstrap confidence intervals: coverage, reproducibility, stratification, paired differences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from edgeclf.errors import EdgeclfError
from edgeclf.evaluate.metrics import (
    MetricInputError,
    bootstrap_ci,
    paired_bootstrap_diff,
    stratified_resamples,
)

CLASSES = ["a", "b", "c"]


def _noisy(y: np.ndarray, p_correct: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Predictions right with probability ``p_correct``, otherwise another class at random."""
    wrong = (y + rng.integers(1, n_classes, len(y))) % n_classes
    return np.where(rng.random(len(y)) < p_correct, y, wrong)


def test_point_values_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2, 3], [50, 30, 15, 5])
    pred = _noisy(y, 0.7, 4, rng)
    pred[y == 3] = 0  # class d is never recalled
    classes = ["a", "b", "c", "d"]
    ci = bootstrap_ci(y, pred, classes, n_resamples=200)
    assert ci["accuracy"]["value"] == pytest.approx(float((pred == y).mean()))
    assert ci["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, labels=range(4), average="macro", zero_division=0))
    recalls = recall_score(y, pred, labels=range(4), average=None, zero_division=0)
    for i, c in enumerate(classes):
        assert ci["per_class_recall"][c]["value"] == pytest.approx(recalls[i])
        assert ci["per_class_recall"][c]["low"] <= ci["per_class_recall"][c]["value"] <= ci["per_class_recall"][c]["high"]
    # a class that is never right is never right in any resample: no uncertainty to report
    assert ci["per_class_recall"]["d"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert ci["accuracy"]["low"] < ci["accuracy"]["value"] < ci["accuracy"]["high"]
    assert ci["method"] == "stratified bootstrap, percentile" and ci["n_resamples"] == 200 and ci["level"] == 0.95


def test_class_absent_from_split_has_no_recall_interval() -> None:
    y = np.array([0, 0, 1, 1, 1])
    ci = bootstrap_ci(y, np.array([0, 1, 1, 1, 0]), CLASSES, n_resamples=50)
    assert ci["per_class_recall"]["c"] == {"value": None, "low": None, "high": None}
    assert ci["per_class_recall"]["a"]["value"] == pytest.approx(0.5)


def test_interval_covers_the_true_accuracy_at_about_the_nominal_rate() -> None:
    # 200 simulated validation sets of 2 x 100 images from a model that is right with p = 0.8;
    # the 95 % interval should contain 0.8 in about 95 % of them (percentile bootstrap runs a
    # little narrow at this size: 0.90..0.99 is three binomial standard errors either side).
    p, n_sets = 0.8, 200
    rng = np.random.default_rng(12345)
    y = np.repeat([0, 1], 100)
    covered_acc = covered_recall = 0
    widths = []
    for k in range(n_sets):
        pred = _noisy(y, p, 2, rng)
        ci = bootstrap_ci(y, pred, ["x", "y"], n_resamples=400, seed=k)
        covered_acc += ci["accuracy"]["low"] <= p <= ci["accuracy"]["high"]
        r = ci["per_class_recall"]["x"]
        covered_recall += r["low"] <= p <= r["high"]
        widths.append(ci["accuracy"]["high"] - ci["accuracy"]["low"])
    assert 0.90 <= covered_acc / n_sets <= 0.99
    assert 0.88 <= covered_recall / n_sets <= 0.99
    # and the width is that of a binomial proportion: 2 * 1.96 * sqrt(p (1 - p) / n)
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / 200), rel=0.15)


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = _noisy(y, 0.75, 3, rng)
    a = bootstrap_ci(y, pred, CLASSES, seed=7)
    assert bootstrap_ci(y, pred, CLASSES, seed=7) == a
    b = bootstrap_ci(y, pred, CLASSES, seed=8)
    assert a["accuracy"]["value"] == b["accuracy"]["value"]
    assert (a["macro_f1"]["low"], a["macro_f1"]["high"]) != (b["macro_f1"]["low"], b["macro_f1"]["high"])
    assert b["seed"] == 8


def test_stratified_resamples_keep_class_counts() -> None:
    y = np.array([2, 0, 0, 1, 0, 2, 1, 0, 0, 0, 2])  # 6 / 2 / 3, interleaved
    blocks = list(stratified_resamples(y, 50, seed=1))
    idx = np.concatenate(blocks)
    assert idx.shape == (50, len(y))
    for row in idx:
        assert np.array_equal(np.bincount(y[row], minlength=3), np.bincount(y, minlength=3))
    # with replacement: some rows repeat an image, and the rows are not all alike
    assert any(len(set(row.tolist())) < len(y) for row in idx)
    assert len({tuple(row) for row in idx}) > 40
    # the block size is a memory bound only: the draws do not depend on it
    small = np.concatenate(list(stratified_resamples(y, 50, seed=1, block_items=35)))  # blocks of 3 rows
    assert np.array_equal(small, idx)


def test_a_class_of_one_image_is_in_every_resample() -> None:
    # without stratification a single "rare" image would be missing from ~37 % of resamples
    y = np.array([0] * 30 + [1])
    pred = np.array([0] * 30 + [1])
    ci = bootstrap_ci(y, pred, ["common", "rare"], n_resamples=300)
    assert ci["per_class_recall"]["rare"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert ci["macro_f1"]["low"] == 1.0


def test_paired_difference_of_a_model_with_itself_is_zero() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    pred = _noisy(y, 0.7, 3, rng)
    d = paired_bootstrap_diff(y, pred, pred, CLASSES)
    assert d["diff"] == 0.0 and d["low"] == 0.0 and d["high"] == 0.0
    assert d["significant"] is False and d["a"] == d["b"]


def test_paired_difference_clearly_better_model_is_significant() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 100)
    good = _noisy(y, 0.9, 3, rng)
    poor = _noisy(y, 0.6, 3, rng)
    d = paired_bootstrap_diff(y, good, poor, CLASSES)
    assert d["significant"] is True and 0 < d["low"] < d["diff"] < d["high"]
    assert d["diff"] == pytest.approx(d["a"] - d["b"])
    assert d["a"] == pytest.approx(f1_score(y, good, average="macro"))
    back = paired_bootstrap_diff(y, poor, good, CLASSES)
    assert back["significant"] is True and back["high"] < 0
    acc = paired_bootstrap_diff(y, good, poor, CLASSES, metric="accuracy")
    assert acc["diff"] == pytest.approx(float((good == y).mean() - (poor == y).mean()))


def test_paired_difference_two_images_apart_is_noise() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 100)
    a = _noisy(y, 0.8, 3, rng)
    b = a.copy()
    flip = np.flatnonzero(a != y)[:2]
    b[flip] = y[flip]  # b fixes two of a's mistakes
    d = paired_bootstrap_diff(y, b, a, CLASSES)
    assert d["diff"] > 0 and d["low"] <= 0 <= d["high"] and d["significant"] is False
    # pairing: far narrower than the two separate intervals would suggest
    ci = bootstrap_ci(y, a, CLASSES)
    assert d["high"] - d["low"] < (ci["macro_f1"]["high"] - ci["macro_f1"]["low"]) / 3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bootstrap_ci([0, 1], [0], CLASSES), "2 items but y_pred has 1"),
        (lambda: bootstrap_ci([0, 3], [0, 1], CLASSES), "outside 0..2"),
        (lambda: bootstrap_ci([], [], CLASSES), "empty"),
        (lambda: bootstrap_ci([0, 1], [0, 1], CLASSES, n_resamples=0), "n_resamples"),
        (lambda: bootstrap_ci([0, 1], [0, 1], CLASSES, level=1.0), "level"),
        (lambda: paired_bootstrap_diff([0, 1], [0, 1], [0, 1], CLASSES, metric="auc"), "macro_f1, accuracy"),
        (lambda: paired_bootstrap_diff([0, 1], [0, 1], [0], CLASSES), "2, 2 and 1 items"),
    ],
)
def test_bad_input_is_a_user_error(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MetricInputError, match=match) as e:
        call()
    assert isinstance(e.value, EdgeclfError)
