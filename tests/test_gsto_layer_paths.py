"""GatedScaleTransfer as the models use it: HRNet's strided down chain, the identity transform, class-map gates,
checkpoint keys of sublayers, argument checks, and gate maps of nested models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.layers import GatedScaleTransfer, SpatialGate
from helpers import run_layer_test

X = np.random.default_rng(0).normal(size=(2, 13, 17, 6)).astype("float32")


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({"filters": 8, "scale": "down", "factor": 4, "down_method": "strided_conv"}, (2, 4, 5, 8)),  # 13->7->4
        ({"filters": 8, "scale": "down", "factor": 2, "down_method": "strided_conv", "gate": None}, (2, 7, 9, 8)),
        ({"filters": None, "scale": "same"}, (2, 13, 17, 6)),
        ({"filters": None, "scale": "down", "factor": 2, "down_method": "avg_pool"}, (2, 6, 8, 6)),
    ],
)
def test_new_paths_are_keras_layers(kwargs, shape, tmp_path):
    run_layer_test(GatedScaleTransfer, {**kwargs, "gate_key": "g", "transform_key": "t"}, X, shape,
                   tmp_path=tmp_path)


def _bn(x, bn):
    return (x - bn.moving_mean) / tf.sqrt(bn.moving_variance + bn.epsilon) * bn.gamma + bn.beta


def _conv_s2(x, conv):
    return tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), conv.kernel, 2, "VALID")


def test_strided_conv_is_hrnets_down_path():
    """gate -> [pad 1, conv3x3 s2 (input width), BN, ReLU] -> [pad 1, conv3x3 s2, BN], no ReLU after the last."""
    layer = GatedScaleTransfer(8, scale="down", factor=4, down_method="strided_conv", gate_style="paper")
    out, gate = layer(X, return_gate=True)
    (_, c0, b0), (_, c1, b1) = layer.steps
    assert c0.kernel.shape == (3, 3, 6, 6) and c1.kernel.shape == (3, 3, 6, 8)
    for bn in (b0, b1):  # non-trivial statistics, so BN is really checked
        bn.moving_mean.assign(tf.random.normal(bn.moving_mean.shape))
        bn.moving_variance.assign(tf.random.uniform(bn.moving_variance.shape, 0.5, 2.0))
    out, gate = layer(X, return_gate=True)
    y = tf.nn.relu(_bn(_conv_s2(X * gate, c0), b0))
    y = _bn(_conv_s2(y, c1), b1)
    np.testing.assert_allclose(out.numpy(), y.numpy(), atol=1e-5)
    assert np.any(y.numpy() < 0)  # no ReLU after the last step


def test_identity_transform_only_gates():
    layer = GatedScaleTransfer(None, gate_style="paper")
    out, gate = layer(X, return_gate=True)
    np.testing.assert_allclose(out.numpy(), (X * gate).numpy(), atol=1e-6)
    assert not layer.steps and layer.transform is None


def test_class_map_gate_brings_class_scores_to_the_input_scale():
    scores = np.random.default_rng(1).normal(size=(2, 13, 17, 5)).astype("float32")
    gate = SpatialGate("official", kernel_size=3, downsample=2)
    assert gate(scores).shape == (2, 4, 5, 1) and gate.compute_output_shape((2, 13, 17, 5)) == (2, 4, 5, 1)
    assert [layer.name for layer in gate.convs] == ["0.0", "1.0", "2.0"]
    assert [layer.name for layer in gate.bns] == ["0.1", "1.1", "2.1"]
    x = np.random.default_rng(2).normal(size=(2, 4, 5, 6)).astype("float32")
    layer = GatedScaleTransfer(7, scale="down", activation="relu", gate="supervised", gate_kernel_size=3,
                               gate_downsample=2)
    out, g = layer(x, class_scores=scores, return_gate=True)
    assert out.shape == (2, 2, 3, 7) and g.shape == (2, 4, 5, 1)
    np.testing.assert_allclose(g.numpy(), layer.gate_layer(scores).numpy(), atol=1e-6)
    np.testing.assert_allclose(layer.compute_gate(x, class_scores=scores).numpy(), g.numpy(), atol=0)


def test_checkpoint_sublayers_name_the_official_keys():
    fuse = GatedScaleTransfer(8, scale="down", factor=4, down_method="strided_conv",
                              gate_key="stage3.0.att_layers.2.0", transform_key="stage3.0.fuse_layers.2.0")
    fuse(X)
    assert {k: v.name for k, v in fuse.checkpoint_sublayers().items()} == {
        "stage3.0.att_layers.2.0": "gate",
        "stage3.0.fuse_layers.2.0.0.0": "transform.0", "stage3.0.fuse_layers.2.0.0.1": "bn.0",
        "stage3.0.fuse_layers.2.0.1.0": "transform.1", "stage3.0.fuse_layers.2.0.1.1": "bn.1",
    }
    up = GatedScaleTransfer(4, scale="up", gate=None, name="u")
    assert sorted(up.checkpoint_sublayers()) == ["u.transform.0", "u.transform.1"]


def test_hrnet_checkpoint_keys_come_from_the_layers():
    from gsto_tf.checkpoints import model_torch_keys
    from gsto_tf.models import build

    keys = model_torch_keys(build("gsto_hrnet_w18_small_v1", 3))
    for key in ("stage3.0.att_layers.2.0.0.weight", "stage3.0.att_layers.2.0.1.running_var",
                "stage3.0.fuse_layers.2.0.1.0.weight", "stage3.0.fuse_layers.0.2.1.bias",
                "att3.3.2.0.weight", "att3.3.0.1.weight", "transition3.3.0.0.weight", "transition3.3.0.1.bias"):
        assert key in keys, key
    assert not any(k.startswith("stage3.0.fuse_layers.1.1") for k in keys)  # i == j has no fuse op


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"filters": None, "scale": "down", "down_method": "conv"}, "needs `filters`"),
        ({"filters": 4, "scale": "down", "factor": 6, "down_method": "strided_conv"}, "power of 2"),
        ({"filters": None, "activation": "relu"}, "filters=None has none"),
        ({"filters": 4, "gate_kernel_size": 3}, "need gate='supervised'"),
        ({"filters": 2.5}, "filters"),
    ],
)
def test_new_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedScaleTransfer(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"style": "paper", "kernel_size": 3}, "official style"), ({"kernel_size": 1, "downsample": 1}, "kernel_size=3"),
     ({"kernel_size": 5}, "1 or 3"), ({"kernel_size": 3, "downsample": -1}, "int >= 0")],
)
def test_spatial_gate_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpatialGate(**kwargs)


def test_gate_model_reaches_gates_of_a_nested_backbone():
    from gsto_tf.models import build, gate_layer_names, gate_model

    model = build("pspnet_gsto_gsto_hrnet_w18_small_v1", 3, head_channels=8)
    names = gate_layer_names(model)
    assert "stage2.0.att_layers.0.1" in names and "att3.3" in names and "decode_head.psp_modules.0.gate" in names
    gates = gate_model(model)(np.random.default_rng(0).normal(size=(1, 33, 41, 3)).astype("float32"))
    assert set(gates) == set(names)
    assert gates["att3.3"].shape == (1, 3, 3, 1) and gates["decode_head.psp_modules.3.up_gate"].shape == (1, 6, 6, 1)
    assert keras.ops.all(gates["stage2.0.att_layers.0.1"] >= 0.5)  # the backbone keeps the official style
