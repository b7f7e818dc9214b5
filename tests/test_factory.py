"""The model factory: names, options, errors, registration, inference models."""

import keras
import numpy as np
import pytest

from gsto_tf.models import available_models, build, inference_model, register_model
from gsto_tf.models import factory

HRNET_NAMES = [f"{family}_{spec}" for family in ("hrnetv2", "gsto_hrnet")
               for spec in ("w18_small_v1", "w18_small_v2", "w18", "w32", "w48")]


def test_every_hrnet_name_is_registered():
    names = available_models()
    assert set(HRNET_NAMES) <= set(names)
    assert names == sorted(names)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'gsto_hrnet_w64'; valid names: .*gsto_hrnet_w48"):
        build("gsto_hrnet_w64", 19)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"num_classes": 0}, "num_classes"), ({"num_classes": 3, "gate_style": "softmax"}, "gate_style")],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build("gsto_hrnet_w18_small_v1", **kwargs)


def test_options_reach_the_builder():
    model = build("gsto_hrnet_w18_small_v1", 3, input_shape=(64, 96, 3), aux=False)
    assert model.name == "gsto_hrnet_w18_small_v1"
    assert tuple(model.input.shape) == (None, 64, 96, 3)
    assert list(model.output) == ["logits"]
    assert tuple(model.output["logits"].shape) == (None, 16, 24, 3)
    assert all(layer.synchronized for layer in build("hrnetv2_w18_small_v1", 3, sync_batchnorm=True).layers
               if isinstance(layer, keras.layers.BatchNormalization))


def test_register_model_adds_a_name_and_refuses_a_second_builder():
    def tiny(num_classes, input_shape=(None, None, 3), **options):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, {"logits": keras.layers.Conv2D(num_classes, 1)(inputs)})

    try:
        register_model("test_tiny_segmenter")(tiny)
        assert "test_tiny_segmenter" in available_models()
        assert build("test_tiny_segmenter", 4).output["logits"].shape[-1] == 4
        register_model("test_tiny_segmenter")(tiny)  # the same function again is harmless
        with pytest.raises(ValueError, match="registered twice"):
            register_model("test_tiny_segmenter")(lambda num_classes: None)
    finally:
        factory._REGISTRY.pop("test_tiny_segmenter", None)


def test_inference_model_returns_the_final_logits_only():
    model = build("gsto_hrnet_w18_small_v1", 3)
    x = np.random.default_rng(0).normal(size=(1, 37, 53, 3)).astype("float32")
    logits = model(x, training=False)["logits"].numpy()
    single = inference_model(model, fold_batch_norm=False)(x, training=False)
    np.testing.assert_array_equal(single.numpy(), logits)  # a view of the same layers
    assert single.shape == (1, 10, 14, 3)
    folded = inference_model(model)(x, training=False)  # default: BatchNorm folded, same function up to rounding
    np.testing.assert_allclose(folded.numpy(), logits, rtol=1e-4, atol=1e-5 * np.abs(logits).max())


def test_inference_model_is_idempotent():
    from gsto_tf.models import build, inference_model

    infer = inference_model(build("hrnetv2_w18_small_v1", 3), fold_batch_norm=False)
    assert inference_model(infer, fold_batch_norm=False) is infer and infer.output.shape[-1] == 3


@pytest.mark.parametrize("old", ["sync", "synchronized", "sync_bn"])
def test_other_names_of_the_sync_batchnorm_flag_are_refused_naming_ours(old):
    with pytest.raises(ValueError, match=f"is `sync_batchnorm` \\(got `{old}`\\)"):
        build("hrnetv2_w18_small_v1", 3, **{old: True})
