"""The C runtime gated like one more artifact of an export (``edgeclf.export.pipeline.RuntimeGate``).

Export owns the interface; this module implements it, and the CLI and ``edgeclf build`` pass
:func:`c_runtime_rows` to ``export_run``, so the import points from the runtime down to export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf.errors import EdgeclfError
from edgeclf.export.bundle import ArtifactEntry
from edgeclf.export.parity import DECISION_MIN_MATCH, decision_check, row_status, run_parity
from edgeclf.export.parity_schema import ParityRow, RuntimeDecision

Log = Callable[[str], None]


def c_runtime_rows(
    bundle: Path,
    entries: list[ArtifactEntry],
    images: list[np.ndarray],
    val: Any,
    classes: list[str],
    temperature: float,
    log: Log,
    policy: Any = None,
    int8_evidence: str = "interval",
) -> list[ParityRow]:
    """The shipped C runtime gated like one more artifact: for each artifact it can run, the
    whole C++ path (preprocessing from the manifest + backend) against the eager model.

    With a decision policy, the row also holds the C runtime's decisions to the Python
    reference's: ``edgeclf_classify_decision`` on every validation image must equal
    :func:`edgeclf.evaluate.decision.decide` applied to the C runtime's own logits (exactly),
    and the policy's recall targets must hold (``decision_check``)."""
    from edgeclf.runtime import Classifier

    rows: list[ParityRow] = []
    for e in entries:
        if e.runtime not in ("onnxruntime", "openvino"):
            continue
        fmt = f"c-runtime ({e.runtime})"
        empty = {"size_mb": None, "macro_f1": None, "delta_macro_f1": None, "agreement": None, "ms_per_image": None}
        try:
            clf = Classifier(bundle, backend=e.runtime, precision=e.precision)
        except (ImportError, EdgeclfError) as err:
            rows.append(ParityRow(format=fmt, precision=e.precision, status="skipped", error=str(err), **empty))
            continue
        log(f"gating the C runtime on {e.runtime}/{e.precision}")

        def predict(batch: Sequence[np.ndarray], clf: Any = clf) -> np.ndarray:
            out = [clf.run_tensor(np.stack([clf.preprocess(im) for im in batch[i : i + 32]])) for i in range(0, len(batch), 32)]
            return np.concatenate(out)

        with clf:
            res, c_logits = run_parity(
                e.format, e.precision, predict, images, val.logits, val.y, classes, temperature, int8_evidence
            )
            dec = None
            if policy is not None:
                dec = cpp_decision_match(clf, images, c_logits, policy, temperature)
                if not policy.is_argmax:
                    dec.update(decision_check(policy, c_logits, val.logits, val.y, classes, temperature))
                if dec["decision_match"] < DECISION_MIN_MATCH:
                    res.failures.append(
                        f"decision: the C runtime's decisions equal the Python reference's on "
                        f"{dec['decision_match']:.4f} of images (< {DECISION_MIN_MATCH})"
                    )
                res.failures += dec.get("failures", [])
                if dec.get("failures") or dec["decision_match"] < DECISION_MIN_MATCH:
                    res.passed, res.status = False, "failed"
        decision = RuntimeDecision.model_validate(dec) if dec is not None else None
        rows.append(
            ParityRow(
                format=fmt,
                precision=e.precision,
                status=row_status(res),
                size_mb=None,
                macro_f1=res.macro_f1,
                delta_macro_f1=res.macro_f1_delta,
                agreement=res.agreement,
                ms_per_image=res.ms_per_image,
                error="; ".join(res.failures) or None,
                ece=res.ece_calibrated,
                gate_rules=res.rules,
                decision=decision,
                decision_agreement=decision.decision_agreement if decision else None,
                decision_match=decision.decision_match if decision else None,
            )
        )
    return rows


def cpp_decision_match(
    clf: Any, images: list[np.ndarray], c_logits: np.ndarray, policy: Any, temperature: float
) -> dict[str, Any]:
    """Share of images whose C decision (full path: raw pixels in, decision out) equals the Python
    reference applied to the C runtime's logits — index and rule both."""
    from edgeclf.evaluate.decision import RULES, decide

    ref = decide(c_logits, temperature, policy)
    got = [d for i in range(0, len(images), 32) for d in clf.classify_decision(images[i : i + 32])]
    same = [g.index == int(ref.index[i]) and g.rule == RULES[int(ref.rule[i])] for i, g in enumerate(got)]
    return {
        "decision_match": float(np.mean(same)) if same else 1.0,
        "images": len(same),
        "mismatches": [i for i, ok in enumerate(same) if not ok][:10],
    }


__all__ = ["c_runtime_rows", "cpp_decision_match"]
