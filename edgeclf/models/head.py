"""Build a classifier: pretrained backbone + a fresh head, and the parameter groups to train.

:func:`create_model` builds the timm model with ``pretrained=False``, loads the 1000-class
ImageNet weights (:func:`~edgeclf.models.weights.load_pretrained`), then replaces the
classifier with a new, randomly initialised one for the task's classes. The new head is
drawn from torch's global generator, so ``torch.manual_seed`` before the call makes it
reproducible.

:func:`backbone_groups` and :func:`classifier_parameters` give parameter *names* (keys of
``model.named_parameters()``) so a trainer can freeze the backbone, train the head, then
unfreeze the last N groups.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.models.registry import get_backbone
from edgeclf.models.weights import WeightSource, WeightsReport, load_pretrained

__all__ = [
    "backbone_groups",
    "classifier_parameters",
    "create_model",
    "freeze_batchnorm",
]

# Side of the dummy image used to check the output shape: small enough to be instant,
# large enough for every registered backbone (total stride 32).
_CHECK_SIZE = 64
_IMAGENET_CLASSES = 1000


def create_model(
    name: str,
    num_classes: int,
    weights: Path | str | None = None,
    source: WeightSource = "auto",
    drop_rate: float = 0.2,
) -> tuple[nn.Module, WeightsReport]:
    """Build backbone ``name`` with ImageNet weights and a new head of ``num_classes`` outputs.

    Args:
        name: Registry key (see :func:`~edgeclf.models.registry.list_backbones`).
        num_classes: Number of classes of the task (at least 2).
        weights: A local state_dict file to take the ImageNet weights from.
        source: Where the weights come from; see :func:`load_pretrained`.
        drop_rate: Dropout rate before the classifier, in [0, 1).

    Returns:
        The model (in training mode) and the report of the weights it was given. The
        preprocessing of these weights is ``preprocess_spec(report.expects, size)``
        (:func:`~edgeclf.models.registry.preprocess_spec`); edgeclf never reads it back from
        the model. The model's ``pretrained_cfg`` is set to the same figures and the new
        number of classes only so that timm's own tools (``resolve_data_config``) agree.

    Raises:
        ConfigError: Unknown backbone, bad ``num_classes``/``drop_rate``, or weights that
            cannot be loaded (see :func:`load_pretrained`).
    """
    info = get_backbone(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got num_classes={num_classes!r}")
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ConfigError(f"drop_rate must be in [0, 1), got {drop_rate!r}")

    model = timm.create_model(
        info.timm_arch,
        pretrained=False,
        num_classes=_IMAGENET_CLASSES,
        drop_rate=float(drop_rate),
        pretrained_cfg_overlay=dict(info.pretrained_cfg_overlay),
    )
    report = load_pretrained(model, info, weights=weights, source=source)
    model.reset_classifier(num_classes)
    model.pretrained_cfg = {
        **dict(model.pretrained_cfg),
        **report.expects.as_timm_cfg(),
        "num_classes": num_classes,
    }
    _check_output(model, num_classes)
    model.train()
    return model, report


def _check_output(model: nn.Module, num_classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, _CHECK_SIZE, _CHECK_SIZE))
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, num_classes):  # a timm behaviour change: a bug here
        raise EdgeclfError(f"model output has shape {tuple(out.shape)}, expected (2, {num_classes})")


def _classifier_module_name(model: nn.Module) -> str:
    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        raise ConfigError(f"{type(model).__name__} has no get_classifier(); expected a timm model")
    head = get_classifier()
    for module_name, module in model.named_modules():
        if module is head and module_name:
            return module_name
    raise ConfigError(f"the classifier of {type(model).__name__} is not one of its submodules")


def classifier_parameters(model: nn.Module) -> list[str]:
    """Names of the classifier's parameters (the layer :func:`create_model` replaced)."""
    prefix = _classifier_module_name(model) + "."
    return [name for name, _ in model.named_parameters() if name.startswith(prefix)]


def backbone_groups(model: nn.Module) -> list[list[str]]:
    """Backbone parameter names in ordered groups, input side first, classifier excluded.

    Groups follow timm's coarse grouping (``model.group_matcher(coarse=True)``): the stem,
    then one group per stage, with the last convolution(s) before pooling in the last
    group(s). Unfreezing "the last N groups" means ``groups[-N:]``. Parameters absent from
    ``named_parameters()`` (for example BatchNorm turned into buffers by
    :func:`freeze_batchnorm`) are absent here too.
    """
    head = set(classifier_parameters(model))
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        grouped = timm.models.group_parameters(model, matcher(coarse=True))
        ordered = [grouped[key] for key in sorted(grouped)]
    else:  # not a timm model: one group
        ordered = [[name for name, _ in model.named_parameters()]]
    groups = [[name for name in names if name not in head] for names in ordered]
    return [group for group in groups if group]


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every BatchNorm into timm's frozen BatchNorm (fixed statistics and affine).

    Needed for weights with folded batch-norm (``WeightsReport.bn_folded``): their
    BatchNorm layers are identities, and batch statistics would wreck the activations.
    Frozen BatchNorm stays frozen through ``model.train()``; its weight and bias become
    buffers, so they leave ``parameters()`` (call :func:`backbone_groups` afterwards).
    timm's ``unfreeze_batch_norm_2d`` reverses it. Returns the model (converted in place,
    or a new module if ``model`` itself is a BatchNorm).
    """
    return timm.layers.freeze_batch_norm_2d(model)
