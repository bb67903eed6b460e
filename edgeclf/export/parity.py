"""Parity gates: every exported artifact against the eager model, on validation, through deployment preprocessing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeclf.evaluate.calibration import ece
from edgeclf.evaluate.metrics import softmax
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recalls(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    for c in range(n):
        m = y == c
        out[c] = (pred[m] == c).mean() if m.any() else 0.0
    return out


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


def compare(fmt: str, precision: str, artifact_logits: np.ndarray, eager_logits: np.ndarray, y: np.ndarray,
            classes: list[str], temperature: float, seconds: float) -> ParityResult:
    """Parity figures of one artifact's validation logits against the eager model's."""
    n = len(classes)
    pa, pe = artifact_logits.argmax(1), eager_logits.argmax(1)
    ma, me = classification_metrics(y, pa, classes), classification_metrics(y, pe, classes)
    qa, qe = softmax(artifact_logits), softmax(eager_logits)
    kl = float(np.mean(np.sum(qe * (np.log(np.clip(qe, 1e-12, None)) - np.log(np.clip(qa, 1e-12, None))), axis=1)))
    rd = _recalls(y, pa, n) - _recalls(y, pe, n)
    r = ParityResult(
        format=fmt, precision=precision, images=int(len(y)),
        agreement=float((pa == pe).mean()),
        max_abs_logit_diff=float(np.abs(artifact_logits - eager_logits).max()),
        accuracy=ma["accuracy"], macro_f1=ma["macro_f1"],
        accuracy_delta=ma["accuracy"] - me["accuracy"], macro_f1_delta=ma["macro_f1"] - me["macro_f1"],
        per_class_recall_delta={c: float(rd[i]) for i, c in enumerate(classes)},
        kl_divergence=kl, ece_calibrated=ece(softmax(artifact_logits, temperature), y),
        ms_per_image=1000.0 * seconds / max(1, len(y)), passed=False,
    )
    r.failures = check_gates(precision, r)
    r.passed = not r.failures
    return r


def run_parity(fmt: str, precision: str, predictor: Any, images: Sequence[np.ndarray], eager_logits: np.ndarray,
               y: np.ndarray, classes: list[str], temperature: float) -> tuple[ParityResult, np.ndarray]:
    t0 = time.perf_counter()
    logits = np.asarray(predictor(images), dtype=np.float32)
    seconds = time.perf_counter() - t0
    return compare(fmt, precision, logits, eager_logits, y, classes, temperature, seconds), logits


# ---- the decision policy's gates ----------------------------------------------------------------------------------

#: The C runtime applies the policy to its own logits exactly as the Python reference does: every decision equal.
DECISION_MIN_MATCH = 1.0
#: A recall target fitted on validation must still hold on every shipped artifact, within the same tolerance
#: int8 gets for any class's recall.
DECISION_MAX_TARGET_SHORTFALL = INT8_MAX_CLASS_RECALL_DROP


def decision_check(policy: Any, artifact_logits: np.ndarray, eager_logits: np.ndarray, y: np.ndarray,
                   classes: list[str], temperature: float) -> dict[str, Any]:
    """The policy's decisions on one artifact's validation logits against the eager model's.

    Returns ``{"decision_agreement", "macro_f1", "macro_f1_delta", "coverage", "targets", "failures"}``;
    a failure is a recall target (``--min-recall``) missed by more than DECISION_MAX_TARGET_SHORTFALL.
    """
    from edgeclf.evaluate.decision import decide, policy_metrics

    da, de = decide(artifact_logits, temperature, policy), decide(eager_logits, temperature, policy)
    ma, me = policy_metrics(y, da, classes), policy_metrics(y, de, classes)
    out: dict[str, Any] = {"decision_agreement": float(np.mean(da.index == de.index)), "macro_f1": ma["macro_f1"],
                           "macro_f1_delta": ma["macro_f1"] - me["macro_f1"], "coverage": ma["coverage"],
                           "targets": {}, "failures": []}
    for cls, t in ((policy.details or {}).get("min_recall") or {}).items():
        if cls not in ma["per_class"] or not isinstance(t, dict):
            continue
        r, ref = ma["per_class"][cls]["recall"], me["per_class"][cls]["recall"]
        target = float(t["target"])
        # a target the policy itself could not meet on validation is held at what the eager model reaches
        held = min(target, ref)
        out["targets"][cls] = {"target": target, "recall": r, "eager_recall": ref}
        if r < held - DECISION_MAX_TARGET_SHORTFALL - 1e-12:
            out["failures"].append(f"decision: recall of '{cls}' {r:.4f} < {'target' if held == target else 'eager'} "
                                   f"{held:.4f} - {DECISION_MAX_TARGET_SHORTFALL}")
    return out
