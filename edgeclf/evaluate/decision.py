"""Decision policies: from calibrated probabilities to a decision — a class, or "unknown".

A device does not hand probabilities to a person; it rejects the part, alerts the operator,
routes the item. The policy that turns the model's calibrated probabilities into that
decision is fitted here, on the **validation split only**, written into the bundle's
manifest (``decision``), and applied identically by :func:`decide` (the Python reference)
and by the C runtime (``edgeclf_decide``, ``edgeclf_classify_decision``).

How one image is decided (``z`` its logits, ``T`` the bundle's temperature)::

    p      = softmax(z / T)                    calibrated probabilities
    a      = log(p) + bias                     per-class additive biases (prior correction,
                                               recall targets); zeros when none
    q      = softmax(a)                        the adjusted posterior (= p without biases)
    score  = max(q)                            "max_probability" reject score, or
             T * logsumexp(z / T + bias)       "energy" (negative free energy; higher = more familiar)
    if reject and score < threshold:           -> UNKNOWN                      (rule "reject")
    costs:   decided = argmin_j sum_i q_i * C[i][j]   (Bayes-optimal; C[i][j] is the cost of
                                               deciding j when the truth is i)
    else:    decided = argmax_j a_j
    ties: the lower class index. rule = "argmax" when decided == argmax(p), else "costs"
    when a cost matrix is set, else "adjusted" (the biases moved it).

Policies compose: ``--optimize macro-f1`` or ``--min-recall`` set the biases, ``--costs`` the
matrix, ``--reject`` the threshold. The reject score is read off the adjusted posterior, so a
recall target can lift its class's images over the threshold: every bias the fits try is
scored with the threshold refitted for it (a rejected image is a miss), and the fitted pair
is the one shipped. A bundle without a ``decision`` section decides by argmax, as before.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from edgeclf.errors import ConfigError, DataError

#: Version of the ``decision`` section; the C runtime refuses a version it does not know.
POLICY_VERSION = 1
#: The decided index of an image the reject rule turned away (``EDGECLF_DECISION_UNKNOWN`` in C).
UNKNOWN = -1
#: Rule codes, as the C API numbers them (``EDGECLF_RULE_*``).
RULES = ("argmax", "adjusted", "costs", "reject")
ARGMAX, ADJUSTED, COSTS, REJECT = range(4)
SCORES = ("max_probability", "energy")

#: Default reject target without an OOD folder: keep at least this share of validation images.
DEFAULT_COVERAGE = 0.95
#: Default reject target with an OOD folder: accept at most this share of its validation part.
DEFAULT_MAX_FALSE_ACCEPT = 0.05
#: Largest bias the fits may set (log-probability units: a factor of e^8 ~ 3000 on a prior).
MAX_BIAS = 8.0
#: Grid of the macro-F1 prior-correction fit, and its passes over the classes.
BIAS_GRID = np.round(np.arange(-3.0, 3.0001, 0.1), 10)
BIAS_PASSES = 3
#: A bias change must raise validation macro-F1 by more than this to be kept (no chasing noise).
MIN_GAIN = 1e-9


class PolicyError(ConfigError):
    """A decision-policy request is invalid (unknown class, recall outside (0, 1], bad cost matrix, ...)."""


class RejectRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: Literal["max_probability", "energy"]
    threshold: float
    target: str = ""

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("reject.threshold must be finite")
        return v


class DecisionPolicy(BaseModel):
    """The ``decision`` section of a bundle manifest (versioned; absent means argmax)."""

    model_config = ConfigDict(extra="forbid")
    version: int = POLICY_VERSION
    #: what was asked, e.g. ``["min_recall", "reject"]``; ``[]`` is argmax
    objectives: list[str] = []
    #: per-class additive biases on the calibrated log-probabilities (None: all zero)
    bias: list[float] | None = None
    #: cost matrix, ``costs[i][j]`` = cost of deciding class j when the truth is class i
    costs: list[list[float]] | None = None
    reject: RejectRule | None = None
    fitted_on: str = "val"
    #: targets, what the fit achieved on validation, and the reason for each choice
    details: dict[str, Any] = {}

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != POLICY_VERSION:
            raise ValueError(f"decision policy version {v} is not supported (this edgeclf reads {POLICY_VERSION})")
        return v

    @field_validator("bias")
    @classmethod
    def _finite_bias(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(b) for b in v):
            raise ValueError("decision.bias must be finite numbers")
        return v

    @field_validator("costs")
    @classmethod
    def _valid_costs(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None:
            try:
                _check_matrix(np.asarray(v, dtype=object), len(v))
            except (PolicyError, ValueError) as e:
                raise ValueError(str(e)) from None
        return v

    def check(self, classes: int) -> DecisionPolicy:
        """Raise :class:`PolicyError` unless the policy fits a model with ``classes`` outputs."""
        if self.bias is not None and len(self.bias) != classes:
            raise PolicyError(f"decision.bias has {len(self.bias)} values for {classes} classes")
        if self.costs is not None and len(self.costs) != classes:
            raise PolicyError(f"decision.costs is {len(self.costs)}x{len(self.costs)} for {classes} classes")
        return self

    @property
    def is_argmax(self) -> bool:
        return not any(self.bias or []) and self.costs is None and self.reject is None

    def describe(self) -> str:
        """One line for tables (registry list, report)."""
        if self.is_argmax:
            return "argmax"
        parts = []
        if any(self.bias or []):
            parts.append("min-recall" if "min_recall" in self.objectives else "prior-corrected")
        if self.costs is not None:
            parts.append("costs")
        if self.reject is not None:
            parts.append(f"reject<{self.reject.threshold:.3g} ({self.reject.score})")
        return " + ".join(parts)


def _check_matrix(m: np.ndarray, n: int) -> np.ndarray:
    try:
        a = np.asarray(m.tolist() if m.dtype == object else m, dtype=np.float64)
    except (TypeError, ValueError):
        raise PolicyError("the cost matrix must hold numbers only") from None
    if a.ndim != 2 or a.shape != (n, n):
        raise PolicyError(
            f"the cost matrix must be {n}x{n} (one row per true class, one column per decided class), got shape {a.shape}"
        )
    if not np.isfinite(a).all():
        raise PolicyError("the cost matrix must be finite")
    if (a < 0).any():
        raise PolicyError("the cost matrix has negative entries; costs must be >= 0")
    return a


# ---- the decision itself (the reference the C runtime is held to) -------------------------
@dataclass
class Decisions:
    """Decisions for N images: ``index`` (class or UNKNOWN), ``rule`` (code into RULES), the
    decided class's calibrated ``probability`` (the top class's when unknown), the reject ``score``
    and the plain ``argmax``."""

    index: np.ndarray
    rule: np.ndarray
    probability: np.ndarray
    score: np.ndarray
    argmax: np.ndarray

    def rule_names(self) -> list[str]:
        return [RULES[int(r)] for r in self.rule]


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def scores(logits: np.ndarray, temperature: float, kind: str, bias: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """The reject score of every row, on the posterior adjusted by ``bias``: its max probability, or the
    energy score ``T * logsumexp(z / T + bias)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if bias is not None:
        z = z + np.asarray(bias, dtype=np.float64)
    if kind == "energy":
        return temperature * _logsumexp(z)
    if kind == "max_probability":
        return np.exp(z.max(axis=1) - _logsumexp(z))
    raise PolicyError(f"unknown reject score {kind!r}; choose from {', '.join(SCORES)}")


