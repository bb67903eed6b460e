"""The bundle registry: versions, an atomically switched ``current`` pointer, rollback.

Layout of a registry root::

    index.json            every stored version: content hash, metrics summary, parity verdict,
                          plus a log of pointer changes (canonical JSON, written atomically)
    current.json          the pointer: version, bundle path (relative to the root), content
                          hash and the promotion stack; the only file a device has to read
    versions/X.Y.Z/       a verified, immutable copy of a bundle
    .lock                 advisory lock serialising writers

Every change is made so that a reader never sees a half state:

* ``add`` copies the bundle into ``versions/.add-*`` (a temporary folder on the same
  file system), verifies the copy, then renames it to ``versions/X.Y.Z``; only then is
  the version recorded in ``index.json``. An interrupted add leaves at most a temporary
  folder, removed by the next add.
* ``promote`` and ``rollback`` write the new pointer to a temporary file and
  ``os.replace`` it over ``current.json``: readers see the old pointer or the new one.
  The pointer carries the promotion stack itself, so the switch and the history that
  rollback uses change in one atomic step. ``index.json``'s event log is written after
  the switch and is informational; ``current.json`` is authoritative.
* Stored versions are never modified, so rolling back restores the previous bundle
  byte for byte; its hashes are checked again before the pointer moves to it.

A reader should resolve the pointer once (``edgeclf registry path current``) and load
every file from that folder, rather than re-reading the pointer between files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeclf._io import _UMASK, canonical_json, sha256_bytes, sha256_file, write_json
from edgeclf.errors import EdgeclfError
from edgeclf.export.bundle import MANIFEST, BundleError, BundleManifest, read_bundle, read_parity

log = logging.getLogger("edgeclf.registry")

REGISTRY_SCHEMA_VERSION = "1.0.0"
#: Environment variable naming the registry root when ``--root`` is not given.
ENV_ROOT = "EDGECLF_REGISTRY"
DEFAULT_ROOT = "edgeclf-registry"
INDEX = "index.json"
POINTER = "current.json"
VERSIONS = "versions"
LOCK = ".lock"
FIRST_VERSION = "1.0.0"
_TMP_PREFIX = ".add-"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
#: Artifact statuses that do not block promotion: shipped and within its gate, or never
#: attempted because the format's toolchain is absent (the export pipeline does not count
#: those as failures either; a skipped artifact is simply not in the bundle).
_PASSING_STATUSES = frozenset({"ok", "skipped"})


class RegistryError(EdgeclfError):
    """The registry, a version in it, or a requested change to its pointer is invalid."""


# ----------------------------------------------------------------------------- models


class MetricsSummary(BaseModel):
    """The headline numbers of a bundle, from its manifest's ``metrics``."""

    model_config = ConfigDict(extra="forbid")
    split: str | None = None  # "test" when the test split was evaluated, else "val"
    macro_f1: float | None = None
    accuracy: float | None = None


class ParityVerdict(BaseModel):
    """Whether every artifact of a bundle passed its parity gate."""

    model_config = ConfigDict(extra="forbid")
    verdict: Literal["passed", "failed", "missing"]
    failures: list[str] = []
    skipped: list[str] = []
    shipped: list[str] = []  # "format/precision" of each shipped artifact


class RegistryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    content_hash: str  # "sha256:<hex>" over the bundle's files (see content_hash())
    name: str
    added: str  # when the version entered the registry (UTC, ISO 8601)
    bundle_created: str
    labels: list[str]
    target_profile: str | None = None
    size_bytes: int
    files: int
    metrics: MetricsSummary
    parity: ParityVerdict
    #: the bundle's decision policy in words ("argmax" for bundles without one)
    decision: str = "argmax"


class PointerEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["promote", "rollback"]
    version: str
    previous: str | None = None
    at: str


class RegistryIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = REGISTRY_SCHEMA_VERSION
    entries: list[RegistryEntry] = []
    events: list[PointerEvent] = []


class Pointer(BaseModel):
    """``current.json``: what a device or service loads."""

    model_config = ConfigDict(extra="forbid")
    schema_version: str = REGISTRY_SCHEMA_VERSION
    version: str
    path: str  # bundle folder relative to the registry root, POSIX separators
    content_hash: str
    promoted_at: str
    stack: list[str]  # promoted versions, oldest first; stack[-1] == version


class AddResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entry: RegistryEntry
    path: str
    already_present: bool
    #: the version's stored copy was missing or damaged and was copied again from this bundle
    repaired: bool = False


class ListedVersion(RegistryEntry):
    """A stored version as ``edgeclf registry list`` shows it."""

    current: bool = False


class RegistryListing(BaseModel):
    """Every stored version and where the current pointer stands."""

    model_config = ConfigDict(extra="forbid")
    root: str  # the registry folder, absolute
    current: str | None  # the current version; None before the first promotion
    stack: list[str]  # promoted versions, oldest first (the pointer's)
    versions: list[ListedVersion]  # in semantic-version order


class PointerChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["promote", "rollback"]
    previous: str | None
    current: str
    path: str
    changed: bool


# ----------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_version(version: str) -> tuple[int, int, int]:
    m = _SEMVER.match(version)
    if m is None:
        raise RegistryError(f"version {version!r} is not a semantic version; use MAJOR.MINOR.PATCH, e.g. 1.2.0")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def next_version(existing: list[str]) -> str:
    """The next patch version after the highest one in ``existing`` (``1.0.0`` when empty)."""
    if not existing:
        return FIRST_VERSION
    major, minor, patch = max(parse_version(v) for v in existing)
    return f"{major}.{minor}.{patch + 1}"


def default_root() -> Path:
    """``$EDGECLF_REGISTRY`` if set, else ``./edgeclf-registry``."""
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


#: Files a bundle directory may hold that are not its content: the runtime's per-host autotune
#: cache (and its temporary files while written) changes wherever the bundle is loaded.
HOST_LOCAL = ("autotune.json",)


def _host_local(rel: str) -> bool:
    return rel in HOST_LOCAL or any(rel.startswith(f"{name}.tmp.") for name in HOST_LOCAL)


def _bundle_files(bundle_dir: Path) -> list[str]:
    """Every regular file under ``bundle_dir`` (relative POSIX paths, sorted) except the host-local
    caches (:data:`HOST_LOCAL`); refuses links."""
    files: list[str] = []
    for p in sorted(bundle_dir.rglob("*")):
        rel = p.relative_to(bundle_dir).as_posix()
        if _host_local(rel):
            continue
        if p.is_symlink():
            raise BundleError(
                f"bundle {bundle_dir} contains a symbolic link ({rel}); "
                "the registry stores plain files only: replace it with the file it points to"
            )
        if p.is_file():
            files.append(rel)
        elif not p.is_dir():
            raise BundleError(f"bundle {bundle_dir}: {rel} is not a regular file")
    return files


def content_hash(bundle_dir: Path, manifest: BundleManifest) -> str:
    """``sha256:`` over the SHA-256 of every file in a verified bundle.

    The manifest (``edgeclf.json``) is hashed as bytes, which covers every artifact hash
    it lists; artifact files take their hash from the manifest (``read_bundle`` with
    ``verify`` has checked them, so they are not read twice); every other file (parity.json,
    figures, calibration batches) is hashed directly. Two bundles with the same content
    hash are byte-identical.
    """
    known: dict[str, str] = {}
    for a in manifest.artifacts:
        known[a.file] = a.sha256
        for e in a.extra_files:
            known[e.file] = e.sha256
    digests = {rel: known.get(rel) or sha256_file(bundle_dir / rel) for rel in _bundle_files(bundle_dir)}
    return "sha256:" + sha256_bytes(canonical_json(digests).encode("utf-8"))


def metrics_summary(manifest: BundleManifest) -> MetricsSummary:
    """Test-split numbers when the test split was evaluated, else validation, else fine-tuning."""

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    m = manifest.metrics or {}
    evaluation = m.get("evaluation")
    evaluation = evaluation if isinstance(evaluation, dict) else {}
    for split, d in (("test", evaluation.get("test")), ("val", evaluation.get("val")), ("val", m.get("finetuned"))):
        if isinstance(d, dict) and num(d.get("macro_f1")) is not None:
            return MetricsSummary(split=split, macro_f1=num(d.get("macro_f1")), accuracy=num(d.get("accuracy")))
    return MetricsSummary()


