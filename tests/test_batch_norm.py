import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.layers import FusedBatchNormalization
from gsto_tf.layers import batch_norm as batch_norm_module

MOMENTUM, EPS = 0.9, 1e-5
REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"


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


def _training_step(layer, x, upstream):
    """A training-mode call: ``[y, dL/dx, dL/dgamma, dL/dbeta]`` for ``L = sum(y * upstream)``. A random upstream
    gradient: sum(y**2)-like losses have a near-zero gradient w.r.t. x after normalisation."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, upstream.dtype) * upstream)
    return [y] + tape.gradient(loss, [x, layer.gamma, layer.beta])


# 16 channels run FusedBatchNormV3 on every CPU; 5 and 7 run it only without oneDNN (composed otherwise).
@pytest.mark.parametrize("shape", [(2, 9, 11, 5), (1, 3, 4, 7), (2, 5, 6, 16)])
def test_training_step_matches_pytorch_batchnorm(shape):
    x = np.random.default_rng(1).normal(1.0, 3.0, shape).astype(np.float32)
    _, bn = _pair(shape)
    gamma, beta, mean0, var0 = (w.astype(np.float64) for w in bn.get_weights())
    y = bn(tf.constant(x), training=True).numpy()
    ref_y, ref_mean, ref_var = _torch_reference(x.astype(np.float64), gamma, beta, mean0, var0, 1 - MOMENTUM)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), ref_var, rtol=1e-5)


@pytest.mark.parametrize("channels", [5, 16, 36])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_output_and_gradients_match_keras_batchnorm(dtype, channels):
    shape = (2, 9, 11, channels)
    x = tf.constant(np.random.default_rng(2).normal(1.0, 3.0, shape).astype(np.float32))
    keras_bn, fused_bn = _pair(shape, dtype)
    x = tf.cast(x, keras_bn.compute_dtype)
    var0 = keras_bn.moving_variance.numpy().astype(np.float64)
    upstream = tf.constant(np.random.default_rng(7).normal(size=shape).astype(np.float32))
    results = [_training_step(layer, x, upstream) for layer in (keras_bn, fused_bn)]
    for layer, (y, *_) in zip((keras_bn, fused_bn), results):
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


@pytest.mark.parametrize("onednn", [False, True])
def test_the_fused_kernel_runs_where_it_is_the_faster_path(monkeypatch, onednn):
    # oneDNN's JIT batch-norm kernels need whole vectors of channels (16 in bfloat16, 4 in float32); TensorFlow's
    # own kernel takes any count above one. One channel is always composed.
    monkeypatch.setattr(batch_norm_module, "onednn_enabled", lambda: onednn)
    bf16, f32 = tf.bfloat16, tf.float32
    expected = {  # channels: (kernel dtype for a float32 map, for a bfloat16 map) with oneDNN
        1: (None, None), 5: (None, None), 18: (None, None), 270: (None, None),
        36: (f32, f32), 72: (f32, f32), 16: (f32, bf16), 64: (f32, bf16), 144: (f32, bf16)}
    for channels, (for_f32, for_bf16) in expected.items():
        for dtype, want in (("float32", for_f32), ("mixed_bfloat16", for_bf16)):
            if not onednn:  # Eigen: the map's own dtype wherever there is more than one channel
                want = None if channels == 1 else tf.as_dtype(dtype.replace("mixed_", ""))
            _, bn = _pair((1, 3, 4, channels), dtype)
            x = tf.zeros((1, 3, 4, channels), bn.compute_dtype)
            assert batch_norm_module.fused_kernel_dtype(channels, x.dtype) == want, (channels, dtype)
            assert bn._uses_fused_training(x, True, None) is (want is not None), (channels, dtype)
    assert batch_norm_module.fused_kernel_dtype(8, tf.float64) is None  # no float64 kernel anywhere


@pytest.mark.parametrize("setting", ["0", "1"])
def test_onednn_enabled_follows_tensorflows_switch(setting):
    code = "from gsto_tf.keras_internals import onednn_enabled; print(onednn_enabled())"
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(setting == "1")


def test_inference_and_frozen_paths_equal_keras():
    # Inference and frozen layers run Keras' own code.
    shape = (2, 5, 6, 3)
    x = tf.constant(np.random.default_rng(3).normal(size=shape).astype(np.float32))
    keras_bn, fused_bn = _pair(shape)
    np.testing.assert_array_equal(fused_bn(x, training=False).numpy(), keras_bn(x, training=False).numpy())
    keras_bn.trainable = fused_bn.trainable = False
    np.testing.assert_array_equal(fused_bn(x, training=True).numpy(), keras_bn(x, training=True).numpy())
    np.testing.assert_array_equal(fused_bn.moving_variance.numpy(), keras_bn.moving_variance.numpy())


@pytest.mark.parametrize("kwargs, shape", [({}, (2, 5, 6, 1)), ({"synchronized": True}, (2, 5, 6, 3)),
                                           ({"synchronized": True}, (3, 4, 5, 1))])
def test_composed_paths_give_keras_outputs_and_the_unbiased_moving_variance(kwargs, shape):
    # Single-channel maps (GSTO's gates) and synchronized BN do not run the fused kernel; they normalise like Keras
    # and update the moving variance like PyTorch (Keras' own BN takes the biased variance there).
    x = tf.constant(np.random.default_rng(4).normal(1.0, 2.0, size=shape).astype(np.float32))
    keras_bn, fused_bn = _pair(shape, **kwargs)
    assert not fused_bn._uses_fused_training(x, True, None)
    gamma, beta, mean0, var0 = (w.astype(np.float64) for w in fused_bn.get_weights())
    upstream = tf.constant(np.random.default_rng(5).normal(size=shape).astype(np.float32))
    results = [_training_step(layer, x, upstream) for layer in (keras_bn, fused_bn)]
    for a, b in zip(*results):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5 * np.abs(a.numpy()).max())
    ref_y, ref_mean, ref_var = _torch_reference(x.numpy().astype(np.float64), gamma, beta, mean0, var0, 1 - MOMENTUM)
    np.testing.assert_allclose(results[1][0].numpy(), ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused_bn.moving_mean.numpy(), ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused_bn.moving_variance.numpy(), ref_var, rtol=1e-6)
    n = np.prod(shape[:3])
    biased = MOMENTUM * var0 + (1 - MOMENTUM) * x.numpy().astype(np.float64).var((0, 1, 2))
    np.testing.assert_allclose(keras_bn.moving_variance.numpy(), biased, rtol=1e-6)
    assert np.all(np.abs(ref_var - biased) > 1e-3 * ref_var / n)  # the two rules are distinguishable here


@pytest.mark.parametrize("axis, shape", [(1, (2, 3, 4, 5)), (-1, (2, 5, 6, 1))])
def test_composed_path_channels_first_and_unknown_sizes(axis, shape):
    # The written-out gradient broadcasts per-channel vectors along `axis`; with unknown spatial sizes (a traced
    # function without static shapes) the value count is computed in the graph instead of in Python.
    x = tf.constant(np.random.default_rng(10).normal(0.5, 2.0, size=shape).astype(np.float32))
    upstream = tf.constant(np.random.default_rng(11).normal(size=shape).astype(np.float32))
    rng = np.random.default_rng(12)
    c = shape[axis]
    weights = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
    keras_bn = keras.layers.BatchNormalization(axis=axis, momentum=MOMENTUM, epsilon=EPS)
    fused_bn = FusedBatchNormalization(axis=axis, momentum=MOMENTUM, epsilon=EPS)
    for layer in (keras_bn, fused_bn):
        layer.build(shape)
        layer.set_weights([w.astype(np.float32) for w in weights])
    assert not fused_bn._uses_fused_training(x, True, None)
    unknown = tf.TensorSpec([None] * len(shape[:-1]) + [shape[-1]], tf.float32)
    traced = tf.function(lambda x: _training_step(fused_bn, x, upstream), input_signature=[unknown])
    expected = _training_step(keras_bn, x, upstream)
    for got in (traced(x), _training_step(fused_bn, x, upstream)):
        for a, b in zip(expected, got):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5 * np.abs(a.numpy()).max())
    # Two training calls, each with the unbiased variance (n values per channel).
    axes = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    n = np.prod([shape[i] for i in axes])
    var = x.numpy().astype(np.float64).var(axes) * n / (n - 1)
    expected_var = MOMENTUM * (MOMENTUM * weights[3] + (1 - MOMENTUM) * var) + (1 - MOMENTUM) * var
    np.testing.assert_allclose(fused_bn.moving_variance.numpy(), expected_var, rtol=1e-5)


def test_float64_training_step_is_exact_float64():
    # FusedBatchNormV3 has no float64 kernel: float64 runs the composed path, in float64 throughout.
    shape = (2, 7, 5, 4)
    x = np.random.default_rng(8).normal(1.0, 3.0, shape)
    _, bn = _pair(shape, dtype="float64")
    assert not bn._uses_fused_training(tf.constant(x), True, None)
    gamma, beta, mean0, var0 = bn.get_weights()
    upstream = np.random.default_rng(9).normal(size=shape)
    y, dx, dgamma, dbeta = _training_step(bn, tf.constant(x), tf.constant(upstream))
    assert y.dtype == tf.float64 and bn.moving_variance.dtype == "float64"
    ref_y, ref_mean, ref_var = _torch_reference(x, gamma, beta, mean0, var0, 1 - MOMENTUM)
    np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.moving_mean.numpy(), ref_mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bn.moving_variance.numpy(), ref_var, rtol=1e-13)
    # Batch-norm backward written out (the gradient PyTorch's BatchNorm2d computes).
    n = np.prod(shape[:3])
    xhat = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + EPS)
    ref_dbeta = upstream.sum((0, 1, 2))
    ref_dgamma = (upstream * xhat).sum((0, 1, 2))
    ref_dx = gamma / np.sqrt(x.var((0, 1, 2)) + EPS) / n * (n * upstream - ref_dbeta - xhat * ref_dgamma)
    for got, ref in ((dx, ref_dx), (dgamma, ref_dgamma), (dbeta, ref_dbeta)):
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11, atol=1e-12 * np.abs(ref).max())


def test_masked_training_step_uses_the_unmasked_values():
    shape = (2, 4, 5, 3)
    x = np.random.default_rng(10).normal(0.5, 2.0, shape).astype(np.float32)
    mask = np.random.default_rng(11).uniform(size=shape[:3]) < 0.6
    _, bn = _pair(shape)
    gamma, beta, mean0, var0 = (w.astype(np.float64) for w in bn.get_weights())
    y = bn(tf.constant(x), training=True, mask=tf.constant(mask)).numpy()
    kept = x.astype(np.float64)[mask]  # [n, C]
    mean, var, n = kept.mean(0), kept.var(0), kept.shape[0]
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + EPS) * gamma + beta, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), MOMENTUM * mean0 + (1 - MOMENTUM) * mean, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), MOMENTUM * var0 + (1 - MOMENTUM) * var * n / (n - 1),
                               rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_synchronized_under_mirrored_strategy_uses_the_global_batch(tmp_path, dtype):
    # Two replicas (2 logical CPUs, in a subprocess) each see half of the global batch; synchronized BN must
    # normalise with, and update the moving statistics from, the moments of the whole batch (unbiased variance).
    out = tmp_path / "sync.npz"
    run = subprocess.run([sys.executable, str(SCRIPTS / "sync_batch_norm.py"), str(out), dtype],
                         env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "replicas 2" in run.stdout
    r = np.load(out)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for c in (3, 1):
        x = r["x"][..., :c].astype(np.float64)
        gamma, beta, mean0, var0 = (r[f"initial_{c}_{i}"].astype(np.float64) for i in range(4))
        ref_y, ref_mean, ref_var = _torch_reference(x, gamma, beta, mean0, var0, 1 - MOMENTUM)
        np.testing.assert_allclose(r[f"out_bn{c}"], ref_y, rtol=tol, atol=tol)
        np.testing.assert_allclose(r[f"after_{c}_2"], ref_mean, rtol=tol, atol=tol)
        np.testing.assert_allclose(r[f"after_{c}_3"], ref_var, rtol=tol)


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
