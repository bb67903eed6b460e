"""Calibration: temperature scaling (fitted on validation only), ECE, NLL, reliability diagrams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclf.evaluate.metrics import softmax

#: 15 equal-width confidence bins, as in Guo et al. 2017 ("On Calibration of Modern Neural Networks").
ECE_BINS = 15


def stored_temperature(run_dir: Path) -> float:
    """The temperature fitted for a training run (``RUN_DIR/calibration.json``, written by its
    evaluation); 1.0 (raw probabilities) while none is stored."""
    path = Path(run_dir) / "calibration.json"
    if path.is_file():
        return float(json.loads(path.read_text(encoding="utf-8"))["temperature"])
    return 1.0


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of |accuracy - confidence| weighted by bin size."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        mask = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        mask = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        rows.append(
            {
                "low": float(lo),
                "high": float(hi),
                "count": int(mask.sum()),
                "accuracy": float(correct[mask].mean()) if mask.any() else 0.0,
                "confidence": float(conf[mask].mean()) if mask.any() else 0.0,
            }
        )
    return rows


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising NLL of softmax(logits / T) — fit on validation only.

    One parameter, optimised as log T with L-BFGS from T = 1 (Guo et al. 2017).
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    temp = float(log_t.detach().exp())
    return temp if np.isfinite(temp) and temp > 0 else 1.0


def calibration_summary(logits: np.ndarray, y: np.ndarray, temperature: float) -> dict[str, Any]:
    p0, p1 = softmax(logits), softmax(logits, temperature)
    return {
        "temperature": temperature,
        "ece_bins": ECE_BINS,
        "ece_before": ece(p0, y),
        "ece_after": ece(p1, y),
        "nll_before": nll(logits, y),
        "nll_after": nll(logits, y, temperature),
        "reliability_before": reliability_bins(p0, y),
        "reliability_after": reliability_bins(p1, y),
    }


def plot_reliability(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeclf._io import atomic_open

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for ax, key, label in (
        (axes[0], "before", "before (T = 1)"),
        (axes[1], "after", f"after (T = {summary['temperature']:.3f})"),
    ):
        rows = summary[f"reliability_{key}"]
        centers = [(r["low"] + r["high"]) / 2 for r in rows]
        width = rows[0]["high"] - rows[0]["low"]
        acc = [r["accuracy"] if r["count"] else 0 for r in rows]
        ax.bar(centers, acc, width=width * 0.95, color="#4c72b0", edgecolor="white", label="accuracy")
        gaps = [(r["confidence"] - r["accuracy"]) if r["count"] else 0 for r in rows]
        ax.bar(centers, gaps, bottom=acc, width=width * 0.95, color="#dd8452", alpha=0.6, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(f"{label}\nECE {summary[f'ece_{key}']:.4f}, NLL {summary[f'nll_{key}']:.4f}")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
