"""Whole-image, sliding-window and multi-scale + flip inference (HRNet's test code, lib/core/function.py and
lib/datasets/base_dataset.py), always at the original resolution.

What is summed, following HRNet's test code:

* per scale, the image is resized by the scale factor (bilinear) and run *whole* or by *sliding windows*
  (windows shifted inside the image; images smaller than a window are padded with the normalised zero; the
  logits of overlapping windows are averaged with a count map);
* with ``flip``, the logits of the mirrored image are mirrored back (LIP: left/right class channels swapped
  first) and averaged with the plain logits;
* the per-scale score is ``exp(logits)`` (logits clipped at 80 to stay finite in float32), resized bilinearly to
  the original size and **summed over scales**. With one scale this is a monotone map of the logits, so the
  argmax is that of the plain logits.

Model outputs (stride 4 or 8) are resized to their input's size first. Every resize is
:func:`gsto_tf.layers.resize.resize_bilinear`.
"""

import math

import numpy as np
import tensorflow as tf

from gsto_tf.images import inference_problem, too_many_pixels
from gsto_tf.layers.resize import resize_bilinear
from gsto_tf.models import outputs as out_names


def _as_logits_fn(model):
    """A traced function image [1, h, w, 3] -> logits [1, h', w', K] for dict or tensor models."""

    @tf.function(reduce_retracing=True)
    def fn(image):
        return tf.cast(out_names.final_logits(model(image, training=False)), tf.float32)

    return fn


class Predictor:
    """Runs a model with one inference setting. ``scores(image)`` -> ``[H, W, K]`` summed scores."""

    def __init__(self, model, *, scales=(1.0,), flip=False, mode="whole", crop_size=None, stride=None,
                 flip_pairs=()):
        if mode not in ("whole", "slide"):
            raise ValueError(f"inference `mode` must be 'whole' or 'slide', got {mode!r}")
        if mode == "slide" and not crop_size:
            raise ValueError("slide inference needs `crop_size` (window height, width)")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"`scales` must be positive factors, got {scales!r}")
        if mode == "slide" and stride is None:
            stride = tuple(int(math.ceil(c * 2 / 3)) for c in crop_size)  # HRNet: 2/3 of the window
        problem = inference_problem(scales, crop_size if mode == "slide" else None, stride)
        if problem:
            raise ValueError(f"inference setting: {problem}")
        self._logits = _as_logits_fn(model)
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.mode = mode
        self.crop_size = tuple(crop_size) if crop_size else None
        self.stride = tuple(stride) if stride else None
        self.flip_pairs = tuple(flip_pairs)

    @classmethod
    def from_setting(cls, model, setting, flip_pairs=()):
        """The predictor of a :class:`~gsto_tf.evaluation.settings.TestSetting` (scales, flip, whole / slide)."""
        return cls(model, scales=setting.scales, flip=setting.flip, mode=setting.mode, crop_size=setting.crop_size,
                   stride=setting.stride, flip_pairs=flip_pairs)

    def _swap_channels(self, logits):
        if not self.flip_pairs:
            return logits
        order = list(range(logits.shape[-1]))
        for a, b in self.flip_pairs:
            order[a], order[b] = b, a
        return tf.gather(logits, order, axis=-1)

    def _whole(self, image):
        """image [1, h, w, 3] -> logits [1, h, w, K] at the image's size (flip-averaged if asked)."""
        size = tf.shape(image)[1:3]
        logits = resize_bilinear(self._logits(image), size)
        if self.flip:
            mirrored = resize_bilinear(self._logits(image[:, :, ::-1]), size)
            logits = 0.5 * (logits + self._swap_channels(mirrored)[:, :, ::-1])
        return logits

    def _slide(self, image):
        h, w = int(image.shape[1]), int(image.shape[2])
        ch, cw = self.crop_size
        sh, sw = self.stride
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        if pad_h or pad_w:  # normalised zero = the mean colour
            image = tf.pad(image, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        ph, pw = h + pad_h, w + pad_w
        rows = max(int(math.ceil((ph - ch) / sh)), 0) + 1
        cols = max(int(math.ceil((pw - cw) / sw)), 0) + 1
        total = None
        count = np.zeros((ph, pw, 1), np.float32)
        for r in range(rows):
            for c in range(cols):
                y0 = min(r * sh, ph - ch)  # border windows shifted inside the image
                x0 = min(c * sw, pw - cw)
                window = self._whole(image[:, y0:y0 + ch, x0:x0 + cw])[0]
                padded = tf.pad(window, [[y0, ph - y0 - ch], [x0, pw - x0 - cw], [0, 0]])
                total = padded if total is None else total + padded
                count[y0:y0 + ch, x0:x0 + cw] += 1
        return (total / count)[None, :h, :w]

    def scores(self, image):
        """Normalised image [H, W, 3] or [1, H, W, 3] -> summed scores [H, W, K] at the original size."""
        image = tf.convert_to_tensor(image, tf.float32)
        if image.shape.rank == 3:
            image = image[None]
        if image.shape.rank != 4 or image.shape[0] != 1 or image.shape[-1] != 3:
            raise ValueError(f"expected one image [H, W, 3] or [1, H, W, 3], got shape {image.shape}")
        h, w = int(image.shape[1]), int(image.shape[2])
        problem = too_many_pixels(h, w, max(self.scales))
        if problem:
            raise ValueError(problem)
        total = None
        for s in self.scales:
            scaled = image if s == 1.0 else resize_bilinear(
                image, (max(int(h * s + 0.5), 1), max(int(w * s + 0.5), 1)))
            logits = self._slide(scaled) if self.mode == "slide" else self._whole(scaled)
            if len(self.scales) == 1:
                return logits[0]  # exp is monotone: with one scale the logits rank classes the same
            score = tf.exp(tf.minimum(logits, 80.0))
            score = resize_bilinear(score, (h, w))
            total = score if total is None else total + score
        return total[0]

    def predict(self, image):
        """Label map [H, W] int32."""
        return tf.argmax(self.scores(image), axis=-1, output_type=tf.int32)
