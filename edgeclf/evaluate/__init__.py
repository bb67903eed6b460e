"""Evaluation stage: metrics, calibration, robustness, explanations, report — against a predict function."""

from edgeclf.evaluate.predictor import LoadedRun, Predictor, TorchPredictor, load_run
from edgeclf.evaluate.run import evaluate

__all__ = ["LoadedRun", "Predictor", "TorchPredictor", "evaluate", "load_run"]
