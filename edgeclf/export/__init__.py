"""Export stage: formats as data, quantization, parity gates, the bundle."""

from edgeclf.export.bundle import BundleError, BundleManifest, read_bundle
from edgeclf.export.parity import ParityResult
from edgeclf.export.parity_schema import ParityReport
from edgeclf.export.pipeline import ExportFailed, ExportResult, export_run

__all__ = [
    "BundleError",
    "BundleManifest",
    "ExportFailed",
    "ExportResult",
    "ParityReport",
    "ParityResult",
    "export_run",
    "read_bundle",
]
