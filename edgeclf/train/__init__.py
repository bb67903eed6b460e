"""Training stage: baselines, linear probe, fine-tuning, checkpoints, resume."""

from edgeclf.train.config import TrainConfig, load_config
from edgeclf.train.loop import RunResult, load_checkpoint, train

__all__ = ["RunResult", "TrainConfig", "load_checkpoint", "load_config", "train"]
