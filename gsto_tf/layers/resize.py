"""The one place where tensors are resized.

Every bilinear resize in gsto_tf (HRNet fuse layers, heads, GSTO scale changes, losses, inference) goes through
this module, so the semantics are the same everywhere:

* bilinear, ``align_corners=False`` (half-pixel centres) == PyTorch ``F.interpolate(..., align_corners=False)``
  == ``tf.image.resize(..., 'bilinear')`` without antialiasing;
* the target size may be dynamic (unknown at trace time): ``keras.ops.image.resize`` and
  ``UpSampling2D(interpolation='bilinear')`` fail to export with unknown H/W (TF 2.21 / Keras 3.15),
  ``tf.image.resize`` with a size taken from ``tf.shape`` works;
* the result is cast back to the input dtype, because ``tf.image.resize`` computes in float32 and would silently
  promote bfloat16 / float16 activations under mixed precision;
* float64 tensors are resized exactly in float64 (``tf.image.resize`` returns float32 for every input dtype, which
  would cut a float64 model down to float32): the same half-pixel formula written as two gathers and linear
  interpolations per axis, source coordinates and weights in float64, as PyTorch computes them for double
  tensors. It equals ``tf.image.resize`` up to rounding, takes dynamic sizes, and is differentiable. The float32 /
  bfloat16 / float16 path (and so every export) is ``tf.image.resize`` as before.

Labels must only ever be resized with :func:`resize_nearest`.
"""

import keras
import tensorflow as tf


def _as_size(size):
    """Normalise a size argument (tuple, list, tensor) into an int32 tensor [2]."""
    return tf.cast(tf.convert_to_tensor(size), tf.int32)


def resize_bilinear(x, size):
    """Bilinearly resize an NHWC (or HWC) tensor to ``size`` = (H, W), half-pixel centres, dtype preserved."""
    if x.dtype == tf.float64:
        return _resize_bilinear_float64(x, _as_size(size))
    out = tf.image.resize(x, _as_size(size), method="bilinear", antialias=False)
    return tf.cast(out, x.dtype)


def _source_positions(in_size, out_size):
    """For each output index along one axis: the two source indices and the weight of the second (float64).

    Half-pixel centres: ``src = (o + 0.5) * in / out - 0.5``, clamped at 0 below; ``lo = floor(src)``,
    ``hi = min(lo + 1, in - 1)`` (PyTorch's ``align_corners=False`` rule, also ``tf.image.resize``'s).
    """
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    src = tf.maximum((tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale - 0.5, 0.0)
    lo = tf.minimum(tf.cast(tf.floor(src), tf.int32), in_size - 1)
    hi = tf.minimum(lo + 1, in_size - 1)
    return lo, hi, src - tf.cast(lo, tf.float64)


def _lerp_axis(x, in_size, out_size, axis):
    lo, hi, frac = _source_positions(in_size, out_size)
    shape = [1] * len(x.shape)
    shape[axis] = -1
    a = tf.gather(x, lo, axis=axis)
    b = tf.gather(x, hi, axis=axis)
    return a + (b - a) * tf.reshape(frac, shape)


def _resize_bilinear_float64(x, size):
    images = x if len(x.shape) == 4 else x[None]
    in_hw = tf.shape(images)[1:3]
    out = _lerp_axis(images, in_hw[0], size[0], axis=1)
    out = _lerp_axis(out, in_hw[1], size[1], axis=2)
    return out if len(x.shape) == 4 else out[0]


def resize_nearest(x, size):
    """Nearest-neighbour resize for label maps (NHWC / HWC, any dtype), dtype preserved."""
    out = tf.image.resize(x, _as_size(size), method="nearest", antialias=False)
    return tf.cast(out, x.dtype)


def spatial_size(x):
    """Dynamic (H, W) of an NHWC tensor as an int32 tensor [2]."""
    return tf.shape(x)[1:3]


@keras.saving.register_keras_serializable(package="gsto_tf")
class BilinearResize(keras.layers.Layer):
    """Bilinear resize (align_corners=False) of an NHWC tensor to the (dynamic) spatial size of a reference:
    ``layer([x, reference])``. (Fixed sizes and scale factors: :func:`resize_bilinear`.)"""

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"BilinearResize '{self.name}': call it with [x, reference], got {type(inputs).__name__}"
                             + (f" of {len(inputs)} tensors" if isinstance(inputs, (list, tuple)) else "") + ".")
        x, ref = inputs
        return resize_bilinear(x, spatial_size(ref))

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    @classmethod
    def from_config(cls, config):
        # Models saved before the fixed-size / scale modes were removed store size=None, scale=None.
        config = dict(config)
        for key in ("size", "scale"):
            if config.pop(key, None) is not None:
                raise ValueError(f"BilinearResize: the `{key}` mode no longer exists; use resize_bilinear.")
        return cls(**config)
