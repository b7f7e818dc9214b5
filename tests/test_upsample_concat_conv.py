"""UpsampleConcatConv1x1 equals conv1x1(concat(upsampled inputs)), the form it replaces in the HRNet heads."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.layers import UpsampleConcatConv1x1, resize_bilinear

# Odd, non-multiple sizes: HRNet branches of an odd input are ceil-halved, not exact halves.
SHAPES = [(2, 25, 33, 3), (2, 13, 17, 5), (2, 7, 9, 6), (2, 4, 5, 4)]


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def _concat_form(xs, kernel, bias):
    """The head as written in HRNet: upsample to x0, concatenate, 1x1 conv, bias (float64 numpy + TF resize)."""
    size = xs[0].shape[1:3]
    ups = [xs[0]] + [resize_bilinear(tf.constant(x, tf.float64), size).numpy() for x in xs[1:]]
    cat = np.concatenate([np.asarray(u, np.float64) for u in ups], axis=-1)
    return np.einsum("nhwc,cd->nhwd", cat, kernel[0, 0].astype(np.float64)) + bias


def _layer(filters=7):
    layer = UpsampleConcatConv1x1(filters, bias_initializer="random_normal", name="head.0")
    layer.build([s for s in SHAPES])
    return layer


def test_equals_concat_then_conv_on_odd_sizes():
    xs = _inputs()
    layer = _layer()
    got = layer(xs).numpy()
    ref = _concat_form(xs, layer.kernel.numpy(), layer.bias.numpy())
    assert got.shape == (2, 25, 33, 7)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert layer.kernel.shape == (1, 1, sum(s[-1] for s in SHAPES), 7)  # the official conv's weight shape


def test_gradients_equal_those_of_the_concat_form():
    xs = [tf.constant(x) for x in _inputs(1)]
    layer = _layer()
    upstream = tf.constant(np.random.default_rng(2).normal(size=(2, 25, 33, 7)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xs)
        fast = tf.reduce_sum(layer(xs) * upstream)
        size = tf.shape(xs[0])[1:3]
        cat = tf.concat([xs[0]] + [resize_bilinear(x, size) for x in xs[1:]], axis=-1)
        slow = tf.reduce_sum((tf.nn.conv2d(cat, layer.kernel, 1, "VALID") + layer.bias) * upstream)
    for a, b in zip(tape.gradient(fast, [layer.kernel, layer.bias, *xs]),
                    tape.gradient(slow, [layer.kernel, layer.bias, *xs])):
        assert np.abs(a.numpy() - b.numpy()).max() <= 1e-4 * np.abs(b.numpy()).max()


def test_dynamic_size_model_serialises_and_reloads(tmp_path):
    inputs = [keras.Input((None, None, s[-1])) for s in SHAPES]
    model = keras.Model(inputs, UpsampleConcatConv1x1(5, name="head.0")(inputs))
    xs = _inputs(3)
    before = model.predict(xs, verbose=0)
    layer = model.get_layer("head.0")
    assert UpsampleConcatConv1x1.from_config(layer.get_config()).get_config() == layer.get_config()
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(xs, verbose=0), before)
    # another size through the same graph: the target size is read at run time
    small = [x[:, : max(1, x.shape[1] // 2), : max(1, x.shape[2] // 2)] for x in xs]
    assert reloaded.predict(small, verbose=0).shape == (2, 12, 16, 5)


def test_mixed_bfloat16_computes_in_bfloat16():
    xs = _inputs(4)
    reference = _layer()
    fast = UpsampleConcatConv1x1(7, dtype="mixed_bfloat16", name="head.0")
    fast.build(SHAPES)
    fast.set_weights(reference.get_weights())
    out = fast([tf.constant(x) for x in xs])
    assert out.dtype == tf.bfloat16
    ref = reference(xs).numpy()
    assert np.abs(out.numpy().astype(np.float32) - ref).max() <= 0.05 * np.abs(ref).max()


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        UpsampleConcatConv1x1(4, kernel_size=3)
    with pytest.raises(ValueError, match="strides"):
        UpsampleConcatConv1x1(4, strides=2)
    with pytest.raises(ValueError, match="NHWC"):
        UpsampleConcatConv1x1(4).build([(2, 8, 3), (2, 4, 3)])


def test_counted_like_the_concat_form_it_replaces():
    from gsto_tf.layers import BilinearResize
    from gsto_tf.models.counting import count_model

    inputs = [keras.Input(s[1:]) for s in SHAPES]
    fast = keras.Model(inputs, UpsampleConcatConv1x1(7)(inputs))
    ups = [inputs[0]] + [BilinearResize()([x, inputs[0]]) for x in inputs[1:]]
    slow = keras.Model(inputs, keras.layers.Conv2D(7, 1)(keras.layers.Concatenate()(ups)))
    a, b = count_model(fast), count_model(slow)
    assert (a.params, a.paper_params, a.conv_macs, a.full_flops) == (b.params, b.paper_params, b.conv_macs,
                                                                     b.full_flops)
    assert a.conv_macs == 25 * 33 * (3 + 5 + 6 + 4) * 7
    # What the layer runs: each input's rows of the kernel at that input's own size.
    assert a.executed_macs == 7 * sum(h * w * c for _, h, w, c in SHAPES)
    assert b.executed_macs == b.conv_macs
