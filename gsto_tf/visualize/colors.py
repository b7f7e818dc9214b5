"""Label maps in colour: the dataset palette per train id, and the one overlay of labels on a photograph (used by
``predict``, the figures and ``data browse``)."""

import numpy as np


def colorize(labels, palette, ignore_label=255):
    """uint8 RGB ``[H, W, 3]`` of a label map: palette colour per train id, black for ignore and unknown ids."""
    palette = np.asarray(palette, np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    lut[ignore_label] = 0
    return lut[np.clip(np.asarray(labels, np.int64), 0, 255)]


def overlay(image, labels, palette, opacity=0.5, ignore_label=255):
    """Blend the palette colours of ``labels`` over an RGB uint8 ``image`` with ``opacity`` in [0, 1]."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    colours = colorize(labels, palette, ignore_label).astype(np.float32)
    return np.round((1 - opacity) * image.astype(np.float32) + opacity * colours).astype(np.uint8)
