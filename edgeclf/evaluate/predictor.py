"""The "predict function" every evaluation runs against.

A :class:`Predictor` maps decoded images (H x W x 3 uint8 RGB, any size) to
logits; it owns its preprocessing. The eager PyTorch model is one predictor,
each exported artifact (ONNX Runtime, OpenVINO, the C++ runtime) is another,
so metrics, calibration and the robustness suite run unchanged on all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from edgeclf.data.manifest import Manifest, read_manifest
from edgeclf.preprocess import PreprocessSpec, preprocess
from edgeclf.train.record import RunConfigDocument, read_run_config


@runtime_checkable
class Predictor(Protocol):
    classes: list[str]
    spec: PreprocessSpec

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Logits, shape (len(images), len(classes)), float32."""
        ...


class TorchPredictor:
    """The eager model in fp32, fed through the reference preprocessing."""

    def __init__(self, model: nn.Module, spec: PreprocessSpec, classes: list[str], batch_size: int = 64) -> None:
        self.model = model.eval()
        self.spec = spec
        self.classes = classes
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        outs = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.stack([preprocess(im, self.spec) for im in images[i : i + self.batch_size]]))
            outs.append(self.model(x.contiguous(memory_format=torch.channels_last)).float().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)), np.float32)

    @torch.no_grad()
    def features_and_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate-layer (pooled, pre-logits) features and logits."""
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.stack([preprocess(im, self.spec) for im in images[i : i + self.batch_size]]))
            f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            feats.append(f.float().numpy())
            logits.append(self.model.get_classifier()(f).float().numpy())
        return np.concatenate(feats), np.concatenate(logits)


#: ONNX Runtime stands in for the eager model only when its logits and features match eager
#: within this (relative to their largest magnitude) on a check batch: fp32 kernels that
#: reorder sums differ by ~1e-6; a difference near 1e-4 means a real divergence.
FAST_RTOL = 1e-4


class _FeaturesAndLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return f, self.model.get_classifier()(f)


class FastPredictor(TorchPredictor):
    """The eager model's predictions, computed by ONNX Runtime (fp32) where it matches eager.

    Evaluation runs thousands of forward passes (every split, the robustness suite); eager
    PyTorch runs depthwise-separable CNNs on a CPU several times slower than ONNX Runtime.
    The model is exported once (in memory), checked against eager on a batch of real images,
    and used only if it matches within :data:`FAST_RTOL`; otherwise (or on any export
    failure) this is the eager predictor. ``engine`` says which one produced the figures.
    """

    def __init__(
        self, model: nn.Module, spec: PreprocessSpec, classes: list[str], check: Sequence[np.ndarray], batch_size: int = 64
    ) -> None:
        super().__init__(model, spec, classes, batch_size)
        self.engine = "eager (torch fp32)"
        self._sess = None
        self.max_diff: float | None = None
        if not check:
            return
        from edgeclf._onnx_match import matching_session

        x = torch.from_numpy(np.stack([preprocess(im, spec) for im in check[:8]]))
        m = matching_session(_FeaturesAndLogits(model).eval(), x, FAST_RTOL, n_outputs=2)
        self.max_diff = m.max_diff
        if m.session is not None:
            self._sess = m.session
            self.engine = f"onnxruntime fp32 (matches eager within {m.max_diff:.1e} relative on {len(x)} images)"

    def _run(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            x = np.stack([preprocess(im, self.spec) for im in images[i : i + self.batch_size]])
            f, y = self._sess.run(None, {"x": np.ascontiguousarray(x)})
            feats.append(f)
            logits.append(y)
        if not feats:
            return np.zeros((0, 0), np.float32), np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(feats), np.concatenate(logits)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self._sess is None:
            return super().__call__(images)
        return self._run(images)[1]

    def features_and_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self._sess is None:
            return super().features_and_logits(images)
        return self._run(images)


@dataclass
class LoadedRun:
    run_dir: Path
    model: nn.Module
    spec: PreprocessSpec
    classes: list[str]
    manifest: Manifest
    data_root: Path
    config: RunConfigDocument
    checkpoint_sha256: str
    best_epoch: int

    def predictor(self, batch_size: int = 64) -> TorchPredictor:
        return TorchPredictor(self.model, self.spec, self.classes, batch_size)

    def fast_predictor(self, check: Sequence[np.ndarray], batch_size: int = 64) -> FastPredictor:
        """The eager model's predictions on ONNX Runtime where it matches eager on ``check`` (see FastPredictor)."""
        if getattr(self, "_fast", None) is None:
            self._fast = FastPredictor(self.model, self.spec, self.classes, check, batch_size)
        return self._fast


def load_run(run_dir: Path, checkpoint: str = "best.pt") -> LoadedRun:
    """The model of a training run (best checkpoint), its preprocessing, classes and data."""
    from edgeclf._io import sha256_file
    from edgeclf.models import create_model
    from edgeclf.train.loop import load_checkpoint

    run_dir = Path(run_dir)
    doc = read_run_config(run_dir)
    ck_path = run_dir / "checkpoints" / checkpoint
    ck = load_checkpoint(ck_path)
    classes = list(ck["classes"])
    model, _ = create_model(ck["backbone"], len(classes), source="none", drop_rate=doc.config.model.drop_rate)
    model.load_state_dict(ck["model"])
    model.eval()
    model = model.to(memory_format=torch.channels_last)
    manifest = read_manifest(doc.manifest)
    data_root = Path(doc.run.data_root)
    return LoadedRun(
        run_dir=run_dir,
        model=model,
        spec=PreprocessSpec.from_dict(ck["preprocess"]),
        classes=classes,
        manifest=manifest,
        data_root=data_root,
        config=doc,
        checkpoint_sha256=sha256_file(ck_path),
        best_epoch=int(ck["epoch"]) + 1,
    )


def load_images(root: Path, paths: Sequence[str]) -> list[np.ndarray]:
    """Decode images by edgeclf's rules to H x W x 3 uint8 arrays."""
    from edgeclf.data._image import load_rgb

    return [np.asarray(load_rgb(Path(root) / p)) for p in paths]
