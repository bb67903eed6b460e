"""Decision policies: hand-computed cases, fits that hold on validation by construction, clear
errors for bad requests, and the C runtime deciding exactly as the Python reference does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgeclf.evaluate.decision import (
    ADJUSTED,
    ARGMAX,
    COSTS,
    REJECT,
    RULES,
    UNKNOWN,
    DecisionPolicy,
    PolicyError,
    RejectRule,
    decide,
    fit_policy,
    load_costs,
    make_request,
    ood_split,
    policy_metrics,
    scores,
)
from tests.conftest import blob_image, make_synthetic_bundle, save

CLASSES = ["a", "b", "c"]


def logits_of(p: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray(p, dtype=np.float64)).astype(np.float32)


def synthetic(n: int = 400, seed: int = 0, skew: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 3-class model biased towards class 0 (the minority classes are under-predicted)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.6, 0.25, 0.15])
    z = rng.normal(0, 1, (n, 3))
    z[np.arange(n), y] += 1.2
    z[:, 0] += skew
    return z.astype(np.float32), y


# ---- hand-computed -----------------------------------------------------------------------------
def test_cost_matrix_decision_is_bayes_optimal_by_hand() -> None:
    # p = (0.7, 0.3); deciding 0 when the truth is 1 costs 10, the reverse 1:
    # risk(0) = 0.3 * 10 = 3.0, risk(1) = 0.7 * 1 = 0.7  -> decide 1 (the costs moved it)
    pol = DecisionPolicy(costs=[[0, 1], [10, 0]])
    d = decide(logits_of([[0.7, 0.3], [0.95, 0.05]]), 1.0, pol)
    # second image: risk(0) = 0.05 * 10 = 0.5, risk(1) = 0.95 -> stays 0 (argmax)
    assert d.index.tolist() == [1, 0]
    assert d.rule.tolist() == [COSTS, ARGMAX]
    assert d.probability[0] == pytest.approx(0.3) and d.argmax.tolist() == [0, 0]


def test_prior_correction_bias_by_hand() -> None:
    # log p + b: with b = (0, log 3) the class-1 score 0.3 * 3 = 0.9 beats 0.7; 0.2 * 3 = 0.6 does not beat 0.8
    pol = DecisionPolicy(bias=[0.0, math.log(3.0)])
    d = decide(logits_of([[0.7, 0.3], [0.8, 0.2]]), 1.0, pol)
    assert d.index.tolist() == [1, 0] and d.rule.tolist() == [ADJUSTED, ARGMAX]


def test_reject_scores_by_hand() -> None:
    z = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    t = 2.0
    mp = scores(z, t, "max_probability")
    assert mp == pytest.approx([math.exp(1) / (math.exp(1) + 2), 1 / 3])
    assert scores(z, t, "energy") == pytest.approx([t * math.log(math.exp(1) + 2), t * math.log(3)])
    d = decide(z, t, DecisionPolicy(reject=RejectRule(score="max_probability", threshold=0.4)))
    assert d.index.tolist() == [0, UNKNOWN] and d.rule.tolist() == [ARGMAX, REJECT]
    assert d.probability[1] == pytest.approx(1 / 3)  # the top class's probability when unknown


def test_no_policy_is_argmax_with_lower_index_on_ties() -> None:
    z = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]], dtype=np.float32)
    d = decide(z, 1.0, None)
    assert d.index.tolist() == [0, 1] and set(d.rule.tolist()) == {ARGMAX}


# ---- fits (validation only) ----------------------------------------------------------------------
def test_macro_f1_prior_correction_improves_validation_and_lifts_minorities() -> None:
    z, y = synthetic()
    pol = fit_policy(make_request(optimize="macro-f1"), z, y, 1.0, CLASSES)
    det = pol.details["macro_f1"]
    assert det["val_macro_f1_after"] > det["val_macro_f1_before"] + 0.02
    assert pol.bias is not None and pol.bias[0] == 0.0 and pol.bias[1] > 0 and pol.bias[2] > 0
    d = decide(z, 1.0, pol)
    assert policy_metrics(y, d, CLASSES)["macro_f1"] == pytest.approx(det["val_macro_f1_after"])
    assert pol.details["val"]["macro_f1"] == pytest.approx(det["val_macro_f1_after"])  # what the fit achieved, stored


@pytest.mark.parametrize("targets", ["c=0.9", "b=0.7,c=0.75", "a=1.0"])
def test_min_recall_targets_hold_on_validation_by_construction(targets: str) -> None:
    z, y = synthetic(seed=3)
    pol = fit_policy(make_request(min_recall=targets), z, y, 1.3, CLASSES)
    rec = policy_metrics(y, decide(z, 1.3, pol), CLASSES)["per_class"]
    for part in targets.split(","):
        cls, r = part.split("=")
        assert pol.details["min_recall"][cls]["met"] is True
        assert rec[cls]["recall"] >= float(r)
    # the least change: one step less bias on a single target misses it
    if "," not in targets:
        cls = targets.split("=")[0]
        k = CLASSES.index(cls)
        weaker = DecisionPolicy(bias=[b - (0.05 if i == k else 0) for i, b in enumerate(pol.bias or [0, 0, 0])])
        assert policy_metrics(y, decide(z, 1.3, weaker), CLASSES)["per_class"][cls]["recall"] < float(targets.split("=")[1])


def test_min_recall_says_when_targets_conflict() -> None:
    z, y = synthetic(seed=3)  # jointly infeasible on this data (a grid over both biases finds no pair)
    pol = fit_policy(make_request(min_recall="b=0.8,c=0.85"), z, y, 1.3, CLASSES)
    missed = [c for c, t in pol.details["min_recall"].items() if not t["met"]]
    assert missed and "together with the other recall targets" in pol.details["min_recall"][missed[0]]["reason"]


def test_min_recall_says_when_a_target_cannot_be_met() -> None:
    z, y = synthetic(seed=4)
    # reject everything but a few images: recall 0.99 of class c is out of reach
    pol = fit_policy(make_request(min_recall="c=0.99", reject=True, coverage=0.2), z, y, 1.0, CLASSES)
    t = pol.details["min_recall"]["c"]
    assert t["met"] is False and "not reachable" in t["reason"] and t["val_recall"] < 0.99
    assert t["bias"] == 0.0 and pol.bias is None  # an unreachable goal does not distort the model


@pytest.mark.parametrize("coverage", [0.5, 0.9, 0.95, 1.0])
def test_reject_threshold_gives_its_coverage_on_validation(coverage: float) -> None:
    z, y = synthetic(n=333, seed=5)
    pol = fit_policy(make_request(reject=True, coverage=coverage), z, y, 1.7, CLASSES)
    d = decide(z, 1.7, pol)
    cov = float(np.mean(d.index != UNKNOWN))
    assert cov >= coverage and cov < coverage + 1.5 / len(y)  # the stated coverage, and no more than needed
    assert pol.reject is not None and pol.reject.score == "max_probability"


def test_reject_with_an_ood_set_meets_its_false_accept_target_and_picks_the_better_score() -> None:
    z, y = synthetic(n=300, seed=6)
    rng = np.random.default_rng(7)
    ood = rng.normal(0, 0.3, (200, 3)).astype(np.float32)  # flat, low-energy logits
    pol = fit_policy(make_request(reject=True, ood_dir=Path("."), max_false_accept=0.05), z, y, 1.0, CLASSES, ood)
    assert pol.reject is not None
    accepted = float(np.mean(decide(ood, 1.0, pol).index != UNKNOWN))
    assert accepted <= 0.05
    info = pol.details["reject"]
    assert info["score_choice"].startswith(pol.reject.score)
    assert pol.reject.score == max(info["val_auroc"], key=info["val_auroc"].get)


def test_policies_compose_costs_with_reject_and_bias() -> None:
    z, y = synthetic(seed=8)
    pol = fit_policy(make_request(min_recall="c=0.8", reject=True, coverage=0.9), z, y, 1.0, CLASSES)
    pol = pol.model_copy(update={"costs": [[0, 1, 1], [1, 0, 1], [5, 5, 0]]})
    d = decide(z, 1.0, pol)
    assert {ARGMAX, REJECT} <= set(d.rule.tolist()) and set(d.rule.tolist()) <= {ARGMAX, COSTS, REJECT}
    assert pol.describe() == f"min-recall + costs + reject<{pol.reject.threshold:.3g} (max_probability)"  # type: ignore[union-attr]


def test_argmax_request_fits_an_argmax_policy() -> None:
    z, y = synthetic()
    pol = fit_policy(make_request(), z, y, 1.0, CLASSES)
    assert pol.is_argmax and pol.describe() == "argmax"
    assert (decide(z, 1.0, pol).index == z.argmax(1)).all()


# ---- bad input: one clear error each --------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"min_recall": "c=0"}, r"\(0, 1\]"),
        ({"min_recall": "c=1.5"}, r"\(0, 1\]"),
        ({"min_recall": "c"}, "CLASS=RECALL"),
        ({"min_recall": "c=high"}, "not a number"),
        ({"min_recall": "c=0.5,c=0.6"}, "twice"),
        ({"optimize": "accuracy"}, "macro-f1"),
        ({"optimize": "macro-f1", "min_recall": "c=0.9"}, "choose one"),
        ({"coverage": 0.9}, "add --reject"),
        ({"reject": True, "coverage": 1.5}, "coverage"),
        ({"reject": True, "max_false_accept": 1.0}, "ood-accept"),
        ({"reject": True, "ood_dir": Path("/nonexistent-ood")}, "not a folder"),
        ({"costs": Path("/nonexistent-costs.yaml")}, "not a file"),
    ],
)
def test_bad_requests_are_one_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        make_request(**kwargs)


def test_unknown_class_name_is_refused() -> None:
    z, y = synthetic()
    with pytest.raises(PolicyError, match="unknown class 'glass'.*a, b, c"):
        fit_policy(make_request(min_recall="glass=0.9"), z, y, 1.0, CLASSES)


@pytest.mark.parametrize(
    "text,match",
    [
        ("matrix: [[0, 1], [1, 0]]\n", "3x3"),
        ("matrix: [[0, 1, 1], [1, 0, -1], [1, 1, 0]]\n", "negative"),
        ("matrix: [[0, 1, 1], [1, 0, x], [1, 1, 0]]\n", "numbers"),
        ("costs: {glass: {a: 3}}\n", "unknown class 'glass'"),
        ("costs: {a: {b: -2}}\n", "negative"),
        ("costs: {a: {b: cheap}}\n", "not a number"),
        ("something: 1\n", "needs a 'matrix'"),
        ("matrix: [[0, 1\n", "not valid YAML"),
        ("classes: [a, b]\nmatrix: [[0, 1], [1, 0]]\n", "every class"),
    ],
)
def test_bad_cost_files_are_one_clear_error(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "costs.yaml"
    p.write_text(text)
    with pytest.raises(PolicyError, match=match):
        load_costs(p, CLASSES)


def test_cost_files_in_both_forms(tmp_path: Path) -> None:
    full = tmp_path / "full.yaml"
    full.write_text("classes: [c, a, b]\nmatrix: [[0, 7, 8], [1, 0, 2], [3, 4, 0]]\n")
    # reordered to the model's class order a, b, c
    assert load_costs(full, CLASSES) == [[0, 2, 1], [4, 0, 3], [7, 8, 0]]
    sparse = tmp_path / "sparse.yaml"
    sparse.write_text("default: 2\ncosts: {c: {a: 10}}\n")
    assert load_costs(sparse, CLASSES) == [[0, 2, 2], [2, 0, 2], [10, 2, 0]]


def test_ood_split_is_by_content_and_refuses_empty_folders(tmp_path: Path) -> None:
    folder = tmp_path / "ood"
    for i in range(12):
        save(blob_image(100 + i), folder / ("sub" if i % 2 else ".") / f"img{i}.png")
    save(blob_image(100), folder / "copy-of-img0.png")  # an exact copy is counted once
    (folder / "notes.txt").write_text("not an image")
    a, b = ood_split(folder), ood_split(folder)
    assert a == b and len(a["val"]) + len(a["test"]) == 12 and a["val"] and a["test"]
    assert not set(a["val"]) & set(a["test"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(PolicyError, match="holds no images"):
        ood_split(empty)


def test_policy_documents_are_validated() -> None:
    with pytest.raises(ValueError, match="version 2 is not supported"):
        DecisionPolicy(version=2)
    with pytest.raises(ValueError, match="finite"):
        DecisionPolicy(bias=[0.0, float("nan")])
    with pytest.raises(ValueError, match="negative"):
        DecisionPolicy(costs=[[0, -1], [1, 0]])
    with pytest.raises(PolicyError, match="2 values for 3 classes"):
        decide(np.zeros((1, 3)), 1.0, DecisionPolicy(bias=[0.0, 1.0]))


# ---- the bundle contract: Python and the C runtime ------------------------------------------------
POLICIES = {
    "argmax": None,
    "bias": DecisionPolicy(objectives=["macro_f1"], bias=[0.0, 1.2, -0.5]),
    "costs": DecisionPolicy(objectives=["costs"], costs=[[0, 1, 5], [1, 0, 1], [20, 2, 0]]),
    "reject_prob": DecisionPolicy(objectives=["reject"], reject=RejectRule(score="max_probability", threshold=0.6)),
    "all_energy": DecisionPolicy(
        objectives=["min_recall", "costs", "reject"],
        bias=[0.0, 0.3, 0.1],
        costs=[[0, 1, 5], [1, 0, 1], [20, 2, 0]],
        reject=RejectRule(score="energy", threshold=1.0),
    ),
}


@pytest.mark.cpp
@pytest.mark.parametrize("name", list(POLICIES))
def test_c_runtime_decides_exactly_as_python(tmp_path: Path, name: str) -> None:
    runtime = pytest.importorskip("edgeclf.runtime")
    from edgeclf.runtime.reference import BundleClassifier

    pol = POLICIES[name]
    b = make_synthetic_bundle(tmp_path / "b", decision=pol)
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (3000, 3)).astype(np.float32)
    with runtime.Classifier(b) as clf:
        assert (
            clf.decision_policy
            == {
                "argmax": "argmax",
                "bias": "adjusted",
                "costs": "costs",
                "reject_prob": "reject",
                "all_energy": "adjusted+costs+reject",
            }[name]
        )
        got = clf.decide(z)
        ref = decide(z, 1.5, pol)
        assert [g.index for g in got] == ref.index.tolist()
        assert [g.rule for g in got] == [RULES[r] for r in ref.rule]
        assert np.allclose([g.probability for g in got], ref.probability, atol=1e-6)
        assert np.allclose([g.score for g in got], ref.score, rtol=1e-6, atol=1e-6)
        # the full path: raw pixels in, decision out == the reference on the C runtime's own logits,
        # and == what edgeclf.predict (Python engines) decides
        ims = [rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(24)]
        full = clf.classify_decision(ims)
        lg = clf.run_tensor(np.stack([clf.preprocess(im) for im in ims]))
        assert [d.index for d in full] == decide(lg, 1.5, pol).index.tolist()
        preds = BundleClassifier(b).classify(ims, top_k=3)
        assert [p.decision.index for p in preds] == [d.index for d in full]  # type: ignore[union-attr]
        assert [p.decision.rule for p in preds] == [d.rule for d in full]  # type: ignore[union-attr]
    if pol is not None and not pol.is_argmax:
        assert {RULES[r] for r in ref.rule} - {"argmax"}, "the crafted policy must change some decisions"


@pytest.mark.cpp
def test_c_runtime_describes_the_policy_and_refuses_bad_logits(tmp_path: Path) -> None:
    runtime = pytest.importorskip("edgeclf.runtime")
    b = make_synthetic_bundle(tmp_path / "b", decision=POLICIES["all_energy"])
    with runtime.Classifier(b) as clf:
        assert clf.decision_policy == "adjusted+costs+reject"
        with pytest.raises(runtime.RuntimeCallError, match="non-finite"):
            clf.decide(np.array([[0.0, np.nan, 1.0]]))
        with pytest.raises(Exception, match="N x 3"):
            clf.decide(np.zeros((2, 4)))
    plain = make_synthetic_bundle(tmp_path / "plain")
    with runtime.Classifier(plain) as clf:
        assert clf.decision_policy == "argmax"


def _edit_manifest(bundle: Path, fn) -> None:  # noqa: ANN001
    p = bundle / "edgeclf.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m, sort_keys=True))


BAD_SECTIONS = {
    "version": ({"version": 2}, "version 2"),
    "bias_length": ({"version": 1, "bias": [0.0, 1.0]}, "bias"),
    "bias_text": ({"version": 1, "bias": [0.0, "x", 1.0]}, "bias"),
    "negative_cost": ({"version": 1, "costs": [[0, 1, 1], [1, 0, -1], [1, 1, 0]]}, "negative"),
    "costs_shape": ({"version": 1, "costs": [[0, 1], [1, 0]]}, "costs"),
    "reject_score": ({"version": 1, "reject": {"score": "entropy", "threshold": 0.5}}, "score"),
    "not_object": ([1, 2], "decision"),
}


@pytest.mark.cpp
@pytest.mark.parametrize("case", list(BAD_SECTIONS))
def test_python_and_c_refuse_the_same_bad_decision_sections(tmp_path: Path, case: str) -> None:
    runtime = pytest.importorskip("edgeclf.runtime")
    from edgeclf.export.bundle import BundleError, read_bundle

    section, match = BAD_SECTIONS[case]
    b = make_synthetic_bundle(tmp_path / "b")
    _edit_manifest(b, lambda m: m.__setitem__("decision", section))
    with pytest.raises(BundleError, match="decision"):
        read_bundle(b)
    with pytest.raises(runtime.RuntimeCallError, match=match):
        runtime.Classifier(b)


@pytest.mark.cpp
def test_an_older_bundle_without_a_decision_section_loads_as_argmax(tmp_path: Path) -> None:
    runtime = pytest.importorskip("edgeclf.runtime")
    from edgeclf.export.bundle import read_bundle
    from edgeclf.runtime.reference import BundleClassifier

    b = make_synthetic_bundle(tmp_path / "old")

    def downgrade(m: dict) -> None:
        m.pop("decision", None)
        m["schema_version"] = "1.0.0"

    _edit_manifest(b, downgrade)
    assert "decision" not in json.loads((b / "edgeclf.json").read_text())
    m = read_bundle(b)
    assert m.decision is None and m.policy().is_argmax
    im = np.asarray(blob_image(3, 48))
    p = BundleClassifier(b).classify([im], top_k=1)[0]
    assert p.decision is not None and p.decision.rule == "argmax" and p.decision.label == p.label
    with runtime.Classifier(b) as clf:
        assert clf.decision_policy == "argmax"
        assert clf.classify_decision(im)[0].label == p.label
