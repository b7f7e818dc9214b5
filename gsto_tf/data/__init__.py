"""Datasets, label mappings and tf.data pipelines."""

from gsto_tf.data.normalization import IMAGENET_MEAN, IMAGENET_STD, denormalize_image, normalize_image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "denormalize_image", "normalize_image"]
