"""Keras 3 layers of gsto_tf."""

import importlib
import importlib.util

from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.resize import BilinearResize, resize_bilinear, resize_nearest, spatial_size
from gsto_tf.layers.spatial_gate import SpatialGate

# Layers of the PPM / ASPP heads live in their own module (heads developer); importing it registers them for
# .keras deserialisation. A missing module is fine, an error inside it is not hidden.
if importlib.util.find_spec("gsto_tf.layers.adaptive_pooling") is not None:
    importlib.import_module("gsto_tf.layers.adaptive_pooling")

__all__ = [
    "BilinearResize",
    "GatedScaleTransfer",
    "SpatialGate",
    "resize_bilinear",
    "resize_nearest",
    "spatial_size",
]
