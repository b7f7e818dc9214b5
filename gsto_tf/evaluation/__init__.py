"""Evaluation: confusion-matrix metrics (metrics.py), Cityscapes instance statistics (instances.py), reports
(report.py), whole / slide / multi-scale + flip inference (inference.py), prediction on image files (predict.py)."""

from gsto_tf.evaluation.evaluate import evaluate
from gsto_tf.evaluation.inference import Predictor
from gsto_tf.evaluation.instances import InstanceStats
from gsto_tf.evaluation.metrics import ConfusionMatrixMetric, SegmentationMetrics, confusion_matrix, confusion_matrix_np
from gsto_tf.evaluation.settings import TestSetting, test_setting

__all__ = [
    "ConfusionMatrixMetric",
    "InstanceStats",
    "Predictor",
    "SegmentationMetrics",
    "TestSetting",
    "confusion_matrix",
    "confusion_matrix_np",
    "evaluate",
    "test_setting",
]
