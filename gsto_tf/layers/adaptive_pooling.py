"""AdaptiveAveragePooling2D: PyTorch's ``adaptive_avg_pool2d`` for NHWC tensors of any (even unknown) size.

PyTorch splits an axis of length ``L`` into ``n`` bins; bin ``i`` averages positions
``floor(i * L / n) <= p < ceil((i + 1) * L / n)``, so bins overlap when ``n`` does not divide ``L`` (45 -> 6 bins:
[0, 8), [7, 15), [15, 23), [22, 30), [30, 38), [37, 45)). ``tf.keras`` has no such layer, and emulations by a
fixed-window pooling are only exact when ``n`` divides ``L``.

Here the pooling is written as two small matrix products ``A_h @ x @ A_w^T``, where ``A_h[i, p]`` is
``1 / len(bin i)`` inside bin ``i`` and 0 elsewhere. The matrices are built from ``tf.shape`` inside the graph,
so the same SavedModel works for every input size (PSPNet / DeepLab heads run on arbitrary image sizes), no Python
int is taken from the input shape, and the result is an exact bin average (summed in float32, float64 for float64
inputs, no cumulative-sum cancellation). The bins are tiny (n <= 6 in PPM), so the cost is
``O(N * H * W * C * n)``, like a pooling pass.
"""

import keras
import tensorflow as tf


def _bin_matrix(length, bins, dtype):
    """``[bins, length]`` averaging matrix of PyTorch's adaptive pooling along one axis (dynamic length)."""
    length = tf.cast(length, tf.int32)
    i = tf.range(bins, dtype=tf.int32)[:, None]
    start = (i * length) // bins  # floor(i * L / n)
    end = ((i + 1) * length + bins - 1) // bins  # ceil((i + 1) * L / n)
    p = tf.range(length, dtype=tf.int32)[None, :]
    inside = tf.cast((p >= start) & (p < end), dtype)
    return inside / tf.cast(end - start, dtype)


def adaptive_average_pool2d(x, output_size):
    """Functional form: ``[N, H, W, C]`` -> ``[N, out_h, out_w, C]``, same dtype as ``x``.

    Each output bin must see at least one input row / column: ``H, W >= 1`` is enough (bins may then repeat
    positions, as in PyTorch when ``H < out_h``).
    """
    out_h, out_w = _as_pair(output_size, "output_size")
    shape = tf.shape(x)
    # Accumulate in float32 whatever the compute dtype (bfloat16 sums of thousands of positions lose digits);
    # a float64 model stays in float64.
    dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    a_h = _bin_matrix(shape[1], out_h, dtype)
    a_w = _bin_matrix(shape[2], out_w, dtype)
    y = tf.einsum("ih,nhwc->niwc", a_h, tf.cast(x, dtype))
    y = tf.einsum("jw,niwc->nijc", a_w, y)
    return tf.cast(y, x.dtype)


def _as_pair(value, arg_name):
    if isinstance(value, int):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
        exact = all(int(v) == v for v in value)
    except (TypeError, ValueError):
        pair, exact = (), False
    if len(pair) != 2 or not exact or min(pair) <= 0:
        raise ValueError(
            f"AdaptiveAveragePooling2D: `{arg_name}` must be a positive int or a pair of positive ints "
            f"(out_h, out_w), got {value!r}."
        )
    return pair


@keras.saving.register_keras_serializable(package="gsto_tf")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average-pool an NHWC tensor to a fixed ``output_size`` grid with PyTorch's adaptive bin edges.

    Args:
        output_size: int ``n`` (an ``n x n`` grid) or ``(out_h, out_w)``.

    Input ``[N, H, W, C]`` with any (also unknown) ``H, W``; output ``[N, out_h, out_w, C]`` in the compute dtype.
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        self.output_size = _as_pair(output_size, "output_size")

    def call(self, inputs):
        return adaptive_average_pool2d(inputs, self.output_size)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"AdaptiveAveragePooling2D '{self.name}': expected an NHWC input of rank 4, got shape {input_shape}."
            )
        return (input_shape[0], self.output_size[0], self.output_size[1], input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": list(self.output_size)})
        return config
