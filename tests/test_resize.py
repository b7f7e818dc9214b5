import numpy as np
import pytest
import keras
import tensorflow as tf

from gsto_tf.layers import BilinearResize, resize_bilinear, resize_nearest


def _torch_bilinear_reference(x, out_h, out_w):
    """numpy bilinear, align_corners=False (PyTorch semantics): src = (dst + 0.5) * in/out - 0.5, clamped at 0."""
    n, h, w, c = x.shape

    def coords(out, inp):
        src = (np.arange(out) + 0.5) * (inp / out) - 0.5
        src = np.maximum(src, 0.0)
        lo = np.minimum(np.floor(src).astype(int), inp - 1)
        hi = np.minimum(lo + 1, inp - 1)
        return lo, hi, src - lo

    y0, y1, fy = coords(out_h, h)
    x0, x1, fx = coords(out_w, w)
    top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[None, None, :, None]
    bot = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[None, None, :, None]
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


@pytest.mark.parametrize("src,dst", [((7, 5), (25, 33)), ((25, 33), (97, 131)), ((32, 64), (13, 9))])
def test_bilinear_matches_pytorch_align_corners_false(src, dst):
    x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
    ref = _torch_bilinear_reference(x.astype(np.float64), *dst)
    out = resize_bilinear(tf.constant(x), dst).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("src,dst", [((7, 5), (25, 33)), ((25, 33), (97, 131)), ((32, 64), (13, 9)), ((1, 3), (4, 1)),
                                     ((6, 6), (6, 6))])
def test_float64_bilinear_is_exact_float64(src, dst):
    # tf.image.resize returns float32 for every input dtype; float64 tensors take an exact float64 path.
    x = np.random.default_rng(1).normal(size=(2, *src, 3))
    out = resize_bilinear(tf.constant(x), dst)
    assert out.dtype == tf.float64
    np.testing.assert_allclose(out.numpy(), _torch_bilinear_reference(x, *dst), rtol=1e-14, atol=1e-14)
    # the same result as tf.image.resize, up to its float32 rounding
    via_tf = tf.image.resize(tf.constant(x, tf.float32), dst, method="bilinear").numpy()
    np.testing.assert_allclose(out.numpy(), via_tf, rtol=1e-5, atol=1e-5)
    # an unbatched HWC image
    np.testing.assert_allclose(resize_bilinear(tf.constant(x[0]), dst).numpy(), out.numpy()[0], rtol=0, atol=0)


def test_float64_bilinear_dynamic_size_and_gradient():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float64), tf.TensorSpec([2], tf.int32)])
    def fn(a, size):
        return resize_bilinear(a, size)

    x = np.random.default_rng(2).normal(size=(1, 5, 4, 2))
    for dst in ((9, 7), (3, 2)):
        np.testing.assert_allclose(fn(tf.constant(x), tf.constant(dst)).numpy(), _torch_bilinear_reference(x, *dst),
                                   rtol=1e-14, atol=1e-14)
    # Resizing is linear: the gradient of sum(resize(x) * u) is the transpose map of u, the same as
    # tf.image.resize's (float32) gradient.
    u = np.random.default_rng(3).normal(size=(1, 11, 6, 2))
    grads = []
    for dtype in (tf.float64, tf.float32):
        xt = tf.constant(x, dtype)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(resize_bilinear(xt, (11, 6)) * tf.constant(u, dtype))
        grads.append(tape.gradient(loss, xt).numpy())
    assert grads[0].dtype == np.float64
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-5)


def test_layer_resizes_to_dynamic_reference_and_keeps_dtype():
    layer = BilinearResize(dtype="mixed_bfloat16")
    x = tf.random.normal((1, 5, 7, 4))
    ref = tf.zeros((1, 19, 23, 1))
    out = layer([tf.cast(x, tf.bfloat16), ref])
    assert out.shape == (1, 19, 23, 4)
    assert out.dtype == tf.bfloat16

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([None, None, None, 1])])
    def fn(a, b):
        return BilinearResize()([a, b])

    assert fn(x, ref).shape == (1, 19, 23, 4)


def test_layer_config_round_trip_and_old_configs():
    layer = BilinearResize(name="r")
    clone = BilinearResize.from_config(layer.get_config())
    assert clone.name == "r"
    assert BilinearResize.from_config({"name": "old", "size": None, "scale": None}).name == "old"


def test_layer_errors_are_explicit():
    with pytest.raises(ValueError, match="with \\[x, reference\\]"):
        BilinearResize()(tf.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="no longer exists"):
        BilinearResize.from_config({"name": "old", "size": (2, 2), "scale": None})


def test_nearest_keeps_integer_labels():
    labels = tf.constant(np.random.default_rng(1).integers(0, 19, size=(1, 9, 7, 1)), tf.int32)
    out = resize_nearest(labels, (18, 14))
    assert out.dtype == tf.int32
    assert set(np.unique(out.numpy())) <= set(np.unique(labels.numpy()))


def test_symbolic_model_with_resize_serialises(tmp_path):
    inp = keras.Input((None, None, 3))
    small = keras.layers.AveragePooling2D(2)(inp)
    out = BilinearResize()([small, inp])
    model = keras.Model(inp, out)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    x = np.random.default_rng(2).normal(size=(1, 10, 14, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy())
