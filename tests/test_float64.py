"""float64 end to end: ``build(..., dtype="float64")`` gives models whose every tensor is float64 (no float32 cast in
BN, resize, heads, pooling or the loss); the dtype option leaves the global Keras settings as they were."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.data import get_dataset_spec
from gsto_tf.models import build
from gsto_tf.training.config import ExperimentConfig
from gsto_tf.training.losses import SegmentationLoss
from gsto_tf.training.trainer import compile_model

LOW_PRECISION = (tf.float32, tf.bfloat16, tf.float16)


# GSTO-HRNet: fused-path-sized BNs, 1-channel gate BNs, head resizes, the 1x1 upsample-concat conv, three outputs.
# PSPNet + GSTO w/ sup on HRNetV2: adaptive pooling, GatedScaleTransfer with class-score gates, the FCN aux head.
@pytest.mark.parametrize("name", ["gsto_hrnet_w18_small_v1", "pspnet_gsto_sup_hrnetv2_w18_small_v1"])
def test_float64_model_has_no_lower_precision_tensor(name, float64_floatx):
    keras.config.set_floatx("float32")
    model = build(name, 5, dtype="float64")
    # the option is scoped to the build
    assert keras.config.floatx() == "float32" and keras.config.dtype_policy().name == "float32"
    keras.config.set_floatx("float64")
    assert {v.dtype for v in model.weights} == {"float64"}
    assert model.input.dtype == "float64" and {t.dtype for t in model.output.values()} == {"float64"}
    loss = SegmentationLoss(5)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float64),
                                  tf.TensorSpec([None, None, None], tf.int32)])
    def training_loss(x, y):
        return tf.add_n([loss(y, v) for v in model(x, training=True).values()])

    graph = training_loss.get_concrete_function().graph
    low = sorted({op.type for op in graph.get_operations() for t in op.outputs if t.dtype in LOW_PRECISION})
    assert not low, f"{name}: ops with float32 / bfloat16 / float16 outputs in the float64 training forward: {low}"
    value = training_loss(tf.constant(np.random.default_rng(0).normal(size=(1, 33, 47, 3))),
                          tf.constant(np.random.default_rng(1).integers(0, 5, (1, 33, 47)), tf.int32))
    assert value.dtype == tf.float64 and np.isfinite(value.numpy())


def test_dtype_option_mixed_precision_and_errors():
    model = build("hrnetv2_w18_small_v1", 3, dtype="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.output["logits"].dtype == "float32"  # logits stay float32 under mixed precision
    for bad in ("int32", "nonsense"):
        with pytest.raises(ValueError, match="`dtype` must be a floating Keras dtype policy"):
            build("hrnetv2_w18_small_v1", 3, dtype=bad)
    assert keras.config.dtype_policy().name == "float32" and keras.config.floatx() == "float32"


def test_compile_refuses_float64_model_under_float32_floatx():
    model = build("hrnetv2_w18_small_v1", 3, dtype="float64")
    with pytest.raises(ValueError, match=r"float64 weights but keras.config.floatx\(\) is 'float32'"):
        compile_model(model, ExperimentConfig(), get_dataset_spec("synthetic"), total_steps=10)


@pytest.mark.parametrize("kwargs", [{}, {"class_weights": [0.5, 1.0, 2.0]}, {"ohem": True, "ohem_min_kept": 40}])
def test_float64_loss_matches_numpy(kwargs, float64_floatx):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (2, 9, 11, 3))
    labels = rng.integers(0, 3, (2, 9, 11))
    labels[0, :2] = 255
    value = SegmentationLoss(3, **kwargs)(labels, logits)
    assert value.dtype == tf.float64
    z = logits.reshape(-1, 3)
    y = labels.reshape(-1)
    valid = y != 255
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(y.size), np.where(valid, y, 0)]
    w = valid * (np.asarray(kwargs["class_weights"])[np.where(valid, y, 0)] if "class_weights" in kwargs else 1.0)
    if kwargs.get("ohem"):
        prob = np.exp(-ce)
        threshold = max(np.sort(prob[valid])[min(40, valid.sum() - 1)], 0.9)
        kept = valid & (prob < threshold)
        ref = (ce * kept).sum() / kept.sum()
    else:
        ref = (w * ce).sum() / w.sum()
    assert float(value) == pytest.approx(ref, rel=1e-13)


def test_loading_keeps_the_stored_precision(tmp_path):
    from gsto_tf.checkpoints import load_torch_weights, torch_state_dict

    source = build("hrnetv2_w18_small_v1", 3, input_shape=(32, 32, 3), dtype="float64")
    rng = np.random.default_rng(0)
    for w in source.weights:  # values that float32 cannot hold exactly
        w.assign(rng.normal(size=w.shape) + 1e-9)
    state = torch_state_dict(source)
    assert all(v.dtype == np.float64 for v in state.values())
    np.savez(tmp_path / "f64.npz", **state)
    target = build("hrnetv2_w18_small_v1", 3, input_shape=(32, 32, 3), dtype="float64")
    load_torch_weights(target, str(tmp_path / "f64.npz"), strict=True)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)  # float64 in, float64 out, exactly
    # float32 into a float32 model: the same numbers as before
    single = build("hrnetv2_w18_small_v1", 3, input_shape=(32, 32, 3))
    load_torch_weights(single, {k: v.astype(np.float32) for k, v in state.items()}, strict=True)
    for a, b in zip(source.weights, single.weights):
        np.testing.assert_array_equal(a.numpy().astype(np.float32), b.numpy(), err_msg=a.path)
