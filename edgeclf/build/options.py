"""What the chain and every stage share: the build's options, its error and the log callback; the demo's options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeclf.errors import EdgeclfError

Log = Callable[[str], None]


class BuildError(EdgeclfError):
    """A build stage failed; the message names the stage and what to do."""


@dataclass
class BuildOptions:
    profile: str
    data_dir: Path
    out: Path
    budget_ms: float | None = None
    config: Path | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    measure: bool | None = None  # None: measure when this host is the profile's target
    backbones: list[str] | None = None
    image_size: int | None = None  # force a resolution instead of the selection's
    robustness: bool = True
    calibration_images: int = 128
    workers: int | None = None
    extra_train: dict[str, Any] = field(default_factory=dict)
    allow_weak: bool = False
    time_budget_s: float | None = None  # search the recipe for this long (edgeclf.train.search)
    decision: Any = None  # edgeclf.evaluate.decision.DecisionRequest; None: argmax


#: Where ``edgeclf demo`` (``make demo``) builds unless told otherwise.
DEMO_OUT = Path("demo-out")
#: The demo's one candidate backbone: the selection alone would take the more accurate, slower
#: EfficientNet-Lite2; pinning Lite0 keeps the demo short.
DEMO_BACKBONES = ("tf_efficientnet_lite0",)


#: The demo fine-tunes the last 2 stages, not the recipe's 4: on elpv the two give the same shipped
#: quality (val macro-F1 0.495 vs 0.487, test 0.526 both, within the CI) while 4 stages take
#: 708 s of fine-tuning (11 epochs) against 247 s (5, early stop) on two cores. config.yaml records
#: it as a user choice.
DEMO_TRAIN = {"finetune.unfreeze": 2}

#: The demo trains at Lite0's native 224 px. elpv's cells are 300 px and the selection now prices
#: 288 px (their size, a multiple of 32) within the budget, so the resolution check would fit the
#: probe at both sizes (about two minutes more). Measured on elpv: at 288 px the probe's val
#: macro-F1 is 0.537 against 0.492 (paired 95 % interval of the gain [-0.024, +0.114]: the check
#: keeps 224 px), its test macro-F1 0.526 against 0.526, and the build takes about 1.65x the pixels.
DEMO_IMAGE_SIZE = 224


def demo_options(out: Path | None = None) -> BuildOptions:
    """``edgeclf demo``: the whole build on the embedded elpv data set for this host's profile, i.e.
    ``edgeclf build --profile auto --data elpv --out demo-out --backbones tf_efficientnet_lite0 --image-size 224``
    with ``finetune.unfreeze: 2`` (:data:`DEMO_TRAIN`, :data:`DEMO_IMAGE_SIZE`)."""
    return BuildOptions(
        profile="auto",
        data_dir=Path("elpv"),
        out=Path(out) if out is not None else DEMO_OUT,
        backbones=list(DEMO_BACKBONES),
        image_size=DEMO_IMAGE_SIZE,
        extra_train=dict(DEMO_TRAIN),
    )
