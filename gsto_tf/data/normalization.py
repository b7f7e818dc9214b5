"""Image normalisation: the one place where pixel values are turned into network inputs.

Images are RGB. ``normalize_image`` maps uint8 [0, 255] (or float already in [0, 255]) to
``(x / 255 - mean) / std`` with the ImageNet statistics used by HRNet and every backbone checkpoint we load
(HRNet ``lib/datasets/base_dataset.py``). Training pipelines, evaluation, prediction and the exported SavedModel /
TFLite graphs all call it.
"""

import numpy as np
import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Every normalised value lies within [-2.12, 2.64] (0 and 255 through the statistics above). Inputs that claim to be
# normalised but reach beyond +-NORMALIZED_LIMIT are 0-255 pixel values (or garbage) and are refused where a float
# image enters a model from outside: the TFLite runner and the SavedModel's serving_normalized signature.
NORMALIZED_LIMIT = 4.0


def normalize_image(image, dtype=tf.float32):
    """uint8/float RGB image(s) in [0, 255] (..., 3) -> normalised float tensor."""
    image = tf.cast(image, tf.float32) / 255.0
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return tf.cast((image - mean) / std, dtype)


def denormalize_image(image):
    """Inverse of :func:`normalize_image`, returning uint8 numpy RGB (for visualisation)."""
    image = np.asarray(image, np.float32) * np.asarray(IMAGENET_STD, np.float32)
    image = (image + np.asarray(IMAGENET_MEAN, np.float32)) * 255.0
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