def _first_argmax(a: np.ndarray) -> np.ndarray:
    return np.argmax(a, axis=1)  # numpy returns the first (lowest) index of a tie, as the C runtime does


def decide(logits: np.ndarray, temperature: float, policy: DecisionPolicy | None) -> Decisions:
    """Apply ``policy`` (None: argmax) to N x classes raw logits."""
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64)) / float(temperature)
    n, c = z.shape
    logp = z - _logsumexp(z)[:, None]
    p = np.exp(logp)
    top = _first_argmax(logp)
    policy = policy.check(c) if policy is not None else DecisionPolicy()
    a = logp + (np.asarray(policy.bias, dtype=np.float64) if policy.bias is not None else 0.0)
    if policy.costs is not None:
        q = np.exp(a - _logsumexp(a)[:, None])
        risk = q @ np.asarray(policy.costs, dtype=np.float64)
        decided = np.argmin(risk, axis=1)
        moved = COSTS
    else:
        decided = _first_argmax(a)
        moved = ADJUSTED
    rule = np.where(decided == top, ARGMAX, moved)
    kind = policy.reject.score if policy.reject is not None else "max_probability"
    score = scores(logits, temperature, kind, policy.bias)
    if policy.reject is not None:
        rejected = score < policy.reject.threshold
        decided = np.where(rejected, UNKNOWN, decided)
        rule = np.where(rejected, REJECT, rule)
    prob = p[np.arange(n), np.where(decided == UNKNOWN, top, decided)]
    return Decisions(decided.astype(np.int64), rule.astype(np.int64), prob, score, top.astype(np.int64))


