"""AdaptiveAveragePooling2D against a numpy transcription of PyTorch's adaptive_avg_pool2d bin rule."""

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.layers.adaptive_pooling import AdaptiveAveragePooling2D, adaptive_average_pool2d
from helpers import run_layer_test


def _torch_bins(length, n):
    """PyTorch's adaptive pooling bins: [floor(i*L/n), ceil((i+1)*L/n))."""
    return [(math.floor(i * length / n), math.ceil((i + 1) * length / n)) for i in range(n)]


def numpy_adaptive_avg_pool(x, out_h, out_w):
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c), np.float64)
    for i, (h0, h1) in enumerate(_torch_bins(h, out_h)):
        for j, (w0, w1) in enumerate(_torch_bins(w, out_w)):
            out[:, i, j] = x[:, h0:h1, w0:w1].astype(np.float64).mean(axis=(1, 2))
    return out


def test_bin_edges_overlap_like_pytorch():
    # 45 -> 6: the known PyTorch bins, overlapping where 6 does not divide 45.
    assert _torch_bins(45, 6) == [(0, 8), (7, 15), (15, 23), (22, 30), (30, 38), (37, 45)]


@pytest.mark.parametrize("h,w", [(45, 45), (97, 61), (7, 5), (2, 3)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6, (3, 6)])
def test_matches_numpy_reference(h, w, bins):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, 4)).astype("float32") * 3 + 1
    out_h, out_w = (bins, bins) if isinstance(bins, int) else bins
    got = AdaptiveAveragePooling2D(bins)(x).numpy()
    assert got.shape == (2, out_h, out_w, 4)
    np.testing.assert_allclose(got, numpy_adaptive_avg_pool(x, out_h, out_w), rtol=1e-5, atol=1e-5)


def test_gradient_is_the_bin_membership_over_bin_size():
    h, w, n = 45, 31, 6
    x = tf.constant(np.random.default_rng(0).normal(size=(1, h, w, 2)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = adaptive_average_pool2d(x, n)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x).numpy()[0, :, :, 0]
    expected = np.zeros((h, w))
    for h0, h1 in _torch_bins(h, n):
        for w0, w1 in _torch_bins(w, n):
            expected[h0:h1, w0:w1] += 1.0 / ((h1 - h0) * (w1 - w0))
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_unknown_size_in_tf_function():
    layer = AdaptiveAveragePooling2D((3, 6))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def pool(x):
        return layer(x)

    concrete = pool.get_concrete_function()
    assert concrete.structured_outputs.shape.as_list() == [None, 3, 6, 3]
    for h, w in [(45, 45), (97, 61), (6, 6)]:
        x = np.random.default_rng(h).uniform(size=(1, h, w, 3)).astype("float32")
        np.testing.assert_allclose(concrete(tf.constant(x)).numpy(), numpy_adaptive_avg_pool(x, 3, 6),
                                   rtol=1e-5, atol=1e-6)


def test_saved_model_with_unknown_size_in_separate_process(tmp_path):
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, AdaptiveAveragePooling2D(6)(inputs))
    export_dir = str(tmp_path / "pool_sm")
    model.export(export_dir, verbose=False)
    sizes = [(45, 45), (97, 61)]
    arrays = {}
    for h, w in sizes:
        x = np.random.default_rng(h + w).normal(size=(1, h, w, 2)).astype("float32")
        np.save(tmp_path / f"x_{h}x{w}.npy", x)
        arrays[(h, w)] = x
    # A TensorFlow-only process: no gsto_tf import, the graph must carry the dynamic bin computation.
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        fn = tf.saved_model.load({export_dir!r}).signatures["serving_default"]
        for h, w in {sizes!r}:
            x = np.load({str(tmp_path)!r} + f"/x_{{h}}x{{w}}.npy")
            out = list(fn(tf.constant(x)).values())[0].numpy()
            np.save({str(tmp_path)!r} + f"/y_{{h}}x{{w}}.npy", out)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    for (h, w), x in arrays.items():
        y = np.load(tmp_path / f"y_{h}x{w}.npy")
        np.testing.assert_allclose(y, numpy_adaptive_avg_pool(x, 6, 6), rtol=1e-5, atol=1e-6)


def test_keras_layer_contract(tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 13, 9, 3)).astype("float32")
    run_layer_test(AdaptiveAveragePooling2D, {"output_size": (2, 3)}, x, (2, 2, 3, 3), tmp_path=tmp_path,
                   run_fit=False)


def test_bfloat16_input_keeps_dtype_and_accuracy():
    x = np.random.default_rng(2).uniform(size=(1, 45, 45, 2)).astype("float32")
    got = AdaptiveAveragePooling2D(6, dtype="mixed_bfloat16")(x)
    assert got.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), numpy_adaptive_avg_pool(x, 6, 6), atol=1e-2)


@pytest.mark.parametrize("bad", [0, (2,), (2, 0), (2.5, 2), "six", None])
def test_bad_output_size_is_rejected_with_the_argument_name(bad):
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAveragePooling2D(bad)
