"""Image files in and out for users' photographs and our PNG outputs (PIL): read any photo as RGB, write PNGs
atomically. Dataset reading, with its checks for truncated and mislabelled files, is :mod:`gsto_tf.data.decode`."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from gsto_tf.atomic import write_atomically

# The largest image read (dataset files and photos to predict), and the largest one run through a model after an
# inference scale: 50 megapixels (a 48 MP phone photo; Cityscapes is 2 MP). Beyond it one decoded image or its
# activations take gigabytes; such a file is refused, naming it, before it is decoded.
MAX_IMAGE_PIXELS = 50_000_000
# Inference settings (card `evaluation`, `eval` flags): scales up to 4 (published settings use 0.5-2.0), slide
# windows of at least 16x16 moved by at least a quarter of the window (HRNet: two thirds), so that one image is a
# bounded number of windows.
MAX_INFERENCE_SCALE = 4.0
MIN_SLIDE_WINDOW = 16


def inference_problem(scales=None, crop_size=None, stride=None):
    """What is out of bounds in an inference setting (one sentence), or None."""
    for s in scales or ():
        if not 0 < s <= MAX_INFERENCE_SCALE:
            return f"scale {s:g} is outside (0, {MAX_INFERENCE_SCALE:g}]"
    if crop_size is not None and min(crop_size) < MIN_SLIDE_WINDOW:
        return f"slide window {crop_size[0]}x{crop_size[1]} is smaller than {MIN_SLIDE_WINDOW}x{MIN_SLIDE_WINDOW}"
    if crop_size is not None and stride is not None and any(
            not c / 4 <= t <= c for t, c in zip(stride, crop_size)):
        return (f"slide stride {stride[0]}x{stride[1]} must be between a quarter of the window and the window "
                f"({crop_size[0]}x{crop_size[1]})")
    return None


def too_many_pixels(height, width, scale=1.0):
    """The sentence refusing an image of ``height`` x ``width`` at ``scale``, or None when it is within bounds."""
    pixels = height * width * scale * scale
    if pixels <= MAX_IMAGE_PIXELS:
        return None
    at = "" if scale == 1.0 else f" at scale {scale:g}"
    return (f"{width}x{height} image{at} is {pixels / 1e6:.0f} megapixels; at most {MAX_IMAGE_PIXELS / 1e6:.0f} are "
            "read (resize it first)")


def load_rgb(path):
    """uint8 ``[H, W, 3]`` of an image file (greyscale, palette and RGBA images converted to RGB); a ValueError
    naming the file when it is not an image PIL can decode."""
    if not os.path.isfile(path):  # a FIFO would block, a device (/dev/zero) never end
        raise ValueError(f"cannot read image {path}: not a regular file")
    try:
        with Image.open(path) as im:
            problem = too_many_pixels(im.height, im.width)  # from the header, before decoding
            if problem:
                raise ValueError(f"cannot read image {path}: {problem}")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from None


def save_png(path, array):
    """Write a uint8 array (``[H, W]`` label map or ``[H, W, 3]`` RGB) as a PNG, atomically."""
    return write_atomically(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
