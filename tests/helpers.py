"""Shared test helpers in the keras-hub manner: one call checks a layer or model end to end.

``run_layer_test`` checks: get_config/from_config round trip, a symbolic call with unknown H/W, an eager call with
the expected output shape, one fit step of a small model wrapping the layer (gradients reach the layer's trainable
weights), a mixed_bfloat16 call, and a .keras save/reload that reproduces the outputs exactly.
``run_model_test`` does the same for whole functional models.
"""

import keras
import numpy as np


def _first(out):
    if isinstance(out, dict):
        return out["logits"] if "logits" in out else next(iter(out.values()))
    if isinstance(out, (list, tuple)):
        return out[0]
    return out


def run_layer_test(layer_cls, init_kwargs, input_data, expected_output_shape, call_kwargs=None, tmp_path=None,
                   run_mixed_precision=True, run_fit=True):
    call_kwargs = call_kwargs or {}
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config, "get_config() does not round-trip"

    # symbolic call with unknown spatial size
    sym_in = keras.Input((None, None, input_data.shape[-1]))
    sym_out = _first(layer_cls(**init_kwargs)(sym_in, **call_kwargs))
    assert sym_out.shape[-1] == expected_output_shape[-1]

    # eager call
    out = layer(input_data, **call_kwargs)
    first = _first(out)
    assert tuple(first.shape) == tuple(expected_output_shape), (first.shape, expected_output_shape)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(first)))

    # fit step: every trainable weight of the layer receives a gradient and changes
    if run_fit:
        inp = keras.Input(input_data.shape[1:])
        fit_layer = layer_cls(**init_kwargs)
        model = keras.Model(inp, _first(fit_layer(inp, **call_kwargs)))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [w.numpy().copy() for w in fit_layer.trainable_weights]
        target = np.random.default_rng(0).normal(size=tuple(first.shape)).astype("float32")
        model.fit(input_data, target, epochs=1, batch_size=input_data.shape[0], verbose=0)
        after = [w.numpy() for w in fit_layer.trainable_weights]
        unchanged = [w.path for w, b, a in zip(fit_layer.trainable_weights, before, after) if np.array_equal(b, a)]
        assert not unchanged, f"weights not updated by a fit step: {unchanged}"

    # mixed precision
    if run_mixed_precision:
        mp_layer = layer_cls(**{**init_kwargs, "dtype": "mixed_bfloat16"})
        mp_out = _first(mp_layer(input_data, **call_kwargs))
        assert tuple(mp_out.shape) == tuple(expected_output_shape)
        assert "bfloat16" in str(mp_out.dtype), mp_out.dtype

    # save / reload inside a model
    if tmp_path is not None:
        inp = keras.Input((None, None, input_data.shape[-1]))
        model = keras.Model(inp, _first(layer(inp, **call_kwargs)))
        path = str(tmp_path / f"{layer_cls.__name__}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(reloaded(input_data)), keras.ops.convert_to_numpy(model(input_data)),
            rtol=0, atol=0,
        )
    return layer


def run_model_test(model, input_data, tmp_path=None, run_fit=True, build_fn=None):
    """Serialisation round trip, eager == reloaded outputs, one fit step on every output.

    ``build_fn``: a zero-argument callable building the same model; when given, it is also built under
    ``mixed_bfloat16`` and must compute in bfloat16 while every output stays float32 (logits contract).
    """
    outputs = model(input_data, training=False)
    flat = outputs if isinstance(outputs, dict) else {"output": outputs}
    for name, value in flat.items():
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(value))), f"non-finite values in output {name}"
    config = model.get_config()
    clone = model.__class__.from_config(config)
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    if tmp_path is not None:
        path = str(tmp_path / "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        again = reloaded(input_data, training=False)
        again = again if isinstance(again, dict) else {"output": again}
        for name in flat:
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(again[name]), keras.ops.convert_to_numpy(flat[name]), rtol=0, atol=0
            )
    if run_fit:
        targets = {k: np.zeros(tuple(v.shape), "float32") for k, v in flat.items()}
        if not isinstance(outputs, dict):
            targets = targets["output"]
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        history = model.fit(input_data, targets, epochs=1, batch_size=input_data.shape[0], verbose=0)
        assert np.isfinite(history.history["loss"][0])
    if build_fn is not None:
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            mp_model = build_fn()
            mp_out = mp_model(input_data, training=False)
        finally:
            keras.config.set_dtype_policy(previous)
        mp_flat = mp_out if isinstance(mp_out, dict) else {"output": mp_out}
        assert set(mp_flat) == set(flat)
        for name, value in mp_flat.items():
            assert "float32" in str(value.dtype), f"output {name} is {value.dtype} under mixed_bfloat16"
            assert tuple(value.shape) == tuple(flat[name].shape)
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(value)))
        assert any(layer.compute_dtype == "bfloat16" for layer in mp_model.layers if layer.weights), (
            "no layer computes in bfloat16 under mixed_bfloat16"
        )
    return outputs


def pointwise_model(k=4, seed=0):
    """A 1x1-conv segmentation model with a ``logits`` output: position independent and mirror symmetric."""
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(k, 1, kernel_initializer=keras.initializers.RandomNormal(seed=seed))
    return keras.Model(inp, {"logits": conv(inp)})


def file_size_limit(limit):
    """A ``preexec_fn`` for ``subprocess``: the child cannot write files beyond ``limit`` bytes. Writes past it fail
    with EFBIG (Python ignores SIGXFSZ), as they fail with ENOSPC on a full disk."""
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
