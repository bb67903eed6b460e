"""``parity.json``: the export's parity report, a typed and versioned document.

:func:`edgeclf.export.pipeline.export_run` builds a :class:`ParityReport` and writes it with
:func:`edgeclf.export.bundle.write_parity`; every reader goes through
:func:`edgeclf.export.bundle.read_parity` (the file checks) and :func:`parse_parity` (this
schema). The document is canonical JSON with a semantic ``schema_version``: a reader accepts
the same major version; a new field is a minor bump, a renamed or removed one a major bump. A
field this reader does not know is refused in a document of its own version or older (the
writer is ours: it is damage) and ignored in one of a later minor version (what that version added).

What it holds:

* ``table``: one :class:`ParityRow` per artifact and engine: the eager reference, each
  exported (format, precision), and each C runtime backend the export gated;
* ``artifacts``: one :class:`ArtifactRecord` per (format, precision) exported, with every
  :class:`Attempt` (an int8 artifact that fails its gate is rebuilt) and its
  :class:`GateResult`;
* ``robustness``: the corruption suite on eager vs one shipped reduced-precision artifact, when
  it ran (``robustness_skipped`` says why it did not, when only fp32 artifacts shipped).

Schema history:

* ``0`` (no ``schema_version``): the layout before the report was versioned. It loads by
  migration (:data:`MIGRATED`): a field the document lacks takes its empty value (``None``,
  ``[]``, ``{}``); an attempt's gate status missing is taken from its ``passed`` flag. Only
  ``table`` and each row's ``format`` and ``precision`` are required, as the reader before
  this schema required.
* ``1.0.0``: ``schema_version``; statuses from fixed vocabularies. The writer writes every
  field (null where it does not apply); the reader requires each one but those only some rows
  have (a row's ``error``, ``ece``, ``gate_rules`` and decision figures, ``robustness``).
* ``1.1.0``: ``robustness_skipped``, why the suite did not run although asked for (only fp32
  artifacts shipped). A 1.0.0 reader drops it (a newer minor version's unknown fields are
  ignored); a 1.0.0 document reads with it null.

The C runtime (``cpp/src/c_api.cpp``, ``read_parity``) reads only the ``table`` rows'
``format``, ``precision`` and ``ms_per_image``, and ignores the rest, so a report this schema
refuses for another field (an unknown status, a figure as text) still loads there.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edgeclf.errors import EdgeclfError

__all__ = [
    "MIGRATED",
    "PARITY",
    "SCHEMA_VERSION",
    "ArtifactRecord",
    "Attempt",
    "AttemptStatus",
    "DecisionCheck",
    "GateResult",
    "GateStatus",
    "ParityReport",
    "ParityReportError",
    "ParityRow",
    "RecallTarget",
    "RobustnessRow",
    "RobustnessSummary",
    "RowStatus",
    "RuntimeDecision",
    "parse_parity",
]

PARITY = "parity.json"
SCHEMA_VERSION = "1.1.0"
#: The version a document without ``schema_version`` is read as (see the module's schema history).
MIGRATED = "0"

#: A table row: ``reference`` (the eager model), ``ok`` (gated and passed; shipped unless it is a
#: C runtime row), ``parity_failed``, ``insufficient_evidence`` (int8 on too few images to
#: decide), ``export_failed`` (the exporter raised), ``skipped`` (cannot be built or run here).
RowStatus = Literal["reference", "ok", "parity_failed", "insufficient_evidence", "export_failed", "skipped"]
#: An artifact's and an attempt's status: a row's, less ``reference``.
AttemptStatus = Literal["ok", "parity_failed", "insufficient_evidence", "export_failed", "skipped"]
#: A gate's verdict (``edgeclf.export.parity``).
GateStatus = Literal["passed", "failed", "insufficient_evidence"]

_CONTEXT_KEY = "parity_schema_migrating"
_NEWER_KEY = "parity_schema_newer_minor"
_NULL = "parity_recorded_null"


class ParityReportError(EdgeclfError):
    """A parity report that this schema cannot read (``read_parity`` reports it as a ``BundleError``)."""


def _migrating(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(_CONTEXT_KEY))


def _newer(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(_NEWER_KEY))


class _Doc(BaseModel):
    """A part of the report. Fields are typed and unknown ones refused (the writer is ours).

    ``_MIGRATED_DEFAULTS``: what a field is when a document of schema ``0`` lacks it (a
    callable is called for a fresh value). ``_RECORDED``: fields a ``1.x`` document must
    give a value (not null), null only in a migrated one.
    """

    model_config = ConfigDict(extra="forbid")

    _MIGRATED_DEFAULTS: ClassVar[dict[str, Any]] = {}
    _RECORDED: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any, info: ValidationInfo) -> Any:
        if _newer(info) and isinstance(data, dict):  # a later 1.y: keep what this version knows
            return {k: v for k, v in data.items() if k in cls.model_fields}
        if not (_migrating(info) and isinstance(data, dict)):
            return data
        filled = {k: v() if callable(v) else v for k, v in cls._MIGRATED_DEFAULTS.items() if k not in data}
        return cls._upgrade({**data, **filled}, data)

    @classmethod
    def _upgrade(cls, data: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
        """Schema 0 -> 1 beyond the defaults (``original``: the document's own keys)."""
        return data

    @model_validator(mode="after")
    def _recorded(self, info: ValidationInfo) -> Any:
        if not _migrating(info):
            for name in type(self)._RECORDED:
                if getattr(self, name) is None:
                    raise PydanticCustomError(
                        _NULL,
                        "{field} is null; a report of schema {version} records it",
                        {"field": name, "version": SCHEMA_VERSION},
                    )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON object this part is written as (every field, null where not applicable)."""
        return self.model_dump(mode="json")


# ---- decision policy figures ----------------------------------------------------------------------------------------


class RecallTarget(_Doc):
    """A class's recall target (``--min-recall``) on one artifact: the target, the artifact's and the eager model's recall."""

    _MIGRATED_DEFAULTS = {"eager_recall": None}
    _RECORDED = ("eager_recall",)

    target: float
    recall: float
    eager_recall: float | None


class DecisionCheck(_Doc):
    """The decision policy on one artifact's validation logits vs the eager model's (``parity.decision_check``)."""

    decision_agreement: float
    macro_f1: float
    macro_f1_delta: float
    coverage: float
    targets: dict[str, RecallTarget]
    #: recall targets missed by more than the tolerance, each a sentence (empty: passed)
    failures: list[str]


class RuntimeDecision(_Doc):
    """The C runtime's decisions against the Python reference applied to its own logits
    (``runtime.gate.cpp_decision_match``), plus :class:`DecisionCheck`'s figures when the
    policy is not argmax (null with an argmax policy)."""

    decision_match: float
    images: int
    #: the first indices (at most 10) of images whose decisions differ
    mismatches: list[int]
    decision_agreement: float | None = None
    macro_f1: float | None = None
    macro_f1_delta: float | None = None
    coverage: float | None = None
    targets: dict[str, RecallTarget] = {}
    failures: list[str] = []


# ---- gate results ---------------------------------------------------------------------------------------------------

_FIGURES = (
    "format",
    "precision",
    "images",
    "agreement",
    "max_abs_logit_diff",
    "accuracy",
    "macro_f1",
    "accuracy_delta",
    "macro_f1_delta",
    "kl_divergence",
    "ece_calibrated",
    "ms_per_image",
    "passed",
    "status",
)


class GateResult(_Doc):
    """One artifact's parity figures against the eager model and its gates' verdict
    (``edgeclf.export.parity.ParityResult``, as recorded)."""

    _MIGRATED_DEFAULTS = {
        **dict.fromkeys(_FIGURES),
        "per_class_recall_delta": dict,
        "failures": list,
        "rules": dict,
    }
    _RECORDED = _FIGURES

    format: str | None
    precision: str | None
    images: int | None
    agreement: float | None
    max_abs_logit_diff: float | None
    accuracy: float | None
    macro_f1: float | None
    accuracy_delta: float | None
    macro_f1_delta: float | None
    #: class -> recall of the artifact minus the eager model's
    per_class_recall_delta: dict[str, float]
    kl_divergence: float | None
    ece_calibrated: float | None
    ms_per_image: float | None
    passed: bool | None
    #: each failed gate as a sentence, then the gates with insufficient evidence
    failures: list[str]
    status: GateStatus | None
    #: gate -> the rule that decided it (point estimate, or the interval and its bounds)
    rules: dict[str, str]

    @classmethod
    def _upgrade(cls, data: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
        if "status" not in original and isinstance(original.get("passed"), bool):  # written before the int8 intervals
            data["status"] = "passed" if original["passed"] else "failed"
        return data


class Attempt(_Doc):
    """One build of an artifact: its options, and either the exporter's error or its gates."""

    _MIGRATED_DEFAULTS = {"options": dict, "status": None}
    _RECORDED = ("status",)

    #: the exporter options of this build (calibration method, layers kept in float, ...)
    options: dict[str, Any]
    status: AttemptStatus | None
    #: the exporter's one-line error (``export_failed``, ``skipped``); null when it built
    error: str | None = None
    #: null when nothing was built to gate
    parity: GateResult | None = None
    #: the decision policy's figures (null: argmax, or nothing built)
    decision: DecisionCheck | None = None


class ArtifactRecord(_Doc):
    """One (format, precision) of the export: its final status, the exporter's details, every attempt."""

    _MIGRATED_DEFAULTS = {"status": None, "details": dict, "attempts": list}
    _RECORDED = ("status",)

    format: str
    precision: str
    status: AttemptStatus | None
    #: what the exporter reports (opset, node counts, the TensorRT build commands, ...); format-specific
    details: dict[str, Any]
    attempts: list[Attempt]

    @property
    def last(self) -> Attempt | None:
        """The attempt whose result counts (None when none is recorded)."""
        return self.attempts[-1] if self.attempts else None

    def reason(self) -> str:
        """Why the last attempt did not pass: its gate failures, else its error ("" when none)."""
        last = self.last
        if last is None:
            return ""
        if last.parity is not None and last.parity.failures:
            return "; ".join(last.parity.failures)
        return last.error or ""


def _decision_kind(v: Any) -> str:
    runtime = isinstance(v, RuntimeDecision) or (isinstance(v, dict) and "decision_match" in v)
    return "RuntimeDecision" if runtime else "DecisionCheck"


#: a Python engine's row holds a DecisionCheck, a C runtime row a RuntimeDecision (it has ``decision_match``)
RowDecision = Annotated[
    Annotated[DecisionCheck, Tag("DecisionCheck")] | Annotated[RuntimeDecision, Tag("RuntimeDecision")],
    Discriminator(_decision_kind),
]


class ParityRow(_Doc):
    """One row of the parity table: an artifact on one engine against the eager model, on validation.

    The figures are null where they do not apply (the reference's size and speed, an artifact
    that failed to export).
    """

    _MIGRATED_DEFAULTS = dict.fromkeys(("status", "size_mb", "macro_f1", "delta_macro_f1", "agreement", "ms_per_image"))
    _RECORDED = ("status",)

    #: ``onnx``, ``openvino``, ``torchscript``, ``tensorrt``, ``eager (torch)`` or ``c-runtime (<backend>)``
    format: str
    precision: str
    status: RowStatus | None
    size_mb: float | None
    macro_f1: float | None
    delta_macro_f1: float | None
    agreement: float | None
    ms_per_image: float | None
    #: the gate failures or the error (null when none)
    error: str | None = None
    ece: float | None = None
    #: gate -> the rule that decided it
    gate_rules: dict[str, str] | None = None
    #: a Python engine's row: DecisionCheck; a C runtime row: RuntimeDecision; null without a policy
    decision: RowDecision | None = None
    decision_agreement: float | None = None
    decision_match: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.format, self.precision)

    @property
    def failed(self) -> bool:
        """The row fails the export: its gate failed or could not be decided."""
        return self.status in ("parity_failed", "insufficient_evidence")


# ---- robustness -----------------------------------------------------------------------------------------------------


class RobustnessRow(_Doc):
    """One (corruption, severity): each figure per predictor (``eager fp32``, ``<format>/<precision>``)."""

    corruption: str
    severity: float | None
    severity_label: str
    accuracy: dict[str, float | None]
    macro_f1: dict[str, float | None]
    delta_macro_f1: dict[str, float | None]
    flip_rate: dict[str, float | None]


class RobustnessSummary(_Doc):
    """The corruption suite on the eager model and on one shipped reduced-precision artifact (int8, else fp16)."""

    #: ``<format>/<precision>`` of the artifact compared with eager
    artifact: str
    images: int
    rows: list[RobustnessRow]
    #: predictor -> mean macro-F1 over every corruption
    mean_corruption_macro_f1: dict[str, float]


# ---- the report -----------------------------------------------------------------------------------------------------


class ParityReport(_Doc):
    """``parity.json``: the export's parity results (see the module docstring)."""

    _MIGRATED_DEFAULTS = {"split": None, "images": None, "temperature": None, "artifacts": list}
    _RECORDED = ("split", "images", "temperature")

    schema_version: str = SCHEMA_VERSION
    #: the split the artifacts were gated on (``val``)
    split: str | None
    images: int | None
    #: the calibration temperature the figures use
    temperature: float | None
    artifacts: list[ArtifactRecord]
    table: list[ParityRow]
    #: null when the suite did not run (``--no-robustness``, nothing shipped, fp32 only)
    robustness: RobustnessSummary | None = None
    #: why the suite did not run although asked for (only fp32 artifacts shipped), else null
    robustness_skipped: str | None = None

    _migrated_from: str | None = PrivateAttr(None)

    @property
    def migrated_from(self) -> str | None:
        """The schema the document was written in when it was migrated on read (``"0"``), else None."""
        return self._migrated_from

    def row(self, fmt: str, precision: str) -> ParityRow | None:
        """The table row of (format, precision), or None."""
        return next((r for r in self.table if r.key == (fmt, precision)), None)

    def speeds(self) -> dict[tuple[str, str], float]:
        """(format, precision) -> ms per image on validation, for the rows that measured it."""
        return {r.key: r.ms_per_image for r in self.table if r.ms_per_image is not None}


# ---- reading --------------------------------------------------------------------------------------------------------


def _semver(version: str) -> tuple[int, int, int] | None:
    core = version.split("+", 1)[0].split("-", 1)[0].split(".")
    if len(core) != 3 or not all(p.isdigit() for p in core):
        return None
    return int(core[0]), int(core[1]), int(core[2])


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc) or "the document"


