"""Data stage: audit an image folder, find duplicates, split it without leakage."""

from edgeclf.data.audit import AuditReport, audit
from edgeclf.data.datasets import materialize_elpv
from edgeclf.data.manifest import Manifest, ManifestRow, read_manifest, write_manifest
from edgeclf.data.prepare import PreparedData, audit_and_split
from edgeclf.data.split import SplitConfig, SplitResult, SplitSummary, make_split, split_folder

__all__ = [
    "AuditReport",
    "Manifest",
    "ManifestRow",
    "PreparedData",
    "SplitConfig",
    "SplitResult",
    "SplitSummary",
    "audit",
    "audit_and_split",
    "make_split",
    "materialize_elpv",
    "read_manifest",
    "split_folder",
    "write_manifest",
]
