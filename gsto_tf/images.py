"""Image files in and out for users' photographs and our PNG outputs (PIL): read any photo as RGB, write PNGs
atomically. Dataset reading, with its checks for truncated and mislabelled files, is :mod:`gsto_tf.data.decode`."""

import numpy as np
from PIL import Image, UnidentifiedImageError

from gsto_tf.atomic import write_atomically


def load_rgb(path):
    """uint8 ``[H, W, 3]`` of an image file (greyscale, palette and RGBA images converted to RGB); a ValueError
    naming the file when it is not an image PIL can decode."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from None


def save_png(path, array):
    """Write a uint8 array (``[H, W]`` label map or ``[H, W, 3]`` RGB) as a PNG, atomically."""
    return write_atomically(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
