"""Parity gates: every exported artifact against the eager model, on validation, through deployment preprocessing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeclf.evaluate.calibration import ece
from edgeclf.evaluate.metrics import softmax
from edgeclf.export.parity_schema import AttemptStatus, GateResult
from edgeclf.train.metrics import classification_metrics

# ---- gates: named constants, each with the reason for its value -------------------------------------------------

#: fp32 artifacts compute the same function: on a few hundred validation images at most one
#: disagreement in a thousand, i.e. in practice none.
FP32_MIN_AGREEMENT = 0.999
#: Float32 reordering (fused kernels, different GEMM blocking) moves logits by ~1e-5; 1e-3 is two
#: orders of magnitude of headroom yet still catches a wrong op, layout or normalisation.
FP32_MAX_ABS_LOGIT_DIFF = 1e-3
#: fp16 has ~3 significant digits: near-ties may flip, 0.5 % of images is the budget.
FP16_MIN_AGREEMENT = 0.995
#: int8 may cost at most 1 point of macro-F1 ...
INT8_MAX_MACRO_F1_DROP = 0.01
#: ... may not take more than 3 points of recall from any single class (a rare class hidden in the average) ...
INT8_MAX_CLASS_RECALL_DROP = 0.03
#: ... and must agree with the eager model on 98 % of images.
INT8_MIN_AGREEMENT = 0.98

#: How an int8 gate is decided on the validation images at hand. When a gate's budget is worth at
#: least this many images (2 % agreement on >= 250 images; 3 points of a class's recall on >= 167
#: of its images), one image cannot swing it and the point estimate decides, as for the other
#: precisions. Below that the verdict comes from a 95 % interval: "passed" when the whole interval
#: is within the budget, "failed" when it lies entirely outside, else "insufficient evidence"
#: (not shipped either, but named for what it is: more validation images would decide it). The
#: per-class recall guards, which exist to catch a rare class hidden in the average, only turn a
#: failing point estimate into "insufficient evidence"; a passing one stays passed.
#: ``int8_evidence="point"`` (``edgeclf export --int8-gates point``) decides every int8 gate by its
#: point estimate whatever the number of images: the rule before, for a caller who accepts it.
MIN_BUDGET_IMAGES = 5
EVIDENCE_LEVEL = 0.95


@dataclass
class ParityResult:
    format: str
    precision: str
    images: int
    agreement: float
    max_abs_logit_diff: float
    accuracy: float
    macro_f1: float
    accuracy_delta: float
    macro_f1_delta: float
    per_class_recall_delta: dict[str, float]
    kl_divergence: float
    ece_calibrated: float
    ms_per_image: float
    passed: bool
    failures: list[str] = field(default_factory=list)
    #: "passed", "failed" or "insufficient_evidence" (int8 gates on few images, see MIN_BUDGET_IMAGES)
    status: str = "passed"
    #: which rule decided each gate (point estimate, or the interval and its bounds)
    rules: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> GateResult:
        """The result as ``parity.json`` records it (an attempt's ``parity``)."""
        return GateResult.model_validate(self.to_dict())


def _recalls(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    for c in range(n):
        m = y == c
        out[c] = (pred[m] == c).mean() if m.any() else 0.0
    return out


def row_status(res: ParityResult) -> AttemptStatus:
    """The parity table's status of an artifact: ok, parity_failed, or insufficient_evidence (int8 on few images)."""
    return "ok" if res.passed else "insufficient_evidence" if res.status == "insufficient_evidence" else "parity_failed"


def check_gates(precision: str, r: ParityResult) -> list[str]:
    """The gate failures for ``precision``, each a readable sentence (empty = passed)."""
    fails = []
    if precision == "fp32":
        if r.agreement < FP32_MIN_AGREEMENT:
            fails.append(f"top-1 agreement {r.agreement:.4f} < {FP32_MIN_AGREEMENT}")
        if r.max_abs_logit_diff > FP32_MAX_ABS_LOGIT_DIFF:
            fails.append(f"max |logit diff| {r.max_abs_logit_diff:.2e} > {FP32_MAX_ABS_LOGIT_DIFF:.0e}")
    elif precision == "fp16":
        if r.agreement < FP16_MIN_AGREEMENT:
            fails.append(f"top-1 agreement {r.agreement:.4f} < {FP16_MIN_AGREEMENT}")
    elif precision == "int8":
        if -r.macro_f1_delta > INT8_MAX_MACRO_F1_DROP:
            fails.append(f"macro-F1 drop {-r.macro_f1_delta:.4f} > {INT8_MAX_MACRO_F1_DROP}")
        worst = min(r.per_class_recall_delta.items(), key=lambda kv: kv[1], default=(None, 0.0))
        if -worst[1] > INT8_MAX_CLASS_RECALL_DROP:
            fails.append(f"recall of '{worst[0]}' drops {-worst[1]:.4f} > {INT8_MAX_CLASS_RECALL_DROP}")
        if r.agreement < INT8_MIN_AGREEMENT:
            fails.append(f"top-1 agreement {r.agreement:.4f} < {INT8_MIN_AGREEMENT}")
    return fails


def int8_can_pass(n: int, evidence: str = "interval") -> bool:
    """Whether any int8 artifact could pass the agreement gate on ``n`` validation images.

    With interval evidence and a budget worth fewer than :data:`MIN_BUDGET_IMAGES` images, even an
    artifact that agrees with the eager model on every image passes only when the 95 % interval of
    0 disagreements in ``n`` stays within the budget (``n`` >= 183 for a 2 % budget). Below that no
    retry (layers kept in float, another calibration) can pass: more validation images would decide.
    """
    budget = 1 - INT8_MIN_AGREEMENT
    if evidence == "point" or n * budget >= MIN_BUDGET_IMAGES:
        return n > 0
    return n > 0 and _clopper_pearson(0, n)[1] <= budget


#: The most an int8 retry (sensitive layers kept in float, then percentile calibration) is expected to
#: divide the first attempt's disagreement by. Measured on seven real-data exports (elpv, trashnet-150,
#: flowers-128; lite0/lite2; 379-648 validation images; ONNX Runtime and OpenVINO): the best retry
#: divided it by 1.0-2.9 (e.g. 0.047 -> 0.016, 0.198 -> 0.079), and no retry that started below 0.93
#: agreement reached the 0.98 gate. 4 leaves a margin over the largest factor seen.
INT8_RETRY_REACH = 4.0


def int8_retry_can_reach(agreement: float | None, n: int) -> bool:
    """Whether a retry of an int8 artifact that failed with ``agreement`` on ``n`` images could pass.

    A retry is worth its cost (a per-layer sweep and two more calibrations: minutes on a larger
    model) only when the first attempt's disagreement, at the low end of its 95 % Clopper-Pearson
    interval, is within :data:`INT8_RETRY_REACH` times the agreement budget (0.92 agreement for the
    2 % budget on many images). Unknown agreement (the artifact did not run): retry.
    """
    if agreement is None or n <= 0:
        return True
    budget = 1 - INT8_MIN_AGREEMENT
    k = int(round((1 - agreement) * n))
    return _clopper_pearson(k, n)[0] <= INT8_RETRY_REACH * budget


def int8_no_retry_reason(agreement: float | None, n: int, evidence: str = "interval") -> str | None:
    """Why an int8 artifact that failed its gate is not rebuilt (:func:`int8_can_pass`,
    :func:`int8_retry_can_reach`), or None when a rebuild could pass."""
    if not int8_can_pass(n, evidence):
        return (
            f"on {n} validation images no int8 artifact can pass (even one that agrees on every image), "
            "more validation images would decide it"
        )
    if not int8_retry_can_reach(agreement, n):
        return (
            f"its top-1 agreement {agreement:.4f} on {n} images is too far below the gate for a retry to reach "
            f"(the best retries measured divide the disagreement by < {INT8_RETRY_REACH:g})"
        )
    return None


def _clopper_pearson(k: int, n: int, level: float = EVIDENCE_LEVEL) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def _decide(
    name: str,
    point_ok: bool,
    budget_images: float,
    low: float,
    high: float,
    limit: float,
    what: str,
    rules: dict[str, str],
    fails: list[str],
    unsure: list[str],
    point_text: str,
    observed: str,
    confirm_pass: bool = True,
) -> None:
    """One int8 gate on "value >= -limit" (value: artifact minus eager), by the rule its image budget allows.

    ``confirm_pass=False`` (the per-class recall guards): an inconclusive interval leaves a passing point
    estimate passed (noted in the rule) and makes a failing one "insufficient evidence"; the overall gates
    (agreement, macro-F1) need the interval itself to pass.
    """
    if budget_images >= MIN_BUDGET_IMAGES:
        rules[name] = f"point estimate (the budget is {budget_images:.1f} images >= {MIN_BUDGET_IMAGES})"
        if not point_ok:
            fails.append(point_text)
        return
    iv = f"{EVIDENCE_LEVEL:.0%} interval [{low:+.4f}, {high:+.4f}] of {what} vs -{limit}"
    if low >= -limit:
        rules[name] = f"{iv}: within the budget (only {budget_images:.1f} images of budget, so the interval decides)"
    elif high < -limit:
        rules[name] = f"{iv}: outside the budget"
        fails.append(f"{point_text} ({iv})")
    elif not confirm_pass and point_ok:
        rules[name] = f"{iv}: inconclusive; the point estimate is within the budget, so it passes"
    else:
        rules[name] = f"{iv}: insufficient evidence ({budget_images:.1f} images of budget < {MIN_BUDGET_IMAGES})"
        unsure.append(f"insufficient evidence: {observed} ({iv}); more validation images would decide it")


def int8_gates(
    r: ParityResult, y: np.ndarray, pred_artifact: np.ndarray, pred_eager: np.ndarray, classes: list[str]
) -> tuple[str, list[str], dict[str, str]]:
    """The int8 gates decided for the number of images at hand: (status, failures, rules)."""
    from edgeclf.stats import paired_bootstrap_diff

    n = len(y)
    fails: list[str] = []
    unsure: list[str] = []
    rules: dict[str, str] = {}
    k = int(np.sum(pred_artifact != pred_eager))
    lo, hi = _clopper_pearson(k, n)
    budget = 1 - INT8_MIN_AGREEMENT
    if n * budget >= MIN_BUDGET_IMAGES:
        rules["agreement"] = f"point estimate (the budget is {n * budget:.1f} images >= {MIN_BUDGET_IMAGES})"
        if r.agreement < INT8_MIN_AGREEMENT:
            fails.append(f"top-1 agreement {r.agreement:.4f} < {INT8_MIN_AGREEMENT}")
    else:
        iv = (
            f"{EVIDENCE_LEVEL:.0%} Clopper-Pearson interval [{lo:.4f}, {hi:.4f}] "
            f"of the disagreement rate ({k}/{n}) vs {budget:.2f}"
        )
        if hi <= budget:
            rules["agreement"] = f"{iv}: within the budget"
        elif lo > budget:
            rules["agreement"] = f"{iv}: outside the budget"
            fails.append(f"top-1 agreement {r.agreement:.4f} < {INT8_MIN_AGREEMENT} ({iv})")
        else:
            rules["agreement"] = f"{iv}: insufficient evidence ({n * budget:.1f} images of budget < {MIN_BUDGET_IMAGES})"
            unsure.append(
                f"insufficient evidence: top-1 agreement {r.agreement:.4f} ({iv}); more validation images would decide it"
            )
    d = paired_bootstrap_diff(y, pred_artifact, pred_eager, classes, "macro_f1", seed=0)
    _decide(
        "macro_f1",
        -r.macro_f1_delta <= INT8_MAX_MACRO_F1_DROP,
        n * INT8_MAX_MACRO_F1_DROP,
        d["low"],
        d["high"],
        INT8_MAX_MACRO_F1_DROP,
        "the macro-F1 difference",
        rules,
        fails,
        unsure,
        f"macro-F1 drop {-r.macro_f1_delta:.4f} > {INT8_MAX_MACRO_F1_DROP}",
        f"macro-F1 changes by {r.macro_f1_delta:+.4f} (budget -{INT8_MAX_MACRO_F1_DROP})",
    )
    for rc in d["recall"]:
        if rc["support"] == 0:
            continue
        _decide(
            f"recall {rc['class']}",
            -rc["diff"] <= INT8_MAX_CLASS_RECALL_DROP,
            rc["support"] * INT8_MAX_CLASS_RECALL_DROP,
            rc["low"],
            rc["high"],
            INT8_MAX_CLASS_RECALL_DROP,
            f"the recall difference of '{rc['class']}' ({rc['support']} images)",
            rules,
            fails,
            unsure,
            f"recall of '{rc['class']}' drops {-rc['diff']:.4f} > {INT8_MAX_CLASS_RECALL_DROP}",
            f"recall of '{rc['class']}' changes by {rc['diff']:+.4f} (budget -{INT8_MAX_CLASS_RECALL_DROP})",
            confirm_pass=False,
        )
    status = "failed" if fails else "insufficient_evidence" if unsure else "passed"
    return status, fails + unsure, rules


def point_estimate_hint(precision: str, r: Any) -> str | None:
    """What to tell the user of an int8 artifact held back only by the interval rule: every point
    estimate (``r``: a :class:`ParityResult` or its record) is within its budget, so the validation
    set is too small to confirm it, and ``--int8-gates point`` would ship it. None otherwise."""
    if precision != "int8" or r is None or r.status != "insufficient_evidence" or check_gates(precision, r):
        return None
    return (
        f"every point estimate is within its budget (agreement {r.agreement:.4f}, macro-F1 {r.macro_f1_delta:+.4f}); "
        "more validation images would confirm it, or `--int8-gates point` ships it on the point estimates"
    )


def compare(
    fmt: str,
    precision: str,
    artifact_logits: np.ndarray,
    eager_logits: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    temperature: float,
    seconds: float,
    int8_evidence: str = "interval",
) -> ParityResult:
    """Parity figures of one artifact's validation logits against the eager model's."""
    n = len(classes)
    pa, pe = artifact_logits.argmax(1), eager_logits.argmax(1)
    ma, me = classification_metrics(y, pa, classes), classification_metrics(y, pe, classes)
    qa, qe = softmax(artifact_logits), softmax(eager_logits)
    kl = float(np.mean(np.sum(qe * (np.log(np.clip(qe, 1e-12, None)) - np.log(np.clip(qa, 1e-12, None))), axis=1)))
    rd = _recalls(y, pa, n) - _recalls(y, pe, n)
    r = ParityResult(
        format=fmt,
        precision=precision,
        images=int(len(y)),
        agreement=float((pa == pe).mean()),
        max_abs_logit_diff=float(np.abs(artifact_logits - eager_logits).max()),
        accuracy=ma["accuracy"],
        macro_f1=ma["macro_f1"],
        accuracy_delta=ma["accuracy"] - me["accuracy"],
        macro_f1_delta=ma["macro_f1"] - me["macro_f1"],
        per_class_recall_delta={c: float(rd[i]) for i, c in enumerate(classes)},
        kl_divergence=kl,
        ece_calibrated=ece(softmax(artifact_logits, temperature), y),
        ms_per_image=1000.0 * seconds / max(1, len(y)),
        passed=False,
    )
    if precision == "int8" and int8_evidence == "interval":
        r.status, r.failures, r.rules = int8_gates(r, y, pa, pe, classes)
    else:
        r.failures = check_gates(precision, r)
        r.status = "failed" if r.failures else "passed"
        r.rules = {"all": "point estimate"}
    r.passed = r.status == "passed"
    return r


def run_parity(
    fmt: str,
    precision: str,
    predictor: Any,
    images: Sequence[np.ndarray],
    eager_logits: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    temperature: float,
    int8_evidence: str = "interval",
) -> tuple[ParityResult, np.ndarray]:
    t0 = time.perf_counter()
    logits = np.asarray(predictor(images), dtype=np.float32)
    seconds = time.perf_counter() - t0
    return compare(fmt, precision, logits, eager_logits, y, classes, temperature, seconds, int8_evidence), logits


# ---- the decision policy's gates ----------------------------------------------------------------------------------

#: The C runtime applies the policy to its own logits exactly as the Python reference does: every decision equal.
DECISION_MIN_MATCH = 1.0
#: A recall target fitted on validation must still hold on every shipped artifact, within the same tolerance
#: int8 gets for any class's recall.
DECISION_MAX_TARGET_SHORTFALL = INT8_MAX_CLASS_RECALL_DROP


def decision_check(
    policy: Any, artifact_logits: np.ndarray, eager_logits: np.ndarray, y: np.ndarray, classes: list[str], temperature: float
) -> dict[str, Any]:
    """The policy's decisions on one artifact's validation logits against the eager model's.

    Returns ``{"decision_agreement", "macro_f1", "macro_f1_delta", "coverage", "targets", "failures"}``;
    a failure is a recall target (``--min-recall``) missed by more than DECISION_MAX_TARGET_SHORTFALL.
    """
    from edgeclf.evaluate.decision import decide, policy_metrics

    da, de = decide(artifact_logits, temperature, policy), decide(eager_logits, temperature, policy)
    ma, me = policy_metrics(y, da, classes), policy_metrics(y, de, classes)
    out: dict[str, Any] = {
        "decision_agreement": float(np.mean(da.index == de.index)),
        "macro_f1": ma["macro_f1"],
        "macro_f1_delta": ma["macro_f1"] - me["macro_f1"],
        "coverage": ma["coverage"],
        "targets": {},
        "failures": [],
    }
    for cls, t in ((policy.details or {}).get("min_recall") or {}).items():
        if cls not in ma["per_class"] or not isinstance(t, dict):
            continue
        r, ref = ma["per_class"][cls]["recall"], me["per_class"][cls]["recall"]
        target = float(t["target"])
        # a target the policy itself could not meet on validation is held at what the eager model reaches
        held = min(target, ref)
        out["targets"][cls] = {"target": target, "recall": r, "eager_recall": ref}
        if r < held - DECISION_MAX_TARGET_SHORTFALL - 1e-12:
            out["failures"].append(
                f"decision: recall of '{cls}' {r:.4f} < {'target' if held == target else 'eager'} "
                f"{held:.4f} - {DECISION_MAX_TARGET_SHORTFALL}"
            )
    return out
