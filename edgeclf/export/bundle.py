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
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeclf._io import canonical_json, sha256_file, write_json
from edgeclf.errors import EdgeclfError
from edgeclf.evaluate.decision import DecisionPolicy
from edgeclf.preprocess import PreprocessSpec

#: 1.1.0 added the optional ``decision`` section (absent: argmax, so 1.0.x bundles still load).
SCHEMA_VERSION = "1.1.0"
#: Oldest runtime (edgeclf C/Python runtime version) able to read this schema.
MIN_RUNTIME_VERSION = "0.1.0"
#: Oldest runtime that applies a ``decision`` section; a bundle that carries a policy other than
#: argmax asks for it, so an older runtime refuses the bundle instead of silently taking argmax.
MIN_RUNTIME_VERSION_DECISION = "0.2.0"
MANIFEST = "edgeclf.json"
PARITY = "parity.json"


class BundleError(EdgeclfError):
    """A bundle is missing, incomplete, tampered with or of an unsupported schema."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    size_bytes: int


class ArtifactEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    format: str
    runtime: str
    precision: str
    sha256: str
    size_bytes: int
    extra_files: list[FileEntry] = []
    status: str  # "ok" (shipped) — failed artifacts are listed in parity.json only
    details: dict[str, Any] = {}


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str
    min_runtime_version: str
    name: str
    created: str
    creator: dict[str, str]
    labels: list[str]
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


def read_bundle(bundle_dir: Path, verify: bool = True) -> BundleManifest:
    """Load and validate a bundle's manifest; with ``verify``, check every artifact's hash."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not an edgeclf bundle (no {MANIFEST}); create one with `edgeclf export`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is damaged") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    if _major(str(raw.get("schema_version", ""))) != _major(SCHEMA_VERSION):
        raise BundleError(f"{path}: schema_version {raw.get('schema_version')!r} is not supported "
                          f"(this edgeclf reads {SCHEMA_VERSION.split('.')[0]}.x)")
    try:
        m = BundleManifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise BundleError(f"{path}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    if m.decision is not None:
        try:
            m.decision.check(len(m.labels))
        except EdgeclfError as e:
            raise BundleError(f"{path}: {e}") from None
    if verify:
        for a in m.artifacts:
            for entry in [FileEntry(file=a.file, sha256=a.sha256, size_bytes=a.size_bytes), *a.extra_files]:
                p = bundle_dir / entry.file
                if not p.is_file():
                    raise BundleError(f"bundle {bundle_dir} is incomplete: {entry.file} is missing")
                if p.stat().st_size != entry.size_bytes or sha256_file(p) != entry.sha256:
                    raise BundleError(f"bundle {bundle_dir}: {entry.file} does not match its SHA-256 in {MANIFEST} "
                                      "(truncated or tampered with); re-export the bundle")
    return m
