"""What each stage of the build hands the next: one model per stage, stored by the stage cache as
the ``result`` of ``OUT/stages/<stage>.json``, and ``build.json``, the build's summary.

A field that a stage leaves out when it does not apply (``_OMIT_NONE``) is left out of the
document too, so a stage writes the keys it always wrote. Fields that older builds did not
record have defaults, so their cached stages still load; a document that does not validate
(a changed layout, a hand-edited file) makes the cache run that stage again.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from edgeclf.profiles import Precision

# The layers' own names for these (edgeclf.select.selection.Source, edgeclf.export.parity_schema.RowStatus,
# edgeclf.train.recipe.RecipeChoice) import their packages, torch among them; the build's results are
# read without them (the CLI's rendering, the report), so they are spelt here and tests check they agree.

#: where a latency figure comes from (edgeclf.select.selection.Source)
Source = Literal["estimate", "measured"]
#: a parity row's status (edgeclf.export.parity_schema.RowStatus)
RowStatus = Literal["reference", "ok", "parity_failed", "insufficient_evidence", "export_failed", "skipped"]


class _Part(BaseModel):
    """A stage document or a part of one: typed, unknown fields refused (the writer is ours)."""

    model_config = ConfigDict(extra="forbid")

    #: fields absent from the document when None (the stage did not set them)
    _OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        doc: dict[str, Any] = handler(self)
        for name in self._OMIT_NONE:
            if doc.get(name) is None:
                doc.pop(name, None)
        return doc


class StageResult(_Part):
    """The result of one stage (the base of every stage's model)."""


# ---- audit, split ----------------------------------------------------------------------------------------------------


class AuditResult(StageResult):
    num_images: int
    num_classes: int
    #: largest / smallest non-empty class; None when no class has images
    imbalance_ratio: float | None
    #: the smaller of the images' median width and height (px); None without images or in builds that predate it
    median_short_side: int | None = None
    #: the audit report, relative to OUT
    audit: str


class SplitResult(StageResult):
    fingerprint: str
    #: split -> class -> images (edgeclf.data.split.SplitSummary.counts)
    counts: dict[str, dict[str, int]]
    #: the manifest, relative to OUT
    manifest: str


# ---- select ----------------------------------------------------------------------------------------------------------


class SelectResult(StageResult):
    """The configuration the build trains, exports and times (the selection's choice, then what
    training chose within it)."""

    backbone: str
    resolution: int
    runtime: str
    #: the largest resolution of the choice's fitting configurations (None in builds that predate it)
    max_resolution: int | None = None
    precision: Precision
    latency_ms_p95_estimate: float
    latency_source: Source
    memory_mb: float
    file_mb: float
    accuracy: float | None
    justification: str
    #: the selection document, relative to OUT
    selection: str


# ---- train -----------------------------------------------------------------------------------------------------------


class RecipeLine(BaseModel):
    """One setting of the resolved recipe and why it has that value (edgeclf.train.recipe.RecipeChoice;
    a field training adds is kept as it is)."""

    model_config = ConfigDict(extra="allow")

    key: str
    value: Any
    reason: str
    source: Literal["auto", "user"]


class TrainResult(StageResult):
    run: str
    checkpoint_sha256: str
    #: the backbone and input size trained (None in builds that predate them: the selection's then)
    backbone: str | None = None
    search: bool
    val_macro_f1: float | None
    val_accuracy: float | None
    best_epoch: int | None
    #: the shipped candidate's name (None: the fine-tune)
    candidate: str | None
    image_size: int | None = None
    #: baseline -> its validation macro-F1
    baselines: dict[str, float | None] = {}
    #: candidate -> its validation macro-F1
    candidates: dict[str, float | None] = {}
    #: open: the training metrics' "selection" (rule, reason, margins), copied
    selection: dict[str, Any] | None = None
    #: open: the training metrics' "quality_gates" (gate -> its verdict), copied
    quality_gates: dict[str, Any] | None = None
    recipe: list[RecipeLine] = []


# ---- evaluate --------------------------------------------------------------------------------------------------------


class SplitScores(_Part):
    """A split's headline figures (None: not evaluated, or not reported)."""

    accuracy: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None


class ArgmaxSummary(_Part):
    """Argmax's figures on a split, next to the decision policy's."""

    macro_f1: float | None
    accuracy: float | None
    coverage: float | None
    selective_accuracy: float | None
    #: class -> recall
    recall: dict[str, float | None]


class DecisionSummary(ArgmaxSummary):
    """The decision policy's figures on a split, argmax's beside them."""

    _OMIT_NONE = ("ood",)

    argmax: ArgmaxSummary
    #: open: the out-of-distribution figures as the evaluation records them (dir, ood_images, auroc, ...)
    ood: dict[str, Any] | None = None


class DecisionResult(_Part):
    """The decision policy's summary; a split is present only when it was evaluated with this policy."""

    _OMIT_NONE = ("val", "test")

    describe: str | None
    val: DecisionSummary | None = None
    test: DecisionSummary | None = None


class EvaluateResult(StageResult):
    _OMIT_NONE = ("decision",)

    val: SplitScores
    test: SplitScores
    #: open: the evaluation's bootstrap confidence intervals (metric -> low, high, ...), copied
    val_ci: dict[str, Any] | None = None
    #: open: as val_ci, on the test split
    test_ci: dict[str, Any] | None = None
    temperature: float | None
    #: the HTML report, relative to OUT
    report: str
    #: only when the build fits a decision policy
    decision: DecisionResult | None = None


# ---- export ----------------------------------------------------------------------------------------------------------


class ParityLine(_Part):
    """One row of the export's parity table (edgeclf.export.parity_schema.ParityRow's headline fields)."""

    format: str
    precision: str
    status: RowStatus | None
    size_mb: float | None
    macro_f1: float | None
    delta_macro_f1: float | None
    agreement: float | None
    ms_per_image: float | None
    error: str | None
    decision_agreement: float | None = None
    decision_match: float | None = None


class ExportStageResult(StageResult):
    #: the bundle, relative to OUT
    bundle: str
    #: "<format>/<precision>" of each artifact shipped
    artifacts: list[str]
    #: the artifacts that failed and why
    failed: list[str]
    parity: list[ParityLine]


# ---- benchmark -------------------------------------------------------------------------------------------------------


class BenchmarkRow(_Part):
    """One configuration timed through the C runtime on this host."""

    _OMIT_NONE = ("configuration",)

    runtime: str
    precision: str
    artifact: str
    #: "selected" or "runtime default" (None in builds that predate it)
    configuration: str | None = None
    p50_ms: float
    p95_ms: float
    p99_ms: float


class BenchmarkResult(StageResult):
    _OMIT_NONE = ("rows",)

    source: Literal["estimate", "measured"]
    why: str
    latency_ms_p95: float
    budget_ms: float
    fits: bool
    label: str
    #: measured only: the selected configuration first
    rows: list[BenchmarkRow] | None = None


# ---- package, report -------------------------------------------------------------------------------------------------


class PackageResult(StageResult):
    #: the device package's file name, in OUT
    package: str
    sha256: str
    size_mb: float
    prebuilt_library: bool


class ReportResult(StageResult):
    report: str
    summary: str


class BuildRecord(_Part):
    """``build.json``: the build's summary."""

    profile: str
    #: open: the selection's chosen row as selection.json has it (edgeclf.select.Candidate's fields),
    #: copied as it is so a selection written by an older version still reports
    choice: dict[str, Any]
    benchmark: BenchmarkResult
    package: PackageResult
    test: SplitScores
    val: SplitScores


class BuildResults(_Part):
    """Every stage's result, in the chain's order (the report's own is None while it is written)."""

    _OMIT_NONE = ("report",)

    audit: AuditResult
    split: SplitResult
    select: SelectResult
    train: TrainResult
    evaluate: EvaluateResult
    export: ExportStageResult
    benchmark: BenchmarkResult
    package: PackageResult
    report: ReportResult | None = None


class StageRun(_Part):
    """How a stage ran in one build."""

    stage: str
    status: Literal["done", "cached"]
    seconds: float


class BuildRun(_Part):
    """What :func:`edgeclf.build.build` returns (``edgeclf build --json`` prints it)."""

    out: str
    stages: list[StageRun]
    results: BuildResults
