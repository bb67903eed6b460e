"""Grad-CAM: where in the picture the model looked for the class it chose.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of a convolutional
feature map by the mean gradient of the class score with respect to it, sums
the channels and keeps the positive part::

    cam(h, w) = relu( sum_k  mean_hw(d score / d A_k) * A_k(h, w) )

By default ``A`` is the last feature map of a timm model — the output of
``model.forward_features`` — and the score is computed by
``model.forward_head``, so the backbone is run once without a graph and
gradients flow only through the head: cheap, and it works with every
parameter frozen. Any other module can be chosen with ``layer=`` (a forward
hook captures its output).

:func:`gradcam_grid` draws what the model saw (the preprocessed centre crop)
with the heat map over it, captioned ``true / pred (p)`` in green when the
prediction is right and red when it is wrong.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.preprocess import PreprocessSpec, center_crop, normalize, resize_uint8

#: Opacity of the heat map drawn over the image in :func:`overlay`.
OVERLAY_ALPHA = 0.45

#: Caption colours of :func:`gradcam_grid` (matplotlib's tab green / tab red).
CORRECT_COLOR = "#2ca02c"
WRONG_COLOR = "#d62728"


def _as_nchw(feats: torch.Tensor, model: nn.Module, channels_last_fmt: bool) -> torch.Tensor:
    """A B x C x H x W view of a feature map (NHWC maps permuted, ViT tokens folded)."""
    if feats.ndim == 4:
        if channels_last_fmt:
            return feats.permute(0, 3, 1, 2)
        return feats
    if feats.ndim == 3:  # B x tokens x C (vision transformers): drop prefix tokens, fold to a square grid
        n_prefix = int(getattr(model, "num_prefix_tokens", 0))
        tokens = feats[:, n_prefix:]
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], side, side)
    raise ConfigError(
        f"Grad-CAM needs a spatial feature map; this model's features have shape {tuple(feats.shape)} "
        "(pass layer= with a convolutional module)"
    )


def _cam_from(acts: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    cam = cam.clamp_min(0)
    top = float(cam.max())
    if top > 0:
        cam = cam / top
    return cam.detach().cpu().numpy().astype(np.float32)


def grad_cam(model: nn.Module, x: torch.Tensor, target_class: int | None = None, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM heat map for one normalised image ``x`` (1 x 3 x H x W).

    Args:
        model: a timm-style classifier (``forward_features`` / ``forward_head``
            when ``layer`` is None, plain ``forward`` otherwise). It is run in
            eval mode; its previous train/eval mode is restored afterwards.
            Parameters may be frozen; their ``.grad`` is never touched.
        x: the preprocessed input, any memory format.
        target_class: the class to explain; None = the predicted class.
        layer: the module whose output is explained; None = the last feature
            map (the output of ``model.forward_features``), or for a timm ViT
            that classifies from its class token, ``model.blocks[-1].norm1``.

    Returns:
        H x W float32 in [0, 1] (all zeros when no location supports the class).
    """
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ConfigError(f"grad_cam expects one image as a 1 x 3 x H x W tensor, got shape {tuple(x.shape)}")
    if layer is None and getattr(model, "global_pool", None) == "token" and hasattr(model, "blocks"):
        # a ViT that classifies from its class token: the final patch tokens get no gradient, so
        # explain the input of the last block's attention (the usual ViT Grad-CAM layer)
        layer = getattr(model.blocks[-1], "norm1", None)
        if layer is None:
            raise ConfigError("this transformer pools its class token; pass layer= (a module whose output is the patch tokens)")
    was_training = model.training
    model.eval()
    size = (int(x.shape[2]), int(x.shape[3]))
    try:
        with torch.enable_grad():
            if layer is None:
                with torch.no_grad():
                    raw = model.forward_features(x)
                feats = raw.detach().requires_grad_(True)
                logits = model.forward_head(feats)
                acts_src: torch.Tensor = feats
            else:
                captured: list[torch.Tensor] = []

                def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
                    captured.append(out)

                handle = layer.register_forward_hook(hook)
                try:
                    logits = model(x.detach().requires_grad_(True))  # so the graph exists with frozen params
                finally:
                    handle.remove()
                if not captured or not isinstance(captured[-1], torch.Tensor):
                    raise ConfigError("the Grad-CAM layer did not run (or returned no tensor) in the forward pass")
                acts_src = captured[-1]
            if logits.ndim != 2 or logits.shape[0] != 1:
                raise ConfigError(f"expected 1 x classes logits, got shape {tuple(logits.shape)}")
            n_classes = logits.shape[1]
            cls = int(logits.argmax(1)) if target_class is None else int(target_class)
            if not 0 <= cls < n_classes:
                raise ConfigError(f"target class {cls} is out of range for {n_classes} classes")
            (grads,) = torch.autograd.grad(logits[0, cls], acts_src)
        # timm's NHWC models (e.g. Swin) say so in output_fmt; that applies to forward_features only
        nhwc = layer is None and getattr(model, "output_fmt", "NCHW") == "NHWC"
        return _cam_from(_as_nchw(acts_src.detach(), model, nhwc), _as_nchw(grads, model, nhwc), size)
    finally:
        model.train(was_training)


