"""Learning-rate schedule: linear warm-up, then cosine (or step) decay, per optimizer step."""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    kind: str = "cosine",
    min_ratio: float = 0.01,
    step_every: int = 1,
    gamma: float = 0.1,
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warm-up rises linearly from ``1 / (warmup_steps + 1)`` to 1 at ``warmup_steps``;
    cosine then falls to ``min_ratio`` at ``total_steps``; step multiplies by
    ``gamma`` every ``step_every`` steps after warm-up.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    t = step - warmup_steps
    span = max(1, total_steps - warmup_steps)
    if kind == "step":
        return gamma ** (t // max(1, step_every))
    progress = min(1.0, t / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
