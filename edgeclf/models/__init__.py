"""Models stage: backbone registry, pretrained weight sources, classifier head."""

from edgeclf.models.head import backbone_groups, classifier_parameters, create_model, freeze_batchnorm
from edgeclf.models.registry import (
    BackboneInfo,
    ModelCost,
    PretrainedInput,
    default_backbone,
    get_backbone,
    list_backbones,
    measure_cost,
    preprocess_spec,
)
from edgeclf.models.weights import (
    WeightSource,
    WeightsReport,
    classifier_keys,
    load_pretrained,
    package_weights_installed,
    read_state_dict,
)

__all__ = [
    "BackboneInfo",
    "ModelCost",
    "PretrainedInput",
    "WeightSource",
    "WeightsReport",
    "backbone_groups",
    "classifier_keys",
    "classifier_parameters",
    "create_model",
    "default_backbone",
    "freeze_batchnorm",
    "get_backbone",
    "list_backbones",
    "load_pretrained",
    "measure_cost",
    "package_weights_installed",
    "preprocess_spec",
    "read_state_dict",
]