# ---- requests (what the user asked for), validated before anything runs -------------------
@dataclass
class DecisionRequest:
    optimize: str | None = None  # "macro-f1"
    min_recall: dict[str, float] = field(default_factory=dict)
    costs: list[list[float]] | None = None
    costs_source: str | None = None
    reject: bool = False
    coverage: float = DEFAULT_COVERAGE
    ood_dir: Path | None = None
    max_false_accept: float = DEFAULT_MAX_FALSE_ACCEPT

    @property
    def is_argmax(self) -> bool:
        return self.optimize is None and not self.min_recall and self.costs is None and not self.reject

    def key(self) -> dict[str, Any]:
        """What identifies the request (a build stage key)."""
        return {
            "optimize": self.optimize,
            "min_recall": dict(sorted(self.min_recall.items())),
            "costs": self.costs,
            "reject": self.reject,
            "coverage": self.coverage,
            "max_false_accept": self.max_false_accept,
            "ood_dir": str(self.ood_dir) if self.ood_dir else None,
        }


def parse_min_recall(text: str | None, classes: Sequence[str] | None = None) -> dict[str, float]:
    """``"trash=0.9,paper=0.8"`` -> ``{"trash": 0.9, "paper": 0.8}`` (class names checked when given)."""
    out: dict[str, float] = {}
    for part in [p.strip() for p in (text or "").split(",") if p.strip()]:
        name, sep, value = part.rpartition("=")
        if not sep or not name:
            raise PolicyError(f"--min-recall expects CLASS=RECALL[,CLASS=RECALL...], got {part!r}")
        try:
            r = float(value)
        except ValueError:
            raise PolicyError(f"--min-recall {name}: {value!r} is not a number") from None
        if not (0.0 < r <= 1.0):
            raise PolicyError(f"--min-recall {name}={value}: a recall target must lie in (0, 1]")
        if name in out:
            raise PolicyError(f"--min-recall names {name!r} twice")
        out[name] = r
    if classes is not None:
        check_classes(out, classes, "--min-recall")
    return out


def check_classes(names: Any, classes: Sequence[str], what: str) -> None:
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise PolicyError(
            f"{what}: unknown class {', '.join(repr(u) for u in unknown)}; the model's classes are {', '.join(classes)}"
        )


