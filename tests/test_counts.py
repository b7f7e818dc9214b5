"""Exact parameter and GFLOP counts vs the numbers of the official code (docs/reference.md)."""

import pytest

from gsto_tf.models.counting import OFFICIAL_COUNTS, UNUSED_ATT1_PARAMS, count_named_model


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_counts_equal_official(name):
    c = count_named_model(name, 19, (1024, 2048))
    official = OFFICIAL_COUNTS[name]
    expected_params = official["params"] - (UNUSED_ATT1_PARAMS if name.startswith("gsto_") else 0)
    assert c.params == expected_params
    assert c.paper_params == official["paper_params"]
    assert round(c.paper_gflops, 2) == official["paper_gflops"]


def test_counts_scale_with_input_size():
    small = count_named_model("hrnetv2_w18_small_v1", 19, (512, 1024))
    big = count_named_model("hrnetv2_w18_small_v1", 19, (1024, 2048))
    assert small.params == big.params
    assert abs(big.conv_macs / small.conv_macs - 4.0) < 1e-3
    assert big.full_flops > 2 * big.conv_macs  # 2 FLOPs per multiply-add plus BN, adds, resizes


def test_gated_scale_transfer_is_counted_by_hand():
    import keras

    from gsto_tf.layers import GatedScaleTransfer
    from gsto_tf.models.counting import count_model

    inputs = keras.Input((16, 20, 6), batch_size=1)
    down = GatedScaleTransfer(8, scale="down", gate="unsupervised")(inputs)  # -> 8x10x8
    up = GatedScaleTransfer(4, scale="up", gate=None, gate_style="paper", use_bn=False)(down, reference=inputs)
    c = count_model(keras.Model(inputs, up))
    gate_macs = 6 * 1 * 16 * 20  # conv1x1 6->1 at 16x20
    down_macs = 3 * 3 * 6 * 8 * 8 * 10  # conv3x3 s2 6->8 at 8x10
    up_macs = 8 * 4 * 8 * 10  # the 1x1 transform runs before the upsampling
    assert c.conv_macs == gate_macs + down_macs + up_macs
    # params: gate conv 6 + BN 2, transform 432 + BN 16; second: 32 + bias 4
    assert c.params == 6 + 2 + 432 + 16 + 32 + 4
    assert c.paper_params == 6 + 432 + 32 + 4


def test_unknown_weight_bearing_layer_is_an_error_not_skipped():
    import keras

    from gsto_tf.models.counting import count_model

    class Opaque(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(3,))

        def call(self, x):
            return x * self.w

    inputs = keras.Input((8, 8, 3), batch_size=1)
    with pytest.raises(ValueError, match="no cost rule for weight-bearing layer 'opaque'"):
        count_model(keras.Model(inputs, Opaque(name="opaque")(inputs)))


def test_nested_functional_models_are_walked():
    import keras

    from gsto_tf.models.counting import count_model

    inner_in = keras.Input((16, 20, 3), batch_size=1)
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, strides=2, padding="same")(inner_in))
    inputs = keras.Input((16, 20, 3), batch_size=1)
    c = count_model(keras.Model(inputs, keras.layers.Conv2D(2, 1)(inner(inputs))))
    assert c.conv_macs == 3 * 3 * 3 * 4 * 8 * 10 + 4 * 2 * 8 * 10
    unknown_in = keras.Input((None, None, 3))
    unknown = keras.Model(unknown_in, keras.layers.Conv2D(4, 1)(unknown_in))
    with pytest.raises(ValueError, match="unknown spatial size"):
        count_model(keras.Model(inputs, unknown(inputs)))


def test_full_flops_follow_the_documented_convention():
    import keras

    from gsto_tf.models.counting import count_model

    inputs = keras.Input((8, 10, 3), batch_size=1)
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=True)(inputs)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
    c = count_model(keras.Model(inputs, y))
    macs = 3 * 3 * 3 * 4 * 8 * 10
    elements = 8 * 10 * 4
    assert c.conv_macs == macs
    assert c.full_flops == 2 * macs + elements + 2 * elements + elements  # conv, bias, BN, ReLU
    assert c.params == 3 * 3 * 3 * 4 + 4 + 2 * 4 and c.paper_params == 3 * 3 * 3 * 4 + 4
