"""The split manifest: the versioned definition of the data a run used.

A CSV with header ``path,label,sha256,group,split`` (then any extra columns,
e.g. ``cell_type`` for sliced evaluation), one row per image, sorted by path,
UTF-8 with ``\\n`` line ends. Its fingerprint is the SHA-256 of those bytes:
two manifests with the same fingerprint name exactly the same images (by
content hash), labels and splits.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from edgeclf._io import atomic_write_bytes, sha256_bytes
from edgeclf.errors import DataError

SPLITS = ("train", "val", "test")
CORE_COLUMNS = ("path", "label", "sha256", "group", "split")


class ManifestRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    label: str
    sha256: str
    group: str
    split: str
    extra: dict[str, str] = {}

    @field_validator("split")
    @classmethod
    def _split_known(cls, v: str) -> str:
        if v not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {v!r}")
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if not v or v.startswith("/") or ".." in Path(v).parts:
            raise ValueError(f"path must be relative to the data folder, got {v!r}")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {v!r}")
        return v


@dataclass
class Manifest:
    rows: list[ManifestRow]
    fingerprint: str
    extra_columns: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.rows})

    def split_rows(self, split: str) -> list[ManifestRow]:
        return [r for r in self.rows if r.split == split]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {label: images}}`` with every class present in every split."""
        c = Counter((r.split, r.label) for r in self.rows)
        return {s: {lab: c[(s, lab)] for lab in self.classes} for s in SPLITS}


def render_manifest(rows: list[ManifestRow], extra_columns: list[str] | None = None) -> bytes:
    extra_columns = list(extra_columns or [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CORE_COLUMNS, *extra_columns])
    for r in sorted(rows, key=lambda r: r.path):
        w.writerow([r.path, r.label, r.sha256, r.group, r.split, *(r.extra.get(c, "") for c in extra_columns)])
    return buf.getvalue().encode("utf-8")


def fingerprint_bytes(data: bytes) -> str:
    return "sha256:" + sha256_bytes(data)


def write_manifest(path: Path, rows: list[ManifestRow], extra_columns: list[str] | None = None) -> str:
    """Write the manifest atomically; return its fingerprint."""
    if Path(path).is_dir():
        raise DataError(
            f"--out {path} is a folder; the split writes a manifest file: give a file name, e.g. {Path(path) / 'splits.csv'}"
        )
    data = render_manifest(rows, extra_columns)
    atomic_write_bytes(path, data)
    return fingerprint_bytes(data)


def stratified_rows(rows: list[ManifestRow], n: int, rng: np.random.Generator) -> list[ManifestRow]:
    """At most ``n`` rows, every class in proportion (and at least one image of each), in manifest order."""
    if len(rows) <= n:
        return list(rows)
    by: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault(r.label, []).append(i)
    keep: list[int] = []
    for idx in by.values():
        k = max(1, round(n * len(idx) / len(rows)))
        keep += rng.choice(idx, size=min(k, len(idx)), replace=False).tolist()
    return [rows[i] for i in sorted(keep)]


def read_manifest(path: Path) -> Manifest:
    """Read and validate a manifest; every problem names the file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"manifest {path} does not exist; create one with `edgeclf data split`") from None
    except OSError as e:
        raise DataError(f"cannot read manifest {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"manifest {path} is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise DataError(f"manifest {path} is empty")
    if tuple(header[:5]) != CORE_COLUMNS:
        raise DataError(f"manifest {path}: header must start with {','.join(CORE_COLUMNS)}, got {','.join(header)}")
    extra_cols = header[5:]
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for lineno, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{lineno}: expected {len(header)} fields, got {len(fields)}")
        try:
            row = ManifestRow(
                path=fields[0],
                label=fields[1],
                sha256=fields[2],
                group=fields[3],
                split=fields[4],
                extra=dict(zip(extra_cols, fields[5:], strict=False)),
            )
        except ValueError as e:
            msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
            raise DataError(f"{path}:{lineno}: {msg}") from None
        if row.path in seen:
            raise DataError(f"{path}:{lineno}: duplicate path {row.path!r}")
        seen.add(row.path)
        rows.append(row)
    if not rows:
        raise DataError(f"manifest {path} has a header but no images")
    return Manifest(rows=rows, fingerprint=fingerprint_bytes(data), extra_columns=extra_cols)