def load_costs(path: Path, classes: Sequence[str]) -> list[list[float]]:
    """Read a cost file (YAML).

    Either a full matrix in the model's class order (or the order of ``classes:``)::

        classes: [cardboard, glass, trash]
        matrix: [[0, 1, 1], [1, 0, 1], [10, 10, 0]]

    or the costs that differ from the default (``default``: 1 off the diagonal, 0 on it)::

        default: 1
        costs: {trash: {cardboard: 10, glass: 10}}   # truth -> decided -> cost
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"--costs: {path} is not a file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PolicyError(f"--costs: {path} is not valid YAML ({e})") from None
    if not isinstance(doc, dict) or not ({"matrix", "costs"} & set(doc)):
        raise PolicyError(f"--costs: {path} needs a 'matrix' (list of rows) or a 'costs' mapping (truth -> decided -> cost)")
    n = len(classes)
    if "matrix" in doc:
        order = doc.get("classes", list(classes))
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(classes) or len(order) != n:
            raise PolicyError(f"--costs: 'classes' must list every class of the model once ({', '.join(classes)})")
        m = _check_matrix(
            np.asarray(doc["matrix"], dtype=object) if isinstance(doc["matrix"], list) else np.asarray([], dtype=object),
            len(order),
        )
        idx = [order.index(c) for c in classes]
        return m[np.ix_(idx, idx)].tolist()
    default = doc.get("default", 1.0)
    try:
        default = float(default)
    except (TypeError, ValueError):
        raise PolicyError("--costs: 'default' must be a number") from None
    m = np.full((n, n), default, dtype=np.float64)
    np.fill_diagonal(m, 0.0)
    spec = doc["costs"]
    if not isinstance(spec, dict):
        raise PolicyError("--costs: 'costs' must map a true class to {decided class: cost}")
    check_classes(spec, classes, "--costs")
    for truth, row in spec.items():
        if not isinstance(row, dict):
            raise PolicyError(f"--costs: costs.{truth} must map decided classes to costs")
        check_classes(row, classes, f"--costs (row {truth})")
        for decided, cost in row.items():
            try:
                m[classes.index(truth), classes.index(decided)] = float(cost)
            except (TypeError, ValueError):
                raise PolicyError(f"--costs: costs.{truth}.{decided} = {cost!r} is not a number") from None
    return _check_matrix(m, n).tolist()


def make_request(
    optimize: str | None = None,
    min_recall: str | None = None,
    costs: Path | None = None,
    reject: bool = False,
    coverage: float | None = None,
    ood_dir: Path | None = None,
    max_false_accept: float | None = None,
) -> DecisionRequest:
    """Validate command-line options (class names are checked once the model's classes are known)."""
    if optimize is not None and optimize != "macro-f1":
        raise PolicyError(f"--optimize {optimize!r}: the supported objective is macro-f1")
    if optimize and min_recall:
        raise PolicyError("--optimize and --min-recall both set the per-class biases; choose one")
    if (coverage is not None or ood_dir is not None or max_false_accept is not None) and not reject:
        raise PolicyError("--coverage, --ood-dir and --ood-accept set the reject option; add --reject")
    cov = DEFAULT_COVERAGE if coverage is None else float(coverage)
    far = DEFAULT_MAX_FALSE_ACCEPT if max_false_accept is None else float(max_false_accept)
    if not (0.0 < cov <= 1.0):
        raise PolicyError(f"--coverage {coverage}: must lie in (0, 1]")
    if not (0.0 <= far < 1.0):
        raise PolicyError(f"--ood-accept {max_false_accept}: must lie in [0, 1)")
    if ood_dir is not None and not Path(ood_dir).is_dir():
        raise PolicyError(f"--ood-dir {ood_dir} is not a folder")
    req = DecisionRequest(
        optimize=optimize,
        min_recall=parse_min_recall(min_recall),
        reject=reject,
        coverage=cov,
        ood_dir=Path(ood_dir) if ood_dir is not None else None,
        max_false_accept=far,
    )
    if costs is not None:
        req.costs_source = str(costs)
        if not Path(costs).is_file():
            raise PolicyError(f"--costs: {costs} is not a file")
    return req


def resolve_request(req: DecisionRequest, classes: Sequence[str]) -> DecisionRequest:
    """Check class names and read the cost file against the model's classes."""
    check_classes(req.min_recall, classes, "--min-recall")
    if req.costs_source is not None and req.costs is None:
        req.costs = load_costs(Path(req.costs_source), list(classes))
    return req


# ---- out-of-distribution folder -----------------------------------------------------------
def ood_split(folder: Path) -> dict[str, list[str]]:
    """Images under ``folder`` (recursively, symlinks not followed) split in halves by content hash:
    ``{"val": [...], "test": [...]}`` of paths relative to the folder. The split depends only
    on each file's bytes, so it is stable across runs and machines."""
    from edgeclf.data._image import is_image_suffix

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and is_image_suffix(p))
    if not files:
        raise PolicyError(f"--ood-dir {folder} holds no images")
    out: dict[str, list[str]] = {"val": [], "test": []}
    seen: set[str] = set()
    for p in files:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest in seen:  # an exact copy would sit on both sides
            continue
        seen.add(digest)
        out["val" if int(digest[:8], 16) % 2 == 0 else "test"].append(p.relative_to(folder).as_posix())
    if not out["val"] or not out["test"]:
        raise PolicyError(f"--ood-dir {folder} needs at least 2 distinct images (one to fit the threshold on, one to test it)")
    return out


