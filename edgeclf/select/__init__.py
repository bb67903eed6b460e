"""Cost model and budgeted backbone selection for a hardware profile.

* :mod:`~edgeclf.select.counts`: FLOPs, bytes, graph nodes and peak activations of each
  backbone at each resolution (cached in ``model_costs.json``).
* :mod:`~edgeclf.select.costmodel`: latency / memory / file-size estimates from those
  counts and a device's figures, with efficiency factors from ``calibration.json``.
* :mod:`~edgeclf.select.calibration`: measure this host, fit the factors, validate
  (measured by ``edgeclf profiles calibrate-costmodel``).
* :mod:`~edgeclf.select.selection`: :func:`select_backbone`.
"""

from edgeclf.select.calibration import (
    TARGET_ERROR_PCT,
    ValidationReport,
    ValidationRow,
    detect_host,
    fit_calibration,
    fit_latency_factors,
    match_host_profile,
    validate_cost_model,
    write_validation,
)
from edgeclf.select.costmodel import (
    Calibration,
    CalibrationPoint,
    CostEstimate,
    CostModel,
    DeviceFigures,
    FileFactors,
    FitSummary,
    HostInfo,
    LatencyFactors,
    MemoryFactors,
    calibration_for_profile,
    estimate_file_mib,
    estimate_latency_ms,
    estimate_memory_mib,
    load_calibration,
)
from edgeclf.select.counts import (
    ModelCounts,
    count_backbone,
    count_model,
    generate_model_costs,
    load_model_costs,
    model_counts,
)
from edgeclf.select.selection import (
    Candidate,
    Measurement,
    NoCandidateFitsError,
    SelectionBudgets,
    SelectionResult,
    accuracy_penalty,
    select_backbone,
)

__all__ = [
    "TARGET_ERROR_PCT",
    "Calibration",
    "CalibrationPoint",
    "Candidate",
    "CostEstimate",
    "CostModel",
    "DeviceFigures",
    "FileFactors",
    "FitSummary",
    "HostInfo",
    "LatencyFactors",
    "Measurement",
    "MemoryFactors",
    "ModelCounts",
    "NoCandidateFitsError",
    "SelectionBudgets",
    "SelectionResult",
    "ValidationReport",
    "ValidationRow",
    "accuracy_penalty",
    "count_backbone",
    "count_model",
    "detect_host",
    "estimate_file_mib",
    "estimate_latency_ms",
    "estimate_memory_mib",
    "fit_calibration",
    "fit_latency_factors",
    "generate_model_costs",
    "calibration_for_profile",
    "load_calibration",
    "load_model_costs",
    "match_host_profile",
    "model_counts",
    "select_backbone",
    "validate_cost_model",
    "write_validation",
]
