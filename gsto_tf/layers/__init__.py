"""Keras 3 layers of gsto_tf."""

from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.resize import BilinearResize, resize_bilinear, resize_nearest, spatial_size
from gsto_tf.layers.spatial_gate import SpatialGate

__all__ = [
    "BilinearResize",
    "GatedScaleTransfer",
    "SpatialGate",
    "resize_bilinear",
    "resize_nearest",
    "spatial_size",
]
