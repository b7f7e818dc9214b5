"""Keras 3 layers of gsto_tf."""

from gsto_tf.layers.resize import BilinearResize, resize_bilinear, resize_nearest, spatial_size

__all__ = ["BilinearResize", "resize_bilinear", "resize_nearest", "spatial_size"]
