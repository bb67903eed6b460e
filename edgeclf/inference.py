"""Former home of the Python-engine face; kept so that ``from edgeclf.inference import predict`` still works.

The face lives in :mod:`edgeclf.runtime.reference` (and its result types in
:mod:`edgeclf.runtime.types`), beside the C runtime's :class:`edgeclf.runtime.Classifier`.
"""

from edgeclf.runtime.reference import BundleClassifier, choose_artifact, predict
from edgeclf.runtime.types import Decision, ImageLike, Prediction, refuse_unusable, to_rgb_array

__all__ = [
    "BundleClassifier",
    "Decision",
    "ImageLike",
    "Prediction",
    "choose_artifact",
    "predict",
    "refuse_unusable",
    "to_rgb_array",
]
