"""The bundle: artifacts + ``edgeclf.json`` (canonical manifest) + ``parity.json``.

``edgeclf.json`` is canonical JSON (UTF-8, sorted keys). Everything a device
needs to run the model correctly is in it: labels, the fully resolved
preprocessing spec, the calibration temperature, and each artifact's file,
format, precision and SHA-256. The *model card* (the manifest without the
``artifacts`` and ``parity`` sections, which depend on the artifact files) is
embedded in every artifact: ONNX ``metadata_props["edgeclf.meta"]``, OpenVINO
``rt_info``, TorchScript extra files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from edgeclf._io import canonical_json, sha256_file, write_json
from edgeclf.errors import EdgeclfError
from edgeclf.evaluate.decision import DecisionPolicy
from edgeclf.export.parity_schema import PARITY, ParityReport, ParityReportError, parse_parity
from edgeclf.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from edgeclf.export.formats import Artifact

#: 1.1.0 added the optional ``decision`` section (absent: argmax, so 1.0.x bundles still load).
SCHEMA_VERSION = "1.1.0"
#: Oldest runtime (edgeclf C/Python runtime version) able to read this schema.
MIN_RUNTIME_VERSION = "0.1.0"
#: Oldest runtime that applies a ``decision`` section; a bundle that carries a policy other than
#: argmax asks for it, so an older runtime refuses the bundle instead of silently taking argmax.
MIN_RUNTIME_VERSION_DECISION = "0.2.0"
MANIFEST = "edgeclf.json"


class BundleError(EdgeclfError):
    """A bundle is missing, incomplete, tampered with or of an unsupported schema."""


#: The largest manifest either side reads (the C runtime's kMaxManifestBytes).
MAX_MANIFEST_BYTES = 64 << 20
_HEX = frozenset("0123456789abcdef")


def safe_file_name(name: str) -> bool:
    """A plain file name inside the bundle: no folder part, no ``..``, no NUL (the C runtime's rule)."""
    return (
        0 < len(name.encode("utf-8", "surrogatepass")) <= 255 and name not in (".", "..") and not any(c in name for c in "/\\\0")
    )


def _semver(v: str) -> tuple[int, int, int]:
    core = v.split("+", 1)[0].split("-", 1)[0]
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() and 0 < len(p) <= 6 for p in parts):
        raise ValueError(f"{v!r} is not a semantic version")
    return int(parts[0]), int(parts[1]), int(parts[2])


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    size_bytes: int

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not safe_file_name(v):
            raise ValueError(f"{v!r} is not a plain file name inside the bundle")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or not set(v) <= _HEX:
            raise ValueError("is not a SHA-256 hex digest")
        return v

    @field_validator("size_bytes")
    @classmethod
    def _size(cls, v: int) -> int:
        if v < 0:
            raise ValueError("is negative")
        return v


class ArtifactEntry(FileEntry):
    model_config = ConfigDict(extra="forbid")
    format: str
    runtime: str
    precision: str
    extra_files: list[FileEntry] = []
    status: str  # "ok" (shipped) — failed artifacts are listed in parity.json only
    details: dict[str, Any] = {}

    def to_artifact(self) -> Artifact:
        """The exporter's record of this shipped artifact, as the runners take it."""
        from edgeclf.export.formats import Artifact

        return Artifact(
            format=self.format,
            precision=self.precision,
            file=self.file,
            extra_files=[e.file for e in self.extra_files],
            runtime=self.runtime,
            status="ok",
            error=None,
            export_seconds=0.0,
            details=self.details,
        )


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str
    min_runtime_version: str
    name: str
    created: str
    creator: dict[str, str]
    labels: list[str]
    #: the resolved spec as written (``PreprocessSpec.to_dict()``); at load it must build a
    #: :class:`PreprocessSpec` (the C reader's limits), and :meth:`spec` returns that
    preprocess: dict[str, Any]
    temperature: float
    source_run: dict[str, Any]
    dataset_fingerprint: str
    calibration_data: dict[str, Any]
    metrics: dict[str, Any]
    target_profile: str | None = None
    #: the decision policy fitted on validation (``edgeclf.evaluate.decision``); None: argmax
    decision: DecisionPolicy | None = None
    artifacts: list[ArtifactEntry] = []
    parity: dict[str, Any] = {}

    @field_validator("schema_version", "min_runtime_version")
    @classmethod
    def _version(cls, v: str) -> str:
        _semver(v)
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("is empty")
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"names {', '.join(repr(d) for d in dup)} more than once")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"must be finite and > 0, got {v}")
        return v

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            PreprocessSpec.from_dict(v)
        except EdgeclfError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _decision_fits(self) -> BundleManifest:
        if self.decision is not None:
            try:
                self.decision.check(len(self.labels))
            except EdgeclfError as e:
                raise ValueError(str(e)) from None
        return self

    def model_card(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"artifacts", "parity"})

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess)

    def policy(self) -> DecisionPolicy:
        """The bundle's decision policy (argmax when the manifest has none)."""
        return self.decision if self.decision is not None else DecisionPolicy()


