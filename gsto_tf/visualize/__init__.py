"""Figures: predictions, GSTO gate maps, branch features (scale confusion), confusion matrix, training curves."""

from gsto_tf.visualize.features import branch_features
from gsto_tf.visualize.figures import (
    branch_feature_grid,
    confusion_plot,
    gate_grid,
    gate_value_range,
    prediction_grid,
    training_curves,
)

__all__ = ["branch_feature_grid", "branch_features", "confusion_plot", "gate_grid", "gate_value_range",
           "prediction_grid",
           "training_curves"]
