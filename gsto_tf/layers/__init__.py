"""Keras 3 layers of gsto_tf."""

from gsto_tf.layers.adaptive_pooling import AdaptiveAveragePooling2D, adaptive_average_pool2d
from gsto_tf.layers.batch_norm import FusedBatchNormalization
from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.resize import BilinearResize, resize_bilinear, resize_nearest, spatial_size
from gsto_tf.layers.spatial_gate import SpatialGate
from gsto_tf.layers.upsample_concat_conv import UpsampleConcatConv1x1

__all__ = [
    "AdaptiveAveragePooling2D",
    "BilinearResize",
    "FusedBatchNormalization",
    "GatedScaleTransfer",
    "SpatialGate",
    "UpsampleConcatConv1x1",
    "adaptive_average_pool2d",
    "resize_bilinear",
    "resize_nearest",
    "spatial_size",
]