# ---- fitting (validation only) -------------------------------------------------------------
def _labels_f1(y: np.ndarray, pred: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1; an UNKNOWN decision counts against recall only."""
    tp = np.array([np.sum((pred == k) & (y == k)) for k in range(n)], dtype=np.float64)
    npred = np.array([np.sum(pred == k) for k in range(n)], dtype=np.float64)
    ntrue = np.array([np.sum(y == k) for k in range(n)], dtype=np.float64)
    prec = np.divide(tp, npred, out=np.zeros(n), where=npred > 0)
    rec = np.divide(tp, ntrue, out=np.zeros(n), where=ntrue > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(n), where=(prec + rec) > 0)
    return prec, rec, f1


def _macro_f1(y: np.ndarray, pred: np.ndarray, n: int) -> float:
    present = np.unique(y)
    return float(_labels_f1(y, pred, n)[2][present].mean()) if len(present) else 0.0


def _threshold_between(sorted_desc: np.ndarray, k: int) -> float:
    """A threshold that accepts exactly the k highest scores: half-way between the k-th and the (k+1)-th
    (robust to the last-bit differences between the C and the Python arithmetic)."""
    if k <= 0:
        return float(sorted_desc[0] + max(1e-6, abs(sorted_desc[0]) * 1e-6))
    if k >= len(sorted_desc):
        return float(sorted_desc[-1] - max(1e-6, abs(sorted_desc[-1]) * 1e-6))
    hi, lo = sorted_desc[k - 1], sorted_desc[k]
    if hi == lo:  # ties: move down to the first strictly lower score
        below = sorted_desc[sorted_desc < hi]
        if len(below) == 0:
            return float(lo - max(1e-6, abs(lo) * 1e-6))
        lo = below[0]
    return float((hi + lo) / 2)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD images accepted at the threshold that accepts ``tpr`` of the in-distribution ones."""
    t = np.quantile(np.asarray(in_scores, dtype=np.float64), 1.0 - tpr, method="lower")
    return float(np.mean(np.asarray(out_scores) >= t))


def _reject_kind(val_logits: np.ndarray, temperature: float, ood_logits: np.ndarray | None) -> tuple[str, dict[str, Any]]:
    """The reject score: the one with the higher validation AUROC against the OOD images, else max probability."""
    if ood_logits is None:
        return "max_probability", {
            "score_choice": "max_probability: calibrated, so the threshold reads as a probability "
            "(no OOD folder to compare scores on)"
        }
    aucs = {k: auroc(scores(val_logits, temperature, k), scores(ood_logits, temperature, k)) for k in SCORES}
    kind = max(SCORES, key=lambda k: (aucs[k], k == "max_probability"))
    return kind, {
        "score_choice": f"{kind}: the higher validation AUROC against the OOD folder's validation part "
        f"({', '.join(f'{k} {v:.3f}' for k, v in aucs.items())})",
        "val_auroc": aucs,
    }


def _fit_reject(
    req: DecisionRequest,
    val_logits: np.ndarray,
    temperature: float,
    ood_logits: np.ndarray | None,
    kind: str,
    bias: np.ndarray | None = None,
) -> tuple[RejectRule, dict[str, Any]]:
    """The threshold meeting the request's target for scores on the posterior adjusted by ``bias``."""
    info: dict[str, Any] = {}
    if ood_logits is not None:
        o = np.sort(scores(ood_logits, temperature, kind, bias))[::-1]
        k = int(math.floor(req.max_false_accept * len(o) + 1e-9))
        threshold = _threshold_between(o, k)
        target = f"false accepts <= {req.max_false_accept:.0%} of the OOD folder's validation part ({len(o)} images)"
        info["ood_val_images"] = len(o)
        info["ood_val_accepted"] = float(np.mean(o >= threshold))
    else:
        s = np.sort(scores(val_logits, temperature, kind, bias))[::-1]
        k = int(math.ceil(req.coverage * len(s) - 1e-9))
        threshold = _threshold_between(s, k)
        target = f"coverage >= {req.coverage:.0%} of validation"
    rule = RejectRule(score=kind, threshold=threshold, target=target)
    info["val_coverage"] = float(np.mean(scores(val_logits, temperature, kind, bias) >= threshold))
    return rule, info


def _fit_macro_f1(y: np.ndarray, n: int, decide_with: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    """Coordinate ascent over per-class biases on a grid, class 0 held at 0 (only differences matter)."""
    bias = np.zeros(n)
    best = _macro_f1(y, decide_with(bias), n)
    start = best
    grid = sorted(BIAS_GRID, key=abs)  # on ties the smallest correction wins
    for _ in range(BIAS_PASSES):
        improved = False
        for k in range(1, n):
            keep = bias[k]
            for b in grid:
                bias[k] = b
                f = _macro_f1(y, decide_with(bias), n)
                if f > best + MIN_GAIN:
                    best, keep, improved = f, b, True
            bias[k] = keep
        if not improved:
            break
    return bias, {
        "val_macro_f1_before": start,
        "val_macro_f1_after": best,
        "rule": "per-class additive biases on the calibrated log-probabilities (prior correction), "
        f"coordinate ascent on a {BIAS_GRID[1] - BIAS_GRID[0]:.1f} grid in [{BIAS_GRID[0]}, {BIAS_GRID[-1]}], "
        "maximising validation macro-F1",
    }


def _fit_min_recall(
    y: np.ndarray,
    n: int,
    targets: dict[int, float],
    names: Sequence[str],
    decide_with: Callable[[np.ndarray], np.ndarray],
    bias: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any]]:
    """For each target class, the smallest bias that meets its recall on validation (the least change to
    every other decision), in rounds until every target holds together.

    The bias is scanned upwards on a grid and the first step that meets the target is refined by
    bisection (with a reject option the threshold moves with the bias, so recall need not be
    monotone). A target that no bias up to MAX_BIAS meets gets no bias at all: distorting the
    model to its limit for a goal it cannot reach would only wreck the other classes; the
    target is reported as not met, with the reason.
    """
    report: dict[str, Any] = {}
    unreachable: set[int] = set()

    def recall(b: np.ndarray, k: int) -> float:
        return float(_labels_f1(y, decide_with(b), n)[1][k])

    grid = np.round(np.arange(0.0, MAX_BIAS + 1e-9, 0.25), 10)
    for _ in range(10):
        changed = False
        for k, target in targets.items():
            if k in unreachable or recall(bias, k) >= target - 1e-12:
                continue
            trial = bias.copy()
            start = bias[k]
            hit = None
            prev = start
            for g in grid[grid > start]:
                trial[k] = g
                if recall(trial, k) >= target - 1e-12:
                    hit = g
                    break
                prev = g
            if hit is None:
                unreachable.add(k)
                bias[k] = 0.0
                changed = True
                continue
            lo, hi = prev, hit
            for _ in range(30):
                mid = (lo + hi) / 2
                trial[k] = mid
                if recall(trial, k) >= target - 1e-12:
                    hi = mid
                else:
                    lo = mid
            # a little past the boundary, so that last-bit differences cannot flip the boundary image
            trial[k] = hi + 1e-3
            bias[k] = trial[k] if recall(trial, k) >= target - 1e-12 else hi
            changed = True
        if not changed:
            break
    _, rec, _ = _labels_f1(y, decide_with(bias), n)
    for k, target in targets.items():
        met = bool(rec[k] >= target - 1e-12)
        reason = ""
        if not met:
            reason = (
                f"not reachable on validation with any bias up to {MAX_BIAS:g} (the reject option, or the other "
                "classes' evidence, takes those images); no bias applied for it: lower the target, or relax "
                "--coverage / --ood-accept"
                if k in unreachable
                else "not reachable together with the other recall targets on validation (raising this class's bias "
                "takes the images another target needs)"
            )
        report[names[k]] = {
            "target": target,
            "val_recall": float(rec[k]),
            "met": met,
            "bias": float(bias[k]),
            **({"reason": reason} if reason else {}),
        }
    return bias, report


def fit_policy(
    req: DecisionRequest,
    val_logits: np.ndarray,
    val_y: np.ndarray,
    temperature: float,
    classes: Sequence[str],
    ood_val_logits: np.ndarray | None = None,
) -> DecisionPolicy:
    """Fit ``req`` on validation logits (never test); the policy records what it achieved and why."""
    n = len(classes)
    req = resolve_request(req, classes)
    val_logits = np.asarray(val_logits, dtype=np.float64)
    y = np.asarray(val_y)
    if req.is_argmax:
        return DecisionPolicy(details={"rule": "argmax: no decision objective was asked for"})
    objectives: list[str] = []
    details: dict[str, Any] = {"val_images": int(len(y))}
    kind = None
    if req.reject:
        objectives.append("reject")
        kind, details["reject"] = _reject_kind(val_logits, temperature, ood_val_logits)
    costs = req.costs
    if costs is not None:
        objectives.append("costs")
        details["costs"] = {"source": req.costs_source, "rule": "Bayes-optimal decision under the calibrated probabilities"}

    def reject_for(bias: np.ndarray) -> RejectRule | None:
        if kind is None:
            return None
        return _fit_reject(req, val_logits, temperature, ood_val_logits, kind, bias if bias.any() else None)[0]

    def decide_with(bias: np.ndarray) -> np.ndarray:
        pol = DecisionPolicy(bias=[float(b) for b in bias], costs=costs, reject=reject_for(bias))
        return decide(val_logits, temperature, pol).index

    bias = np.zeros(n)
    if req.optimize == "macro-f1":
        objectives.append("macro_f1")
        bias, details["macro_f1"] = _fit_macro_f1(y, n, decide_with)
    if req.min_recall:
        objectives.append("min_recall")
        targets = {list(classes).index(c): r for c, r in req.min_recall.items()}
        bias, details["min_recall"] = _fit_min_recall(y, n, targets, classes, decide_with, bias)
    reject = None
    if kind is not None:
        reject, info = _fit_reject(req, val_logits, temperature, ood_val_logits, kind, bias if bias.any() else None)
        details["reject"].update(info)
    policy = DecisionPolicy(
        objectives=objectives, bias=[float(b) for b in bias] if bias.any() else None, costs=costs, reject=reject, details=details
    )
    final = decide(val_logits, temperature, policy)
    return policy.model_copy(update={"details": {**policy.details, "val": policy_metrics(y, final, classes, costs)}})


# ---- evaluation of a policy ----------------------------------------------------------------
def policy_metrics(
    y: np.ndarray, d: Decisions, classes: Sequence[str], costs: Sequence[Sequence[float]] | None = None
) -> dict[str, Any]:
    """Per-class precision/recall/F1 at the decisions, macro-F1, accuracy, coverage, selective accuracy,
    expected cost (on accepted images, when a cost matrix is given)."""
    n = len(classes)
    y = np.asarray(y)
    prec, rec, f1 = _labels_f1(y, d.index, n)
    accepted = d.index != UNKNOWN
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(np.mean(d.index == y)) if len(y) else 0.0,
        "macro_f1": _macro_f1(y, d.index, n),
        "coverage": float(accepted.mean()) if len(y) else 0.0,
        "selective_accuracy": float(np.mean(d.index[accepted] == y[accepted])) if accepted.any() else None,
        "per_class": {
            c: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]), "support": int(np.sum(y == k))}
            for k, c in enumerate(classes)
        },
        "rules": {r: int(np.sum(d.rule == i)) for i, r in enumerate(RULES)},
    }
    if costs is not None and accepted.any():
        c = np.asarray(costs, dtype=np.float64)
        out["expected_cost"] = float(np.mean(c[y[accepted], d.index[accepted]]))
    return out