def model_card_json(card: dict[str, Any]) -> str:
    return canonical_json(card)


def file_entry(bundle_dir: Path, name: str) -> FileEntry:
    p = bundle_dir / name
    return FileEntry(file=name, sha256=sha256_file(p), size_bytes=p.stat().st_size)


def write_manifest(bundle_dir: Path, manifest: BundleManifest) -> Path:
    path = Path(bundle_dir) / MANIFEST
    write_json(path, manifest.model_dump(mode="json"))
    return path


def _major(v: str) -> int:
    try:
        return int(v.split(".")[0])
    except (ValueError, IndexError):
        return -1


def _runtime_version() -> tuple[int, int, int]:
    import importlib.metadata as md

    try:
        return _semver(md.version("edgeclf"))
    except (md.PackageNotFoundError, ValueError):  # pragma: no cover - a source tree without metadata
        return (0, 0, 0)


def _inside(bundle_dir: Path, p: Path) -> bool:
    """``p`` (a bundle file, maybe a symlink) resolves to a file inside ``bundle_dir``."""
    try:
        return p.resolve(strict=True).is_relative_to(bundle_dir.resolve(strict=True))
    except (OSError, RuntimeError):  # a dangling link or a loop
        return False


def read_parity(bundle_dir: Path) -> ParityReport | None:
    """``parity.json`` read through its schema (``edgeclf.export.parity_schema``): None when absent;
    a damaged report (not a file inside the bundle, not JSON, another major schema version, a field
    missing, of the wrong type or out of its vocabulary) is a BundleError naming the file and field.
    A report written before the schema was versioned is migrated on read."""
    path = Path(bundle_dir) / PARITY
    if not path.exists() and not path.is_symlink():
        return None
    if not _inside(Path(bundle_dir), path) or not path.is_file():
        raise BundleError(f"{path}: the parity report is not a file inside the bundle; re-export the bundle")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; the bundle is damaged")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is damaged (not valid JSON: {e}); re-export the bundle") from None
    try:
        return parse_parity(doc, str(path))
    except ParityReportError as e:
        raise BundleError(str(e)) from None


def write_parity(bundle_dir: Path, report: ParityReport) -> Path:
    """Write ``report`` as ``parity.json`` (canonical JSON, atomically), after checking that it
    reads back: the writer never leaves a report its own reader refuses."""
    path = Path(bundle_dir) / PARITY
    doc = report.to_dict()
    try:
        parse_parity(doc, str(path))
    except ParityReportError as e:
        raise BundleError(f"refusing to write an unreadable parity report: {e}") from None
    write_json(path, doc)
    return path


def read_bundle(bundle_dir: Path, verify: bool = True) -> BundleManifest:
    """Load and validate a bundle's manifest; with ``verify``, check every artifact's hash.

    The rules are the C runtime's (``cpp/src/manifest.cpp``), held together by the shared
    manifest cases in ``tests/manifest_cases.py``: a bundle one side loads, the other loads.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not an edgeclf bundle (no {MANIFEST}); create one with `edgeclf export`")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; the bundle is damaged")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        raise BundleError(f"{path} starts with a UTF-8 byte-order mark; manifests are canonical JSON without one")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is damaged") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    if _major(str(raw.get("schema_version", ""))) != _major(SCHEMA_VERSION):
        raise BundleError(
            f"{path}: schema_version {raw.get('schema_version')!r} is not supported "
            f"(this edgeclf reads {SCHEMA_VERSION.split('.')[0]}.x)"
        )
    try:
        m = BundleManifest.model_validate(raw, strict=True)  # the C runtime's JSON types: no "1.5" for 1.5, no true for 1
    except ValidationError as e:
        err = e.errors()[0]
        raise BundleError(f"{path}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    need = _semver(m.min_runtime_version)
    if need > _runtime_version():
        raise BundleError(
            f"{path}: this bundle needs edgeclf runtime >= {m.min_runtime_version}, this is "
            f"{'.'.join(map(str, _runtime_version()))}; upgrade edgeclf"
        )
    read_parity(bundle_dir)
    if verify:
        for a in m.artifacts:
            for entry in [FileEntry(file=a.file, sha256=a.sha256, size_bytes=a.size_bytes), *a.extra_files]:
                p = bundle_dir / entry.file
                if not p.exists() and not p.is_symlink():
                    raise BundleError(f"bundle {bundle_dir} is incomplete: {entry.file} is missing")
                if not _inside(bundle_dir, p) or not p.is_file():
                    raise BundleError(
                        f"bundle {bundle_dir}: {entry.file} is not a file inside the bundle "
                        "(a link out of it, or a folder); re-export the bundle"
                    )
                if p.stat().st_size != entry.size_bytes or sha256_file(p) != entry.sha256:
                    raise BundleError(
                        f"bundle {bundle_dir}: {entry.file} does not match its SHA-256 in {MANIFEST} "
                        "(truncated or tampered with); re-export the bundle"
                    )
    return m
