"""Evaluation: confusion-matrix metrics, whole / slide / multi-scale + flip inference, prediction."""

from gsto_tf.evaluation.evaluate import evaluate
from gsto_tf.evaluation.inference import Predictor
from gsto_tf.evaluation.metrics import (
    ConfusionMatrixMetric,
    InstanceStats,
    SegmentationMetrics,
    confusion_matrix,
    confusion_matrix_np,
)
from gsto_tf.evaluation.settings import PUBLISHED_TEST_SETTINGS, TestSetting, test_setting

__all__ = [
    "ConfusionMatrixMetric",
    "InstanceStats",
    "PUBLISHED_TEST_SETTINGS",
    "Predictor",
    "SegmentationMetrics",
    "TestSetting",
    "confusion_matrix",
    "confusion_matrix_np",
    "evaluate",
    "test_setting",
]
