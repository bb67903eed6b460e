"""The training run directory as typed documents: what ``edgeclf train`` hands to the stages after it.

A run directory holds ``config.yaml`` (the resolved :class:`~edgeclf.train.config.TrainConfig`,
the recipe's automatic choices and the run's facts) and ``metrics.json`` (the candidates, the
selection, the quality gates; evaluation adds its summaries later). Every reader after training
(evaluate, export, build, the CLI, the recipe search) goes through :func:`read_run_config` and
:func:`read_metrics`, so a damaged or foreign file is one clear :class:`ConfigError` naming the
file and the field, never a ``KeyError`` three stages later.

The documents are versioned (``metrics.json`` ``schema_version``; ``config.yaml`` is validated
against the current config with unknown fields refused). Fields a newer edgeclf adds are kept
(``extra="allow"``) so that a run written by one version and re-written by another loses nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeclf._io import read_document, write_json
from edgeclf.errors import ConfigError
from edgeclf.preprocess import PreprocessSpec
from edgeclf.train.config import TrainConfig

#: The metrics.json versions this reader understands ("1.0": no candidates; "1.1": candidates,
#: selection and quality gates).
METRICS_SCHEMAS = ("1.0", "1.1")
METRICS_SCHEMA = "1.1"


class _Open(BaseModel):
    """A document part that keeps fields it does not name (written by a newer edgeclf, or added later)."""

    model_config = ConfigDict(extra="allow")


class SplitScores(_Open):
    """A model's figures on one split (the candidates' validation scores)."""

    accuracy: float
    macro_f1: float
    n: int | None = None
    nll: float | None = None
    per_class_recall: dict[str, float] = Field(default_factory=dict)
    per_class_f1: dict[str, float] = Field(default_factory=dict)


class CandidateRecord(_Open):
    """One candidate the run produced (majority class, linear probe, fine-tuning, trials)."""

    name: str
    description: str = ""
    epoch: int = 0
    seconds: float = 0.0
    shippable: bool = True
    val: SplitScores


class SelectionRecord(_Open):
    """Which candidate shipped, by which rule, and its margin over each other candidate."""

    selected: str
    rule: str
    reason: str
    margins: dict[str, float] = Field(default_factory=dict)


class GateRecord(_Open):
    passed: bool
    rule: str = ""
    classes: list[str] = Field(default_factory=list)


class ShippedSummary(_Open):
    """The shipped checkpoint's validation figures (``metrics.json`` ``finetuned``)."""

    candidate: str | None = None
    epoch: int | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    n: int | None = None


class TrainMetrics(_Open):
    """``metrics.json`` of a training run."""

    schema_version: str = METRICS_SCHEMA
    classes: list[str] = Field(default_factory=list)
    split: str = "val"
    baselines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    candidates: list[CandidateRecord] = Field(default_factory=list)
    selection: SelectionRecord | None = None
    quality_gates: dict[str, GateRecord] = Field(default_factory=dict)
    finetuned: ShippedSummary = Field(default_factory=ShippedSummary)
    history: list[dict[str, Any]] = Field(default_factory=list)
    recipe: dict[str, Any] = Field(default_factory=dict)
    stopped_early: bool = False
    test_split: str = "untouched"
    #: per split, added by ``edgeclf evaluate``
    evaluation: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: the fitted temperature, added by ``edgeclf evaluate``
    calibration: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, v: Any) -> Any:
        """Older runs wrote ``null`` for a part they did not have: read it as absent."""
        if isinstance(v, dict):
            return {k: x for k, x in v.items() if x is not None or k == "calibration"}
        return v

    @field_validator("schema_version")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS_SCHEMAS:
            raise ValueError(f"schema {v!r} is not one this edgeclf reads ({', '.join(METRICS_SCHEMAS)}); upgrade edgeclf")
        return v

    def baseline_macro_f1(self) -> dict[str, float | None]:
        return {k: v.get("macro_f1") for k, v in self.baselines.items()}

    def candidate_macro_f1(self) -> dict[str, float]:
        return {c.name: c.val.macro_f1 for c in self.candidates}

    def recipe_choices(self) -> list[dict[str, Any]]:
        return list(self.recipe.get("choices") or [])

    def to_json(self) -> dict[str, Any]:
        """The document as written: the parts it holds, nothing a default filled in."""
        return self.model_dump(mode="json", exclude_unset=True)


class RunInfo(_Open):
    """``config.yaml`` ``run``: what the run was (backbone, classes, preprocessing, data, versions)."""

    backbone: str
    timm_arch: str | None = None
    classes: list[str]
    preprocess: dict[str, Any]
    weights: dict[str, Any] = Field(default_factory=dict)
    data_root: str
    dataset_fingerprint: str | None = None
    seed: int = 0
    versions: dict[str, Any] = Field(default_factory=dict)
    git_commit: str | None = None

    @field_validator("preprocess")
    @classmethod
    def _spec(cls, v: dict[str, Any]) -> dict[str, Any]:
        PreprocessSpec.from_dict(v)  # a spec the runtime cannot run is refused here, not at export
        return v

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess)


class RunConfigDocument(BaseModel):
    """``config.yaml`` of a training run."""

    model_config = ConfigDict(extra="allow")

    config: TrainConfig
    recipe: dict[str, Any] = Field(default_factory=dict)
    run: RunInfo

    @property
    def backbone(self) -> str:
        return self.config.model.backbone

    @property
    def manifest(self) -> Path:
        if self.config.data.manifest is None:
            raise ConfigError("the run's config.yaml names no data manifest (config.data.manifest)")
        return Path(self.config.data.manifest)


def read_run_config(run_dir: Path) -> RunConfigDocument:
    """The run's ``config.yaml``, validated; a :class:`ConfigError` naming the file and field otherwise."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a training run directory (no config.yaml); run `edgeclf train` first")
    try:
        return read_document(path, RunConfigDocument, "train the run again", yaml.safe_load, (yaml.YAMLError,))
    except ConfigError as e:
        if str(e).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: run.preprocess: {e}") from None  # the preprocessing spec's own check


def read_metrics(run_dir: Path) -> TrainMetrics:
    """The run's ``metrics.json``, validated; a :class:`ConfigError` naming the file and field otherwise."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: the training run did not finish; resume it with `edgeclf train --resume`")
    return read_document(path, TrainMetrics, "train the run again")


def write_metrics(run_dir: Path, metrics: TrainMetrics | dict[str, Any]) -> TrainMetrics:
    """Validate and write ``metrics.json`` atomically (a temporary file, then a rename)."""
    doc = metrics if isinstance(metrics, TrainMetrics) else TrainMetrics.model_validate(metrics)
    write_json(Path(run_dir) / "metrics.json", doc.to_json())
    return doc
