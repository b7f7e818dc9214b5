"""Training: configs and recipes, losses, PyTorch-exact SGD + poly schedule, resumable model.fit."""

from gsto_tf.training.config import RECIPES, ExperimentConfig, make_config
from gsto_tf.training.losses import CITYSCAPES_CLASS_WEIGHTS, SegmentationLoss
from gsto_tf.training.optimizer import TorchSGD, poly_schedule
from gsto_tf.training.trainer import TrainResult, train

__all__ = [
    "CITYSCAPES_CLASS_WEIGHTS",
    "ExperimentConfig",
    "RECIPES",
    "SegmentationLoss",
    "TorchSGD",
    "TrainResult",
    "make_config",
    "poly_schedule",
    "train",
]
