"""Figures of an evaluation: confusion matrices and the most confident mistakes."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf._io import atomic_open, atomic_write_text


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: list[list[int]], cm_norm: list[list[float]], classes: list[str], path: Path, title: str) -> None:
    """Counts and row-normalised (recall) heatmaps side by side, class names on both axes."""
    plt = _plt()
    n = len(classes)
    size = max(4.5, 0.55 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, data, fmt, sub in (
        (axes[0], np.asarray(cm), "d", "counts"),
        (axes[1], np.asarray(cm_norm), ".2f", "row-normalised (recall)"),
    ):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if fmt == "d" else 1.0)
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub)
        thresh = (data.max() if data.size else 1) / 2
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        format(data[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if data[i, j] > thresh else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def top_mistakes(paths: list[str], y: np.ndarray, probs: np.ndarray, classes: list[str], top: int = 24) -> list[dict[str, Any]]:
    """The wrong predictions with the highest confidence, most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.nonzero(pred != y)[0]
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    return [
        {
            "path": paths[i],
            "true": classes[y[i]],
            "predicted": classes[pred[i]],
            "confidence": float(probs[i, pred[i]]),
            "p_true": float(probs[i, y[i]]),
        }
        for i in order[:top]
    ]


def write_mistakes_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["path", "true", "predicted", "confidence", "p_true"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "confidence": f"{r['confidence']:.4f}", "p_true": f"{r['p_true']:.4f}"})
    atomic_write_text(path, buf.getvalue())


def plot_mistakes(rows: list[dict[str, Any]], images: dict[str, np.ndarray], path: Path, title: str, cols: int = 6) -> None:
    """Image grid of mistakes captioned true / predicted (confidence)."""
    plt = _plt()
    n = max(1, len(rows))
    cols = min(cols, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 2.7 * nrows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows, strict=False):
        img = images.get(r["path"])
        if img is not None:
            ax.imshow(img)
        ax.set_title(f"true {r['true']}\npred {r['predicted']} ({r['confidence']:.2f})", fontsize=8, color="#b00020")
    if not rows:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
