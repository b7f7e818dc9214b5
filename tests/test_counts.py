"""Exact parameter and GFLOP counts vs the official numbers (SPEC §5)."""

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