def compare_to_argmax(
    y: np.ndarray, logits: np.ndarray, temperature: float, policy: DecisionPolicy, classes: Sequence[str]
) -> dict[str, Any]:
    """The split's figures at the policy's operating point next to argmax's."""
    at = decide(logits, temperature, policy)
    base = decide(logits, temperature, None)
    return {"policy": policy_metrics(y, at, classes, policy.costs), "argmax": policy_metrics(y, base, classes, policy.costs)}


def ood_metrics(in_logits: np.ndarray, ood_logits: np.ndarray, temperature: float, policy: DecisionPolicy) -> dict[str, Any]:
    """AUROC and FPR at 95 % TPR of the policy's reject score, and the unknown rate of each side."""
    kind = policy.reject.score if policy.reject is not None else "max_probability"
    si, so = scores(in_logits, temperature, kind, policy.bias), scores(ood_logits, temperature, kind, policy.bias)
    out: dict[str, Any] = {
        "score": kind,
        "in_images": int(len(si)),
        "ood_images": int(len(so)),
        "auroc": auroc(si, so),
        "fpr_at_95_tpr": fpr_at_tpr(si, so),
    }
    if policy.reject is not None:
        out["ood_unknown_rate"] = float(np.mean(so < policy.reject.threshold))
        out["in_unknown_rate"] = float(np.mean(si < policy.reject.threshold))
    return out


