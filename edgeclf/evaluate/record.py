"""A split's evaluation as a typed document: ``<run>/eval/<split>/metrics.json``.

``edgeclf evaluate`` writes it; the build's evaluate stage, the CLI and the report read it. The
figures every reader relies on are typed (and checked when the file is read back); the sections
only the HTML report renders (robustness, slices, mistakes, figures) stay open (``extra="allow"``),
so a document written by a newer edgeclf keeps what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from edgeclf._io import read_document, write_json
from edgeclf.train.record import _Open


class ClassFigures(_Open):
    precision: float
    recall: float
    f1: float
    support: int


class CalibrationFigures(_Open):
    """The temperature fitted on validation and what it did to ECE and NLL on this split."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float


class GateVerdict(_Open):
    passed: bool
    rule: str = ""


class Verdict(_Open):
    passed: bool
    gates: dict[str, GateVerdict] = Field(default_factory=dict)
    #: what the figures cannot show (never fails the verdict): classes with too few images on the split
    notes: list[str] = Field(default_factory=list)


class SplitEvaluation(_Open):
    """One split's evaluation of a run's shipped checkpoint."""

    split: str
    classes: list[str]
    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    weighted_f1: float
    per_class: dict[str, ClassFigures]
    calibration: CalibrationFigures
    verdict: Verdict
    test_reused: bool = False
    temperature: float | None = None
    #: bootstrap intervals (``edgeclf.stats.bootstrap_ci``); absent in evaluations that predate them
    ci: dict[str, Any] | None = None
    #: the decision policy's figures (``edgeclf.evaluate.decision``); absent without a policy
    decision: dict[str, Any] | None = None
    prediction_engine: str | None = None
    model_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The document as written: the parts it holds, nothing a default filled in."""
        return self.model_dump(mode="json", exclude_unset=True)

    def policy_document(self) -> Any:
        return (self.decision or {}).get("policy_document")


def split_evaluation_path(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / "eval" / split / "metrics.json"


def write_split_evaluation(run_dir: Path, metrics: SplitEvaluation | dict[str, Any]) -> SplitEvaluation:
    """Validate and write the split's document atomically; returns the typed document."""
    doc = metrics if isinstance(metrics, SplitEvaluation) else SplitEvaluation.model_validate(metrics)
    write_json(split_evaluation_path(run_dir, doc.split), doc.to_json())
    return doc


def read_split_evaluation(run_dir: Path, split: str) -> SplitEvaluation | None:
    """The split's evaluation, or None when the split was not evaluated; a damaged file is a
    :class:`ConfigError` naming the file and the field."""
    path = split_evaluation_path(run_dir, split)
    if not path.is_file():
        return None
    return read_document(path, SplitEvaluation, "evaluate the run again")
