"""Feature-space views: a 2-D map of the model's embeddings, and a TensorBoard projector export.

:func:`project_2d` maps penultimate-layer features to 2-D with UMAP when the
``umap-learn`` package is installed, else scikit-learn's t-SNE (features are
first reduced to 50 dimensions by PCA, as the t-SNE authors recommend).
Classes that form separate islands are easy for the head; islands that mix
are where the confusions come from. :func:`export_projector` writes the full
features for TensorBoard's interactive projector (3-D PCA/t-SNE/UMAP, search
by label or file, thumbnails).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from edgeclf.errors import ConfigError, DataError

Method = Literal["auto", "umap", "tsne", "pca"]

#: Features are reduced to this many dimensions by PCA before t-SNE / UMAP.
PCA_DIMS = 50

#: t-SNE's usual perplexity; smaller sets use (N - 1) / 3 (sklearn needs perplexity < N).
TSNE_PERPLEXITY = 30.0

#: t-SNE runs single-threaded below this many points (see :func:`project_2d`).
TSNE_PARALLEL_MIN_POINTS = 5000

#: Below this many points a neighbour embedding is meaningless; PCA is used instead.
MIN_NEIGHBOR_POINTS = 5

#: TensorBoard refuses sprites larger than 8192 x 8192 pixels.
SPRITE_MAX_PX = 8192
#: Largest projector thumbnail edge (keeps the sprite and its memory small).
THUMB_MAX_PX = 32


def umap_available() -> bool:
    """True when the optional ``umap-learn`` package can be imported."""
    return importlib.util.find_spec("umap") is not None


def _pca(x: np.ndarray, dims: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    dims = min(dims, x.shape[0], x.shape[1])
    return PCA(n_components=dims, svd_solver="full", random_state=seed).fit_transform(x)


def project_2d(features: np.ndarray, method: Method = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Project N x D features to N x 2; returns ``(xy, method_used)``.

    ``method``: ``"auto"`` (UMAP if installed, else t-SNE), ``"umap"``,
    ``"tsne"`` or ``"pca"``. When D > 50 the features are reduced to 50 PCA
    dimensions first. Deterministic for a given ``seed`` (UMAP runs single-
    threaded when seeded). Fewer than 5 points are projected with PCA, and
    ``method_used`` says so.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"features must be an N x D array, got shape {x.shape}")
    if method not in ("auto", "umap", "tsne", "pca"):
        raise ConfigError(f"projection method must be auto, umap, tsne or pca, got {method!r}")
    if not np.isfinite(x).all():
        raise DataError("features contain NaN or infinite values; the model's outputs are not usable")
    n, d = x.shape
    if n == 0:
        return np.zeros((0, 2), np.float32), "pca"
    if method == "umap" and not umap_available():
        raise ConfigError("UMAP needs the umap-learn package: `pip install umap-learn` (or use method='tsne')")
    if method == "auto":
        method = "umap" if umap_available() else "tsne"
    if n < MIN_NEIGHBOR_POINTS or d == 1:
        method = "pca"
    if method == "pca":
        xy = _pca(x, 2, seed) if n > 1 else np.zeros((1, 1))
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
        return xy.astype(np.float32), "pca"
    if d > PCA_DIMS:
        x = _pca(x, PCA_DIMS, seed)
    if method == "umap":
        import umap  # type: ignore[import-not-found]

        n_neighbors = max(2, min(15, n - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden to 1 by setting random_state"
            xy = umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=seed).fit_transform(x)
        return np.asarray(xy, dtype=np.float32), "umap"
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(TSNE_PERPLEXITY, (n - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # Barnes-Hut t-SNE opens OpenMP regions every iteration; when the cores are busy (training
    # beside it, parallel tests) each barrier waits for a descheduled thread. Measured on a
    # loaded 2-core machine: 40 points 35-44 s with 2 threads, 0.07 s with one; 2,500 points
    # 50 s against 11 s. Larger sets get sklearn's default threads.
    with threadpool_limits(limits=1 if n < TSNE_PARALLEL_MIN_POINTS else None, user_api="openmp"):
        xy = tsne.fit_transform(x)
    return xy.astype(np.float32), "tsne"


def class_colors(n_classes: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours: tab10 up to 10 classes, tab20 up to 20, evenly spaced hues beyond."""
    from matplotlib import colormaps

    if n_classes <= 10:
        return [colormaps["tab10"](i) for i in range(n_classes)]
    if n_classes <= 20:
        return [colormaps["tab20"](i) for i in range(n_classes)]
    hsv = colormaps["hsv"]
    return [hsv(i / n_classes) for i in range(n_classes)]


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_embeddings(
    xy: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: Path,
    title: str,
    method: str,
    wrong: np.ndarray | None = None,
) -> Path:
    """Scatter of 2-D points coloured by class (integer ``labels`` index ``classes``), with a legend.

    ``wrong`` (optional boolean mask) circles the points the model got wrong.
    Past 20 classes markers vary as well as colours. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeclf._io import atomic_open

    xy = np.asarray(xy, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(y):
        raise DataError(f"need N x 2 points and N labels, got {xy.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(f"labels must index the {len(classes)} classes")
    colors = class_colors(len(classes))
    size = float(np.clip(4000.0 / max(len(y), 1), 6.0, 40.0))
    fig, ax = plt.subplots(figsize=(8.5, 7))
    for k, name in enumerate(classes):
        m = y == k
        if not m.any():
            continue
        marker = _MARKERS[(k // 20) % len(_MARKERS)] if len(classes) > 20 else "o"
        ax.scatter(
            xy[m, 0], xy[m, 1], s=size, color=colors[k], marker=marker, alpha=0.8, linewidths=0, label=f"{name} ({int(m.sum())})"
        )
    if wrong is not None:
        w = np.asarray(wrong, dtype=bool)
        if w.shape != y.shape:
            raise DataError(f"the misclassified mask needs one entry per point, got {w.shape} for {y.shape}")
        if w.any():
            ax.scatter(
                xy[w, 0],
                xy[w, 1],
                s=size * 3,
                facecolors="none",
                edgecolors="black",
                linewidths=0.8,
                label=f"misclassified ({int(w.sum())})",
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(title)
    ncol = 1 if len(classes) <= 20 else 2
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, ncol=ncol, frameon=False, markerscale=1.5)
    with warnings.catch_warnings(), atomic_open(path, "wb") as f:
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def _tsv_safe(s: str) -> str:
    return " ".join(str(s).replace("\t", " ").replace("\r", " ").split("\n")) or "-"


def _thumbnail(img: np.ndarray, size: int) -> np.ndarray:
    """Centre square of an H x W x 3 uint8 image, resized to size x size, as 3 x size x size float in [0, 1]."""
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    sq = Image.fromarray(np.ascontiguousarray(img[top : top + s, left : left + s]))
    sq = sq.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(sq, dtype=np.float32).transpose(2, 0, 1) / 255.0


def export_projector(
    features: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    paths: Sequence[str],
    log_dir: Path,
    images: list[np.ndarray] | None = None,
    tag: str = "embeddings",
) -> Path:
    """Write a TensorBoard projector export to ``log_dir``; returns the embedding's folder.

    Files (TensorBoard's layout): ``log_dir/projector_config.pbtxt``,
    ``log_dir/00000/<tag>/{tensors.tsv, metadata.tsv[, sprite.png]}`` and an
    events file. ``metadata.tsv`` has a ``label<TAB>file`` header and one row
    per point; with ``images`` a sprite of square thumbnails (centre square,
    at most 32 px, small enough for TensorBoard's 8192 px limit) is added.
    An earlier export of the same ``tag`` in ``log_dir`` is replaced.
    View with ``tensorboard --logdir LOG_DIR`` -> Projector.

    These files are written by TensorBoard's own writer, not atomically.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    feats = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64)
    n = len(feats)
    if feats.ndim != 2 or n == 0:
        raise DataError(f"need a non-empty N x D feature array, got shape {feats.shape}")
    if len(y) != n or len(paths) != n or (images is not None and len(images) != n):
        raise DataError("features, labels, paths (and images) must have one entry per point")
    if y.min() < 0 or y.max() >= len(classes):
        raise DataError(f"labels must index the {len(classes)} classes")
    if not tag or not all(c.isalnum() or c in "-_." for c in tag) or tag.startswith("."):
        raise ConfigError(f"projector tag must be letters, digits, '-', '_' or '.', got {tag!r}")
    log_dir = Path(log_dir)
    target = log_dir / "00000" / tag
    if target.is_dir():
        shutil.rmtree(target)  # a previous export of this tag; TensorBoard would print a warning on stdout
    label_img = None
    if images is not None:
        per_row = math.ceil(math.sqrt(n))
        size = max(4, min(THUMB_MAX_PX, SPRITE_MAX_PX // per_row))
        label_img = torch.from_numpy(np.stack([_thumbnail(im, size) for im in images]))
    metadata = [[_tsv_safe(classes[int(k)]), _tsv_safe(p)] for k, p in zip(y, paths, strict=False)]
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        writer.add_embedding(
            torch.from_numpy(feats),
            metadata=metadata,
            label_img=label_img,
            global_step=0,
            tag=tag,
            metadata_header=["label", "file"],
        )
    finally:
        writer.close()
    return target
