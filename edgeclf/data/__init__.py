"""Data stage: audit an image folder, find duplicates, split it without leakage."""

from edgeclf.data.audit import AuditReport, audit
from edgeclf.data.datasets import materialize_elpv
from edgeclf.data.manifest import Manifest, ManifestRow, read_manifest, write_manifest
from edgeclf.data.split import SplitConfig, SplitResult, make_split

__all__ = [
    "AuditReport",
    "Manifest",
    "ManifestRow",
    "SplitConfig",
    "SplitResult",
    "audit",
    "make_split",
    "materialize_elpv",
    "read_manifest",
    "write_manifest",
]