# ---- figures --------------------------------------------------------------------------------
def plot_pr_curves(y: np.ndarray, probs: np.ndarray, d: Decisions, classes: Sequence[str], path: Path, title: str) -> None:
    """One-vs-rest precision-recall curve of every class, with the policy's operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    n = len(classes)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    prec, rec, _ = _labels_f1(np.asarray(y), d.index, n)
    aprec, arec, _ = _labels_f1(np.asarray(y), d.argmax, n)
    for k, c in enumerate(classes):
        ax = axes[k // cols][k % cols]
        if np.any(y == k):
            pr, rc, _ = precision_recall_curve(np.asarray(y) == k, probs[:, k])
            ax.plot(rc, pr, color="#4477aa", lw=1.5)
        ax.scatter([arec[k]], [aprec[k]], marker="o", facecolors="none", edgecolors="#777777", s=40, label="argmax")
        ax.scatter([rec[k]], [prec[k]], marker="*", color="#cc3311", s=90, label="policy", zorder=3)
        ax.set_title(c, fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7, loc="lower left")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_risk_coverage(y: np.ndarray, d: Decisions, path: Path, title: str) -> None:
    """Selective risk (error among accepted) against coverage, ordering images by the reject score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-d.score, kind="stable")
    wrong = (d.argmax[order] != np.asarray(y)[order]).astype(np.float64)
    k = np.arange(1, len(order) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(k / len(order), np.cumsum(wrong) / k, color="#4477aa", lw=1.5, label="argmax, sorted by score")
    acc = d.index != UNKNOWN
    if acc.any():
        ax.scatter(
            [acc.mean()],
            [np.mean(d.index[acc] != np.asarray(y)[acc])],
            marker="*",
            color="#cc3311",
            s=110,
            zorder=3,
            label="policy",
        )
    ax.set_xlabel("coverage (share of images decided)")
    ax.set_ylabel("selective risk (error among decided)")
    ax.set_xlim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ood_histogram(
    in_scores: np.ndarray,
    ood_scores: np.ndarray,
    threshold: float | None,
    kind: str,
    auc: float,
    fpr95: float,
    path: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lo = float(min(in_scores.min(), ood_scores.min()))
    hi = float(max(in_scores.max(), ood_scores.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
    ax.hist(in_scores, bins=bins, alpha=0.6, color="#4477aa", label=f"in-distribution ({len(in_scores)})", density=True)
    ax.hist(ood_scores, bins=bins, alpha=0.6, color="#ee7733", label=f"out-of-distribution ({len(ood_scores)})", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="#cc3311", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
    ax.set_xlabel(f"{kind.replace('_', ' ')} score")
    ax.set_ylabel("density")
    ax.set_title(f"{title}\nAUROC {auc:.3f}, FPR at 95% TPR {fpr95:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_ood_images(folder: Path, paths: Sequence[str]) -> tuple[list[np.ndarray], list[str]]:
    """Decode OOD images by edgeclf's rules; undecodable files are skipped and named."""
    from edgeclf.data._image import ImageDecodeError, load_rgb

    images, skipped = [], []
    for p in paths:
        try:
            images.append(np.asarray(load_rgb(Path(folder) / p)))
        except (ImageDecodeError, OSError) as e:
            skipped.append(f"{p}: {e}")
    if not images:
        raise DataError(f"--ood-dir {folder}: none of its images could be decoded ({'; '.join(skipped[:3])})")
    return images, skipped


__all__ = [
    "ADJUSTED",
    "ARGMAX",
    "COSTS",
    "DEFAULT_COVERAGE",
    "DEFAULT_MAX_FALSE_ACCEPT",
    "DecisionPolicy",
    "DecisionRequest",
    "Decisions",
    "POLICY_VERSION",
    "PolicyError",
    "REJECT",
    "RULES",
    "RejectRule",
    "UNKNOWN",
    "auroc",
    "compare_to_argmax",
    "decide",
    "fit_policy",
    "fpr_at_tpr",
    "load_costs",
    "make_request",
    "ood_metrics",
    "ood_split",
    "parse_min_recall",
    "policy_metrics",
    "scores",
]