def _gate_failures(gates: Any, where: str) -> list[str]:
    """Gate entries recorded as failed: ``{"passed": false}``, ``{"status": "failed"}`` or ``"failed"``.

    The export pipeline stores thresholds here (numbers), which never count as failures.
    """
    out: list[str] = []
    if not isinstance(gates, dict):
        return out
    for key, g in gates.items():
        if g == "failed" or (isinstance(g, dict) and (g.get("passed") is False or g.get("status") == "failed")):
            out.append(f"{where}: gate {key} failed")
    return out


def parity_verdict(bundle_dir: Path, manifest: BundleManifest) -> ParityVerdict:
    """Read a bundle's parity results (the manifest's ``parity`` and ``parity.json``).

    ``failed`` when any artifact has a status other than ``ok`` (``skipped`` artifacts, never
    attempted because their toolchain is absent, are listed but do not fail), when a gate of the
    manifest's ``parity`` section is recorded as failed, when a shipped artifact is not ``ok``,
    when ``parity.json`` does not read (``read_parity``), or when nothing is shipped.
    ``missing`` when the bundle holds no parity results at all.
    """
    failures: list[str] = []
    # (format/precision, status, why it did not pass): the manifest's summary (edgeclf.json is a
    # document of its own: its parity section is a free object), then parity.json's artifacts
    rows: list[tuple[str, str, str]] = []
    summary = manifest.parity.get("summary")
    if isinstance(summary, list):
        rows += [
            (f"{r.get('format', '?')}/{r.get('precision', '?')}", str(r.get("status", "missing")), "")
            for r in summary
            if isinstance(r, dict)
        ]
    failures += _gate_failures(manifest.parity.get("gates"), f"{MANIFEST} parity")
    try:
        report = read_parity(bundle_dir)
    except BundleError as e:
        failures.append(str(e))
        report = None
    if report is not None:
        rows += [(f"{a.format}/{a.precision}", a.status or "missing", a.reason()) for a in report.artifacts]
    skipped: list[str] = []
    bad: dict[str, str] = {}  # "format/precision" -> status (both sources list the same artifacts)
    reasons: dict[str, str] = {}
    for key, status, reason in rows:
        if status == "skipped":
            if key not in skipped:
                skipped.append(key)
        elif status not in _PASSING_STATUSES:
            bad.setdefault(key, status)
            if not reasons.get(key):
                reasons[key] = reason
    failures += [f"{k}: {v} ({reasons[k]})" if reasons.get(k) else f"{k}: {v}" for k, v in bad.items()]
    shipped = [f"{a.format}/{a.precision}" for a in manifest.artifacts]
    for a in manifest.artifacts:
        if a.status != "ok":
            failures.append(f"{a.format}/{a.precision}: shipped with status {a.status} ({MANIFEST})")
    if not rows and not failures:
        return ParityVerdict(verdict="missing", failures=["the bundle holds no per-artifact parity results"], shipped=shipped)
    if not manifest.artifacts:
        failures.append("the bundle ships no artifact")
    return ParityVerdict(verdict="failed" if failures else "passed", failures=failures, skipped=skipped, shipped=shipped)


def validate_bundle(bundle_dir: Path) -> BundleManifest:
    """The full validation a device's load runs (``edgeclf.predict``'s loader): the manifest's rules,
    every file's hash, and the fastest artifact opened with one frame, so labels that do not match
    the model's outputs are refused here, not on the device."""
    from edgeclf.errors import EdgeclfError
    from edgeclf.runtime.reference import BundleClassifier

    try:
        return BundleClassifier(bundle_dir).manifest  # read_bundle(verify=True), then the artifact opened
    except BundleError:
        raise
    except EdgeclfError as e:
        raise BundleError(f"bundle {bundle_dir} does not load: {e}") from None


def _make_entry(bundle_dir: Path, version: str, manifest: BundleManifest, digest: str) -> RegistryEntry:
    files = _bundle_files(bundle_dir)
    return RegistryEntry(
        version=version,
        content_hash=digest,
        name=manifest.name,
        added=_now(),
        bundle_created=manifest.created,
        labels=list(manifest.labels),
        target_profile=manifest.target_profile,
        files=len(files),
        size_bytes=sum((bundle_dir / f).stat().st_size for f in files),
        metrics=metrics_summary(manifest),
        parity=parity_verdict(bundle_dir, manifest),
        decision=manifest.policy().describe(),
    )


