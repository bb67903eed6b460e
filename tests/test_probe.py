"""The linear probe: logistic regression on standardised features, its L2 strength chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from edgeclf.train.probe import ABSENT_BIAS, C_GRID, PATIENCE, fit_probe


def _blobs(n_per: int, n_classes: int, dim: int, seed: int, scale: float = 1.0, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 1.0, (n_classes, dim))
    x = np.concatenate([centres[c] + rng.normal(0, scale, (n_per, dim)) for c in range(n_classes)])
    y = np.repeat(np.arange(n_classes), n_per)
    # features on different scales and with an offset, as pooled CNN features are
    return x * np.geomspace(0.3, 3, dim) + offset, y


def test_folded_head_equals_the_standardised_model_and_separates_classes():
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = _blobs(60, 4, 16, seed=0, scale=1.5, offset=0.5)
    xva, yva = _blobs(30, 4, 16, seed=1, scale=1.5, offset=0.5)
    fit = fit_probe(xtr, ytr, xva, yva, 4)
    assert fit.c in C_GRID and fit.weight.shape == (4, 16) and fit.bias.shape == (4,)
    mu, sd = xtr.mean(0), np.sqrt(xtr.var(0).mean())
    ref = LogisticRegression(C=fit.c, max_iter=2000, tol=1e-8).fit((xtr - mu) / sd, ytr)
    ours = xva @ fit.weight.T.astype(np.float64) + fit.bias
    assert (ours.argmax(1) == ref.predict((xva - mu) / sd)).mean() >= 0.98
    assert (ours.argmax(1) == yva).mean() > 0.8
    # the sweep records every value it tried, strongest regularisation first
    cs = [r["c"] for r in fit.sweep]
    assert cs == sorted(cs) and cs[0] == C_GRID[0]
    best = max(fit.sweep, key=lambda r: (r["val_macro_f1"], -r["val_nll"]))
    assert best["c"] == fit.c


def test_the_sweep_stops_after_patience_and_is_reproducible():
    xtr, ytr = _blobs(8, 3, 200, seed=2, scale=4.0)
    xva, yva = _blobs(100, 3, 200, seed=3, scale=4.0)
    fit = fit_probe(xtr, ytr, xva, yva, 3)
    again = fit_probe(xtr, ytr, xva, yva, 3)
    assert again.c == fit.c and np.array_equal(again.weight, fit.weight)
    keys = [(r["val_macro_f1"], -r["val_nll"]) for r in fit.sweep]
    best = keys.index(max(keys))
    assert fit.sweep[best]["c"] == fit.c
    after = len(keys) - 1 - best
    assert after <= PATIENCE
    if len(fit.sweep) < len(C_GRID):  # stopped early: exactly PATIENCE values after the best, none better
        assert after == PATIENCE


def test_a_class_absent_from_training_is_never_predicted():
    xtr, ytr = _blobs(40, 4, 8, seed=4)
    keep = ytr != 2
    xva, yva = _blobs(20, 4, 8, seed=5)
    fit = fit_probe(xtr[keep], ytr[keep], xva, yva, 4)
    logits = xva @ fit.weight.T + fit.bias
    assert fit.bias[2] == pytest.approx(ABSENT_BIAS) and not np.any(fit.weight[2])
    assert not np.any(logits.argmax(1) == 2)


def test_binary_and_single_class_training_sets():
    xtr, ytr = _blobs(40, 2, 6, seed=6)
    xva, yva = _blobs(20, 2, 6, seed=7)
    fit = fit_probe(xtr, ytr, xva, yva, 2)
    assert ((xva @ fit.weight.T + fit.bias).argmax(1) == yva).mean() > 0.8
    one = fit_probe(xtr[ytr == 1], ytr[ytr == 1], xva, yva, 2)
    assert np.all((xva @ one.weight.T + one.bias).argmax(1) == 1)


def test_class_weights_move_the_boundary_towards_the_large_class():
    # 200 of class 0 and 10 of class 1, overlapping: weighting class 1 up recalls more of it
    rng = np.random.default_rng(8)
    xtr = np.concatenate([rng.normal(0, 1, (200, 4)), rng.normal(1.0, 1, (10, 4))])
    ytr = np.array([0] * 200 + [1] * 10)
    xva = np.concatenate([rng.normal(0, 1, (200, 4)), rng.normal(1.0, 1, (200, 4))])
    yva = np.array([0] * 200 + [1] * 200)
    plain = fit_probe(xtr, ytr, xva, yva, 2, grid=(1.0,))
    weighted = fit_probe(xtr, ytr, xva, yva, 2, class_weight=np.array([0.1, 1.9]), grid=(1.0,))

    def recall1(f):
        return float(((xva @ f.weight.T + f.bias).argmax(1)[yva == 1] == 1).mean())

    assert recall1(weighted) > recall1(plain) + 0.2


def test_weights_keep_the_features_proportions():
    # a feature that varies 1000x less than the others must not get 1000x the weight: the
    # head is scaled as a whole, so quantising its rows keeps every feature's contribution
    rng = np.random.default_rng(10)
    y = np.repeat(np.arange(2), 100)
    x = rng.normal(0, 1, (200, 8)) + y[:, None] * 1.0
    x[:, 0] = 1e-3 * rng.normal(0, 1, 200) + 1e-3 * y
    fit = fit_probe(x[:150], y[:150], x[150:], y[150:], 2, grid=(1.0,))
    assert np.abs(fit.weight[:, 0]).max() < np.abs(fit.weight[:, 1:]).max()


def test_nearly_constant_features_do_not_become_huge_weights():
    # features with a large mean and a tiny spread (as a randomly initialised network gives):
    # standardising by the spread alone would need weights ~1e6 and a bias cancelling them,
    # and the exported head would lose its logits' precision in fp32
    rng = np.random.default_rng(9)
    y = np.repeat(np.arange(3), 30)
    signal = np.eye(3)[y] @ rng.normal(0, 1, (3, 16))
    x = 0.4 + 1e-6 * (signal + rng.normal(0, 0.5, (90, 16)))
    fit = fit_probe(x[:60], y[:60], x[60:], y[60:], 3)
    logits = x @ fit.weight.T.astype(np.float64) + fit.bias
    assert np.abs(fit.weight).max() * 0.4 * 16 < 1e4  # cancellation bounded
    assert np.abs(logits).max() < 50
    # an all-zero feature keeps weight 0
    z = np.concatenate([x, np.zeros((90, 1))], axis=1)
    assert not np.any(fit_probe(z[:60], y[:60], z[60:], y[60:], 3).weight[:, -1])