def parse_parity(doc: Any, source: str = PARITY) -> ParityReport:
    """Validate a parity report (the parsed JSON of ``source``), migrating a document of schema 0.

    Raises:
        ParityReportError: not an object, another major schema version, or a field missing,
            of the wrong type or out of its vocabulary; the message names ``source`` and the field.
    """
    if not isinstance(doc, dict):
        raise ParityReportError(f"{source} is damaged (not a JSON object); re-export the bundle")
    migrating = "schema_version" not in doc
    newer = False
    if not migrating:
        version = doc["schema_version"]
        got = _semver(version) if isinstance(version, str) else None
        ours = _semver(SCHEMA_VERSION)
        if got is None or ours is None:
            raise ParityReportError(f"{source} is damaged (schema_version: {version!r} is not a semantic version)")
        newer = got > ours
        if got[0] != ours[0]:
            raise ParityReportError(
                f"{source}: parity report schema_version {version!r} is not supported "
                f"(this edgeclf reads {ours[0]}.x); {'upgrade edgeclf' if got[0] > ours[0] else 're-export the bundle'}"
            )
    else:
        doc = {**doc, "schema_version": SCHEMA_VERSION}
    try:
        report = ParityReport.model_validate(doc, strict=True, context={_CONTEXT_KEY: migrating, _NEWER_KEY: newer})
    except ValidationError as e:
        err = e.errors()[0]
        loc, msg = err["loc"], err["msg"]
        if err["type"] == _NULL:  # the model's check: name the field itself
            loc, msg = (*loc, err["ctx"]["field"]), f"is null; a report of schema {SCHEMA_VERSION} records it"
        raise ParityReportError(f"{source} is damaged ({_where(loc)}: {msg}); re-export the bundle") from None
    if migrating:
        report._migrated_from = MIGRATED
    return report