def _copy_tree(src: Path, dst: Path, files: list[str]) -> None:
    """Copy ``files`` (relative to ``src``) into ``dst`` and flush them to disk."""
    for rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- registry


class Registry:
    """A folder of immutable bundle versions and an atomically switched ``current`` pointer."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # -- paths ------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER

    def version_dir(self, version: str) -> Path:
        parse_version(version)  # also keeps the folder name free of separators
        return self.root / VERSIONS / version

    # -- reading ----------------------------------------------------------------

    def exists(self) -> bool:
        return self.index_path.is_file()

    def _require(self) -> None:
        if not self.exists():
            raise RegistryError(
                f"{self.root} is not an edgeclf registry (no {INDEX}); create it with "
                f"`edgeclf registry add BUNDLE --root {self.root}` or set {ENV_ROOT}"
            )

    def _read_index(self) -> RegistryIndex:
        try:
            raw = json.loads(self.index_path.read_text(encoding="utf-8"))
            return RegistryIndex.model_validate(raw)
        except (ValueError, UnicodeDecodeError, ValidationError) as e:
            raise RegistryError(
                f"{self.index_path} is damaged ({str(e).splitlines()[0]}); "
                "restore it from a backup, or re-add the bundles to a new registry"
            ) from None

    def index(self) -> RegistryIndex:
        self._require()
        return self._read_index()

    def entries(self) -> list[RegistryEntry]:
        """Every stored version, in semantic-version order."""
        return sorted(self.index().entries, key=lambda e: parse_version(e.version))

    def entry(self, version: str) -> RegistryEntry:
        parse_version(version)
        entries = self.entries()
        for e in entries:
            if e.version == version:
                return e
        known = ", ".join(e.version for e in entries) or "none"
        raise RegistryError(
            f"version {version} is not in the registry {self.root} (versions: {known}); see `edgeclf registry list`"
        )

    def current(self) -> Pointer | None:
        """The pointer, or ``None`` when nothing has been promoted yet."""
        self._require()
        try:
            raw = self.pointer_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            p = Pointer.model_validate(json.loads(raw))
            parse_version(p.version)
        except (ValueError, ValidationError, RegistryError) as e:
            raise RegistryError(
                f"{self.pointer_path} is damaged ({str(e).splitlines()[0]}); "
                "promote a version again with `edgeclf registry promote VERSION`"
            ) from None
        return p

    def listing(self) -> RegistryListing:
        """Every stored version, each marked whether it is the current one."""
        entries = self.entries()
        cur = self.current()
        current = cur.version if cur else None
        return RegistryListing(
            root=str(self.root.resolve()),
            current=current,
            stack=cur.stack if cur else [],
            versions=[ListedVersion(**e.model_dump(), current=e.version == current) for e in entries],
        )

    def path(self, which: str = "current") -> Path:
        """Absolute folder of the current bundle (``which="current"``) or of a version."""
        if which == "current":
            p = self.current()
            if p is None:
                raise RegistryError(f"nothing is promoted in {self.root} yet; run `edgeclf registry promote VERSION`")
            d = (self.root / p.path).resolve()
            if d != self.version_dir(p.version).resolve():
                raise RegistryError(
                    f"{self.pointer_path} points outside {self.root / VERSIONS}; "
                    "promote a version again with `edgeclf registry promote VERSION`"
                )
        else:
            d = self.version_dir(self.entry(which).version).resolve()
        if not d.is_dir():
            raise RegistryError(f"the bundle folder {d} of the registry is missing; re-add the bundle")
        return d

    # -- writing ----------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers (POSIX advisory lock; readers never need it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: single writer assumed
            yield
            return
        with open(self.root / LOCK, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _check_new_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root} is a file, not a registry folder; pick another --root")
        if not self.exists() and self.root.exists() and any(p.name != LOCK for p in self.root.iterdir()):
            raise RegistryError(
                f"{self.root} exists and is not an edgeclf registry (no {INDEX}); pick an empty or new folder with --root"
            )

    def _init_root(self) -> None:
        if self.exists():
            return
        self._check_new_root()
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        write_json(self.index_path, RegistryIndex().model_dump(mode="json"))

    def _sweep(self, index: RegistryIndex) -> None:
        """Finish what an interrupted add left behind.

        Temporary folders are removed. A version folder missing from the index (the add
        stopped between the rename and the index write) is complete: it is recorded if it
        still verifies, and otherwise left in place (its version number stays taken).
        """
        known = {e.version for e in index.entries}
        vdir = self.root / VERSIONS
        adopted = False
        for p in sorted(vdir.iterdir()) if vdir.is_dir() else []:
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_dir() and _SEMVER.match(p.name) and p.name not in known:
                try:
                    m = read_bundle(p, verify=True)
                    index.entries.append(_make_entry(p, p.name, m, content_hash(p, m)))
                    adopted = True
                    log.warning("recorded %s in %s: an interrupted add had stored it without recording it", p, INDEX)
                except BundleError as e:
                    log.warning("leaving %s alone: not recorded in %s and not a valid bundle (%s)", p, INDEX, e)
        if adopted:
            write_json(self.index_path, index.model_dump(mode="json"))

    def add(self, bundle_dir: str | os.PathLike[str], version: str | None = None) -> AddResult:
        """Verify a bundle and store a copy of it as a new version (next patch version by default).

        Refuses bundles whose files do not match their manifest hashes, and versions already
        taken. A bundle whose content is already stored is not copied again: the result names
        the existing version (``already_present``); asking for a different version for it is an error.
        """
        src = Path(bundle_dir)
        if version is not None:
            parse_version(version)
        self._check_new_root()  # before the lock file is made: leave a foreign folder untouched
        manifest = validate_bundle(src)
        digest = content_hash(src, manifest)
        with self._locked():
            self._init_root()
            index = self._read_index()
            self._sweep(index)
            same = next((e for e in index.entries if e.content_hash == digest), None)
            if same is not None:
                if version is not None and version != same.version:
                    raise RegistryError(
                        f"this bundle is already in the registry as version {same.version} "
                        f"(content {digest[:19]}); not adding it again as {version}"
                    )
                try:
                    self._verify_stored(same)
                except RegistryError as e:  # the stored copy is gone or damaged: this bundle repairs it
                    log.warning("%s; copying it again from %s", e, src)
                    self._store(src, same.version, digest)
                    return AddResult(
                        entry=same, path=str(self.version_dir(same.version).resolve()), already_present=True, repaired=True
                    )
                return AddResult(entry=same, path=str(self.version_dir(same.version).resolve()), already_present=True)
            taken = [e.version for e in index.entries]
            taken += [p.name for p in (self.root / VERSIONS).iterdir() if _SEMVER.match(p.name) and p.name not in taken]
            if version is None:
                version = next_version(taken)
            elif version in taken:
                raise RegistryError(
                    f"version {version} is already in the registry {self.root} with different content; "
                    f"choose another with --version, or omit it to get {next_version(taken)}"
                )
            final, entry = self._store(src, version, digest)
            index.entries.append(entry)
            write_json(self.index_path, index.model_dump(mode="json"))
            return AddResult(entry=entry, path=str(final.resolve()), already_present=False)

    def _store(self, src: Path, version: str, digest: str) -> tuple[Path, RegistryEntry]:
        """Copy ``src`` into VERSIONS/``version`` (temp folder + rename; a damaged copy there is replaced)."""
        final = self.version_dir(version)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root / VERSIONS))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; give the folder ordinary permissions
        try:
            files = _bundle_files(src)
            _copy_tree(src, tmp, files)
            copied = read_bundle(tmp, verify=True)
            if content_hash(tmp, copied) != digest:
                raise RegistryError(f"bundle {src} changed while it was being copied; retry when nothing writes to it")
            entry = _make_entry(tmp, version, copied, digest)
            _fsync_dir(tmp)
            if final.exists():  # a damaged stored copy being repaired: set it aside, then drop it
                old = final.with_name(f"{_TMP_PREFIX}old-{version}-{os.getpid()}")
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(final.parent)
        return final, entry

    def _verify_stored(self, entry: RegistryEntry) -> BundleManifest:
        """A stored version's files against its manifest, its recorded content hash, and the full load check."""
        d = self.version_dir(entry.version)
        if not d.is_dir():
            raise RegistryError(
                f"version {entry.version}: its folder {d} is missing; re-add the bundle "
                "(`edgeclf registry add BUNDLE` copies it again)"
            )
        try:
            m = validate_bundle(d)
            digest = content_hash(d, m)
        except BundleError as e:
            raise RegistryError(f"version {entry.version} is damaged in the registry ({e}); re-add the bundle") from None
        if digest != entry.content_hash:
            raise RegistryError(
                f"version {entry.version} changed on disk since it was added "
                f"(content {digest[:19]} != recorded {entry.content_hash[:19]}); re-add the bundle"
            )
        return m

    def _check_stored(self, entry: RegistryEntry) -> Path:
        """Re-verify a stored version (see _verify_stored) and its quality and parity gates, before promotion."""
        d = self.version_dir(entry.version)
        m = self._verify_stored(entry)
        weak = _gate_failures((m.metrics or {}).get("quality_gates"), "model quality")
        if weak:
            detail = ((m.metrics or {}).get("quality_gates") or {}).get("every_class_recalled") or {}
            classes = ", ".join(detail.get("classes") or []) if isinstance(detail, dict) else ""
            raise RegistryError(
                f"version {entry.version} cannot be promoted: {'; '.join(weak)}"
                f"{f' (validation recall 0 for: {classes})' if classes else ''}; "
                "fix the data or the recipe for those classes and build again"
            )
        verdict = parity_verdict(d, m)
        if verdict.verdict != "passed":
            why = "; ".join(verdict.failures) or verdict.verdict
            raise RegistryError(
                f"version {entry.version} cannot be promoted: its parity gates did not pass ({why}); "
                "re-export the run so every artifact passes its gate, then add the new bundle"
            )
        return d

    def _switch(
        self, entry: RegistryEntry, stack: list[str], action: Literal["promote", "rollback"], previous: str | None
    ) -> PointerChange:
        pointer = Pointer(
            version=entry.version,
            path=f"{VERSIONS}/{entry.version}",
            content_hash=entry.content_hash,
            promoted_at=_now(),
            stack=stack,
        )
        write_json(self.pointer_path, pointer.model_dump(mode="json"))  # temp file + os.replace
        _fsync_dir(self.root)
        index = self._read_index()
        index.events.append(PointerEvent(action=action, version=entry.version, previous=previous, at=pointer.promoted_at))
        write_json(self.index_path, index.model_dump(mode="json"))
        return PointerChange(
            action=action,
            previous=previous,
            current=entry.version,
            path=str(self.version_dir(entry.version).resolve()),
            changed=True,
        )

    def promote(self, version: str) -> PointerChange:
        """Point ``current`` at ``version`` after re-verifying it; refuses failed parity gates."""
        with self._locked():
            entry = self.entry(version)
            try:
                cur = self.current()
            except RegistryError as e:  # a damaged pointer is replaced by a fresh one
                log.warning("%s; starting a new promotion history", e)
                cur = None
            if cur is not None and cur.version == version:
                self._verify_stored(entry)  # "already current" only when it is really there
                return PointerChange(
                    action="promote",
                    previous=version,
                    current=version,
                    path=str(self.version_dir(version).resolve()),
                    changed=False,
                )
            self._check_stored(entry)
            stack = [*(cur.stack if cur else []), version]
            return self._switch(entry, stack, "promote", cur.version if cur else None)

    def rollback(self) -> PointerChange:
        """Point ``current`` back at the version promoted before it."""
        with self._locked():
            cur = self.current()
            if cur is None:
                raise RegistryError(f"nothing is promoted in {self.root}; there is nothing to roll back")
            if len(cur.stack) < 2:
                raise RegistryError(
                    f"version {cur.version} is the first promoted version; there is no earlier one "
                    "to roll back to (promote a specific version instead)"
                )
            target = cur.stack[-2]
            entry = self.entry(target)
            self._check_stored(entry)
            return self._switch(entry, cur.stack[:-1], "rollback", cur.version)


__all__ = [
    "AddResult",
    "ListedVersion",
    "MetricsSummary",
    "ParityVerdict",
    "Pointer",
    "PointerChange",
    "PointerEvent",
    "Registry",
    "RegistryEntry",
    "RegistryError",
    "RegistryIndex",
    "RegistryListing",
    "content_hash",
    "default_root",
    "metrics_summary",
    "next_version",
    "parity_verdict",
    "parse_version",
]
