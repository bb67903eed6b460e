"""A run folder's data: audit an ImageFolder tree and split it, from one index of its images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeclf.data._index import ProgressFn, index_dataset
from edgeclf.data.audit import AuditReport, audit_index
from edgeclf.data.split import SplitConfig, SplitSummary, run_split

#: Where :func:`audit_and_split` writes, under its ``out_dir``.
AUDIT_DIR = "audit"
MANIFEST_FILE = "splits.csv"


@dataclass(frozen=True)
class PreparedData:
    """The manifest a run trains from, with the audit and split that wrote it (``None`` when kept)."""

    manifest: Path
    audit: AuditReport | None
    split: SplitSummary | None


def audit_and_split(
    data_dir: Path,
    out_dir: Path,
    seed: int | None = None,
    keep_existing: bool = False,
    progress: ProgressFn | None = None,
) -> PreparedData:
    """Index ``data_dir`` once; write its audit to ``OUT_DIR/audit`` and its split to ``OUT_DIR/splits.csv``.

    ``seed`` (default 0) seeds the split. With ``keep_existing``, a manifest already in
    ``out_dir`` is kept and nothing is read or written (a resumed run trains from the same split).
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_FILE
    if keep_existing and manifest.is_file():
        return PreparedData(manifest=manifest, audit=None, split=None)
    index = index_dataset(Path(data_dir), progress=progress)
    report = audit_index(index, out_dir / AUDIT_DIR)
    summary = run_split(index, manifest, SplitConfig(seed=seed or 0))
    return PreparedData(manifest=manifest, audit=report, split=summary)


__all__ = ["AUDIT_DIR", "MANIFEST_FILE", "PreparedData", "audit_and_split"]
