import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.layers import GatedScaleTransfer, SpatialGate
from helpers import run_layer_test

X = np.random.default_rng(0).normal(size=(2, 13, 17, 6)).astype("float32")


@pytest.mark.parametrize("style", ["official", "paper"])
def test_spatial_gate_layer(style, tmp_path):
    run_layer_test(SpatialGate, {"style": style}, X, (2, 13, 17, 1), tmp_path=tmp_path)


def test_spatial_gate_values_match_formulas():
    official = SpatialGate("official")
    paper = SpatialGate("paper")
    g_off = official(X).numpy()
    g_pap = paper(X).numpy()
    # numpy references: official = sigmoid(relu(BN(conv))), paper = sigmoid(conv + b)
    w = official.conv.kernel.numpy()[0, 0]
    bn = official.bn
    z = X @ w
    z = (z - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-5) * bn.gamma.numpy() + bn.beta.numpy()
    np.testing.assert_allclose(g_off, 1 / (1 + np.exp(-np.maximum(z, 0))), atol=1e-6)
    zp = X @ paper.conv.kernel.numpy()[0, 0] + paper.conv.bias.numpy()
    np.testing.assert_allclose(g_pap, 1 / (1 + np.exp(-zp)), atol=1e-6)
    assert g_off.min() >= 0.5 and g_off.max() < 1.0  # ReLU before sigmoid: [0.5, 1)
    assert g_pap.min() > 0.0 and g_pap.max() < 1.0 and g_pap.min() < 0.5


def test_spatial_gate_rejects_unknown_style():
    with pytest.raises(ValueError, match="style"):
        SpatialGate("softmax")


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({"filters": 8, "scale": "same"}, (2, 13, 17, 8)),
        ({"filters": 8, "scale": "down", "factor": 2}, (2, 7, 9, 8)),  # torch: floor((13+2-3)/2)+1 = 7
        ({"filters": 8, "scale": "down", "factor": 2, "down_method": "avg_pool"}, (2, 6, 8, 8)),
        ({"filters": 8, "scale": "down", "factor": 3, "down_method": "max_pool"}, (2, 4, 5, 8)),
        ({"filters": 8, "scale": "up", "factor": 2}, (2, 26, 34, 8)),
        ({"filters": 8, "scale": "same", "gate": None, "activation": "relu"}, (2, 13, 17, 8)),
        ({"filters": 8, "scale": "same", "gate_style": "paper", "use_bn": False}, (2, 13, 17, 8)),
        ({"filters": 8, "scale": "down", "gate": "supervised", "num_classes": 5}, (2, 7, 9, 8)),
    ],
)
def test_gated_scale_transfer_layer(kwargs, shape, tmp_path):
    run_layer_test(GatedScaleTransfer, kwargs, X, shape, tmp_path=tmp_path)


def test_gated_scale_transfer_matches_numpy_reference():
    layer = GatedScaleTransfer(4, scale="up", factor=2, gate="unsupervised", gate_style="paper", use_bn=False)
    out, gate = layer(X, return_gate=True)
    g = 1 / (1 + np.exp(-(X @ layer.gate_layer.conv.kernel.numpy()[0, 0] + layer.gate_layer.conv.bias.numpy())))
    np.testing.assert_allclose(gate.numpy(), g, atol=1e-6)
    y = (X * g) @ layer.transform.kernel.numpy()[0, 0] + layer.transform.bias.numpy()
    from gsto_tf.layers import resize_bilinear

    np.testing.assert_allclose(out.numpy(), resize_bilinear(tf.constant(y, tf.float32), (26, 34)).numpy(), atol=1e-5)


def test_supervised_gate_returns_class_scores_or_uses_given_ones():
    layer = GatedScaleTransfer(8, scale="same", gate="supervised", num_classes=5)
    out, scores = layer(X)
    assert out.shape == (2, 13, 17, 8) and scores.shape == (2, 13, 17, 5)
    given = np.random.default_rng(1).normal(size=(2, 7, 9, 3)).astype("float32")  # other size: resized inside
    ext = GatedScaleTransfer(8, scale="same", gate="supervised")
    out2, gate2 = ext(X, class_scores=given, return_gate=True)
    assert out2.shape == (2, 13, 17, 8) and gate2.shape == (2, 13, 17, 1)
    with pytest.raises(ValueError, match="class_scores"):
        GatedScaleTransfer(8, gate="supervised")(X)


def test_up_to_reference_with_unknown_sizes():
    layer = GatedScaleTransfer(4, scale="up")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 6]), tf.TensorSpec([None, None, None, 1])])
    def fn(x, ref):
        return layer(x, reference=ref)

    assert fn(X, tf.zeros((2, 29, 31, 1))).shape == (2, 29, 31, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"filters": 4, "scale": "sideways"}, "scale"),
        ({"filters": 4, "scale": "down", "factor": 1}, "factor"),
        ({"filters": 4, "gate": "both"}, "gate"),
        ({"filters": 4, "gate_style": "x"}, "gate_style"),
        ({"filters": 0}, "filters"),
        ({"filters": 4, "down_method": "stride"}, "down_method"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedScaleTransfer(**kwargs)


def test_compute_gate_equals_the_applied_gate():
    layer = GatedScaleTransfer(8, scale="down", gate="supervised", num_classes=5)
    out, scores, gate = layer(X, return_gate=True)
    np.testing.assert_allclose(layer.compute_gate(X).numpy(), gate.numpy(), atol=0)
    assert gate.shape == (2, 13, 17, 1) and scores.shape == (2, 13, 17, 5)
    assert GatedScaleTransfer(8, gate=None).compute_gate(X) is None