def overlay(rgb_crop: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a 'jet' heat map of ``cam`` (values in [0, 1]) over an H x W x 3 uint8 image."""
    from matplotlib import colormaps

    if rgb_crop.dtype != np.uint8 or rgb_crop.ndim != 3 or rgb_crop.shape[2] != 3:
        raise ConfigError(f"overlay expects an H x W x 3 uint8 image, got {rgb_crop.dtype} {rgb_crop.shape}")
    cam = np.asarray(cam, dtype=np.float32)
    h, w = rgb_crop.shape[:2]
    if cam.shape != (h, w):
        t = torch.from_numpy(np.ascontiguousarray(cam))[None, None]
        cam = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * rgb_crop.astype(np.float32) + alpha * heat
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def model_view(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The uint8 centre crop the model sees (preprocessing steps 2-3)."""
    return np.ascontiguousarray(center_crop(resize_uint8(image, spec), spec.crop_size))


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def image_grid(
    tiles: Sequence[np.ndarray],
    captions: Sequence[str],
    path: Path,
    title: str,
    colors: Sequence[str] | None = None,
    cols: int = 4,
    empty_message: str = "nothing to show",
) -> Path:
    """Write a PNG grid of uint8 tiles, each captioned (optionally coloured); returns ``path``.

    An empty ``tiles`` list still writes a PNG carrying ``empty_message``, so a
    report can always link the file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeclf._io import atomic_open

    path = Path(path)
    n = len(tiles)
    if n == 0:
        fig = plt.figure(figsize=(6, 1.6))
        fig.text(0.5, 0.62, title, ha="center", va="center", fontsize=11)
        fig.text(0.5, 0.3, empty_message, ha="center", va="center", fontsize=10, color="0.35")
    else:
        cols = max(1, min(cols, n))
        rows = (n + cols - 1) // cols
        width = max(2.6 * cols, 6.5)  # room for the title even with one tile
        fig, axes = plt.subplots(rows, cols, figsize=(width, 2.9 * rows + 0.5), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i, (ax, tile) in enumerate(zip(axes.flat, tiles, strict=False)):
            ax.imshow(tile)
            ax.set_title(captions[i], fontsize=8, color=colors[i] if colors else "black")
        fig.suptitle("\n".join(textwrap.wrap(title, width=int(width * 11))), fontsize=11)
    with warnings.catch_warnings(), atomic_open(path, "wb") as f:
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # CJK class or file names
        fig.tight_layout()
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return path


def sample_correct_and_wrong(labels: Sequence[int], preds: Sequence[int], max_items: int = 16, seed: int = 0) -> list[int]:
    """Indices for a Grad-CAM grid: up to half wrong predictions, the rest correct, random by ``seed``.

    Wrong predictions come first; when there are too few of one kind the other fills the grid.
    """
    y, p = np.asarray(labels), np.asarray(preds)
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(y != p)
    right = np.flatnonzero(y == p)
    n_wrong = min(len(wrong), max(max_items // 2, max_items - len(right)))
    n_right = min(len(right), max_items - n_wrong)
    pick_w = np.sort(rng.choice(wrong, n_wrong, replace=False)) if n_wrong else wrong[:0]
    pick_r = np.sort(rng.choice(right, n_right, replace=False)) if n_right else right[:0]
    return [int(i) for i in np.concatenate([pick_w, pick_r])]


def gradcam_grid(
    model: nn.Module,
    spec: PreprocessSpec,
    classes: Sequence[str],
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    preds: Sequence[int],
    probs: Sequence[float] | np.ndarray,
    path: Path,
    title: str,
    max_items: int = 16,
) -> Path:
    """A PNG grid of Grad-CAM overlays on the crops the model saw.

    Args:
        images: decoded H x W x 3 uint8 RGB images (any size).
        labels, preds: true and predicted class indices per image.
        probs: the predicted class's probability per image, or an N x C
            probability matrix (then ``probs[i, preds[i]]`` is shown).
        max_items: at most this many tiles (the first ``max_items``).

    Each heat map explains the *predicted* class. Returns ``path``.
    """
    n = min(len(images), max_items)
    if not (len(labels) >= n and len(preds) >= n and len(probs) >= n):
        raise ConfigError("gradcam_grid needs one label, prediction and probability per image")
    p_arr = np.asarray(probs, dtype=np.float64)
    tiles, captions, colors = [], [], []
    for i in range(n):
        crop = model_view(images[i], spec)
        x = torch.from_numpy(normalize(crop, spec))[None].contiguous(memory_format=torch.channels_last)
        pred, true = int(preds[i]), int(labels[i])
        cam = grad_cam(model, x, target_class=pred)
        tiles.append(overlay(crop, cam))
        p = float(p_arr[i, pred]) if p_arr.ndim == 2 else float(p_arr[i])
        captions.append(f"{_short(classes[true], 14)} / {_short(classes[pred], 14)} ({p:.2f})")
        colors.append(CORRECT_COLOR if pred == true else WRONG_COLOR)
    return image_grid(tiles, captions, path, title, colors, empty_message="no images to explain")
