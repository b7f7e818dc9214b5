import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.layers import FusedBatchNormalization

MOMENTUM, EPS = 0.9, 1e-5


def _pair(shape, dtype="float32", seed=0, **kwargs):
    """A Keras BN and a FusedBatchNormalization with the same random weights and moving statistics."""
    rng = np.random.default_rng(seed)
    keras_bn = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS, dtype=dtype, **kwargs)
    fused_bn = FusedBatchNormalization(momentum=MOMENTUM, epsilon=EPS, dtype=dtype, **kwargs)
    for layer in (keras_bn, fused_bn):
        layer.build(shape)
    c = shape[-1]
    weights = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
    for layer in (keras_bn, fused_bn):
        layer.set_weights([w.astype(np.float32) for w in weights])
    return keras_bn, fused_bn


def _torch_reference(x, gamma, beta, running_mean, running_var, momentum_torch):
    """PyTorch BatchNorm2d training step on NHWC numpy data: output, new running mean / var (unbiased)."""
    axes = (0, 1, 2)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean = x.mean(axes)
    var = x.var(axes)
    y = (x - mean) / np.sqrt(var + EPS) * gamma + beta
    new_mean = (1 - momentum_torch) * running_mean + momentum_torch * mean
    new_var = (1 - momentum_torch) * running_var + momentum_torch * var * n / (n - 1)
    return y, new_mean, new_var


@pytest.mark.parametrize("shape", [(2, 9, 11, 5), (1, 3, 4, 7)])
def test_training_step_matches_pytorch_batchnorm(shape):
    x = np.random.default_rng(1).normal(1.0, 3.0, shape).astype(np.float32)
    _, bn = _pair(shape)
    gamma, beta, mean0, var0 = (w.astype(np.float64) for w in bn.get_weights())
    y = bn(tf.constant(x), training=True).numpy()
    ref_y, ref_mean, ref_var = _torch_reference(x.astype(np.float64), gamma, beta, mean0, var0, 1 - MOMENTUM)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), ref_var, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_output_and_gradients_match_keras_batchnorm(dtype):
    shape = (2, 9, 11, 5)
    x = tf.constant(np.random.default_rng(2).normal(1.0, 3.0, shape).astype(np.float32))
    keras_bn, fused_bn = _pair(shape, dtype)
    x = tf.cast(x, keras_bn.compute_dtype)
    var0 = keras_bn.moving_variance.numpy().astype(np.float64)
    # A random upstream gradient: sum(y**2)-like losses have a near-zero gradient w.r.t. x after normalisation.
    upstream = tf.constant(np.random.default_rng(7).normal(size=shape).astype(np.float32))
    results = []
    for layer in (keras_bn, fused_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y] + grads)
        assert y.dtype == layer.compute_dtype
    tol = 1e-5 if dtype == "float32" else 3e-2
    for a, b in zip(*results):
        a, b = tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy()
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())
    # Same moving mean; the moving variance takes the biased batch variance in Keras, the unbiased one here.
    np.testing.assert_allclose(fused_bn.moving_mean.numpy(), keras_bn.moving_mean.numpy(), atol=1e-6)
    n = 2 * 9 * 11
    batch_var = tf.cast(x, tf.float64).numpy().var((0, 1, 2))
    np.testing.assert_allclose(keras_bn.moving_variance.numpy(), MOMENTUM * var0 + (1 - MOMENTUM) * batch_var,
                               rtol=1e-5)
    np.testing.assert_allclose(fused_bn.moving_variance.numpy(),
                               MOMENTUM * var0 + (1 - MOMENTUM) * batch_var * n / (n - 1), rtol=1e-5)


def test_inference_and_fallback_paths_equal_keras():
    # Inference, frozen layers, single-channel maps and synchronized BN all run Keras' own code.
    shape = (2, 5, 6, 3)
    x = tf.constant(np.random.default_rng(3).normal(size=shape).astype(np.float32))
    keras_bn, fused_bn = _pair(shape)
    np.testing.assert_array_equal(fused_bn(x, training=False).numpy(), keras_bn(x, training=False).numpy())
    keras_bn.trainable = fused_bn.trainable = False
    np.testing.assert_array_equal(fused_bn(x, training=True).numpy(), keras_bn(x, training=True).numpy())
    np.testing.assert_array_equal(fused_bn.moving_variance.numpy(), keras_bn.moving_variance.numpy())
    for kwargs, s in (({}, (2, 5, 6, 1)), ({"synchronized": True}, shape)):
        keras_bn, fused_bn = _pair(s, **kwargs)
        xs = tf.constant(np.random.default_rng(4).normal(size=s).astype(np.float32))
        assert not fused_bn._uses_fused_training(xs, True, None)
        np.testing.assert_array_equal(fused_bn(xs, training=True).numpy(), keras_bn(xs, training=True).numpy())
        np.testing.assert_array_equal(fused_bn.moving_variance.numpy(), keras_bn.moving_variance.numpy())


def test_config_round_trip_and_save_reload(tmp_path):
    inputs = keras.Input((6, 7, 4))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.99, epsilon=1e-5, name="bn")(inputs))
    model.get_layer("bn").set_weights([np.full(4, v, np.float32) for v in (1.5, 0.2, 0.1, 2.0)])
    path = tmp_path / "bn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("bn")
    assert isinstance(layer, FusedBatchNormalization)
    assert layer.get_config() == model.get_layer("bn").get_config()
    x = np.random.default_rng(5).normal(size=(1, 6, 7, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), model(x, training=False).numpy())


def test_fit_step_updates_moving_statistics_with_unbiased_variance():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.5, epsilon=EPS, name="bn")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = np.random.default_rng(6).normal(2.0, 1.5, (2, 4, 4, 3)).astype(np.float32)
    model.fit(x, np.zeros_like(x), batch_size=2, epochs=1, verbose=0)
    bn = model.get_layer("bn")
    n = 2 * 4 * 4
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.5 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.5 + 0.5 * x.var((0, 1, 2)) * n / (n - 1), rtol=1e-5)
