"""Training: configs (recipes come from the dataset cards), losses, PyTorch-exact SGD + poly schedule, resumable
model.fit."""

from gsto_tf.training.config import ExperimentConfig, make_config
from gsto_tf.training.losses import SegmentationLoss
from gsto_tf.training.optimizer import TorchSGD, poly_schedule
from gsto_tf.training.trainer import TrainResult, train

__all__ = [
    "ExperimentConfig",
    "SegmentationLoss",
    "TorchSGD",
    "TrainResult",
    "make_config",
    "poly_schedule",
    "train",
]
