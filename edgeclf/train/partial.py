"""Partial fine-tuning on cached trunk activations.

When only the last stages of a backbone are trained, everything before them (the
*trunk*) is a fixed function of the input: its output can be computed once per
augmented view and stored, and each epoch then runs only the trainable *top* (the last
stages, the head) forward and backward. For EfficientNet-Lite0 with its last two stages
trainable the top is about a sixth of the network's operations, so an epoch costs a
fraction of a full fine-tuning epoch, and the trunk's pass is an inference pass (no
autograd), done ``views`` times in all instead of once per epoch.

The split is exact: ``top(trunk(x)) == model(x)`` for the model in eval mode (a test
holds it), so the checkpoint written from this path is an ordinary full model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TrunkSplit:
    """``model(x) == top(trunk(x))``; ``trunk`` is frozen, ``top`` holds every trainable parameter."""

    trunk: nn.Module
    top_modules: list[nn.Module]
    first_trainable: str
    model: nn.Module

    def _stages(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.top_modules:
            x = m(x)
        return x

    def top(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from trunk activations."""
        return self.model.forward_head(self._stages(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit (pooled) features from trunk activations."""
        return self.model.forward_head(self._stages(x), pre_logits=True)


def _first_trainable(model: nn.Module) -> str | None:
    return next((n for n, p in model.named_parameters() if p.requires_grad), None)


def split_trunk(model: nn.Module) -> TrunkSplit | None:
    """Split at the first trainable parameter, for the families whose stages are a plain sequence.

    Supported: timm EfficientNet / MobileNet (``conv_stem``, ``bn1``, ``blocks``) and ResNet
    (``conv1`` ... ``layer4``). Anything else (or a split inside the stem) returns None and
    the trainer runs the full forward pass instead.
    """
    name = _first_trainable(model)
    if name is None:
        return None
    parts = name.split(".")
    if hasattr(model, "conv_stem") and hasattr(model, "blocks") and isinstance(model.blocks, nn.Sequential):
        if parts[0] != "blocks":
            return None
        k = int(parts[1])
        trunk = nn.Sequential(model.conv_stem, model.bn1, *list(model.blocks)[:k])
        top: list[nn.Module] = list(model.blocks)[k:]
        cls_name = type(model).__name__
        if cls_name == "EfficientNet":  # its forward_features ends with conv_head + bn2
            top += [model.conv_head, model.bn2]
        elif cls_name != "MobileNetV3":  # MobileNetV3's conv_head is in forward_head
            return None
        return TrunkSplit(trunk, top, name, model)
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "conv1"):
        if not parts[0].startswith("layer"):
            return None
        k = int(parts[0][5:])
        stem = [model.conv1, model.bn1, model.act1, model.maxpool]
        trunk = nn.Sequential(*stem, *[getattr(model, f"layer{i}") for i in range(1, k)])
        return TrunkSplit(trunk, [getattr(model, f"layer{i}") for i in range(k, 5)], name, model)
    return None


#: ONNX Runtime must reproduce the eager trunk within this (relative to the activations'
#: largest magnitude) on the first batch to be used: fp32 kernels that reorder sums differ
#: by ~1e-6 relative; anything near 1e-4 is a real difference, so eager is used instead.
ENGINE_RTOL = 1e-4


class TrunkRunner:
    """The frozen trunk in inference mode: ONNX Runtime (fp32) when it matches eager, else eager.

    Eager PyTorch runs depthwise-separable CNNs on a CPU several times slower than ONNX
    Runtime; the trunk's output only feeds training, and the exported path is checked
    against eager on the first batch before it is trusted (``engine`` says which ran).
    """

    def __init__(self, trunk: nn.Module, example: torch.Tensor, log=None, prefer: str = "auto") -> None:  # noqa: ANN001
        from edgeclf._onnx_match import matching_session

        self.trunk = trunk.eval()
        self.engine = "eager"
        self.max_diff: float | None = None
        self._sess = None
        log = log or (lambda s: None)
        if prefer == "eager" or example.device.type != "cpu":
            return
        m = matching_session(self.trunk, example, ENGINE_RTOL)
        self.max_diff = m.max_diff
        if m.session is not None:
            self._sess, self.engine = m.session, "onnxruntime"
        elif m.error:
            log(f"trunk not run on ONNX Runtime ({m.error}): using eager")
        else:
            log(f"trunk on ONNX Runtime differs from eager by {m.max_diff:.1e} (relative): using eager")

    @torch.no_grad()
    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trunk(x).float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._sess is None:
            return self._eager(x)
        return torch.from_numpy(self._sess.run(None, {"x": x.contiguous().numpy()})[0])
