import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.models import build, build_hrnet_backbone, gate_model, inference_model
from gsto_tf.models.hrnet import GSTO_PARTS
from helpers import run_model_test


def _x(h, w, n=1, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, 3)).astype("float32")


@pytest.mark.parametrize("name", ["hrnetv2_w18_small_v1", "gsto_hrnet_w18_small_v1"])
@pytest.mark.parametrize("size", [(97, 131), (33, 45), (64, 64)])
def test_output_shapes_on_odd_sizes(name, size):
    model = build(name, 7)
    out = model(_x(*size), training=False)
    h, w = size
    expected = (1, -(-(-(-h // 2)) // 2), -(-(-(-w // 2)) // 2), 7)  # ceil(ceil(n/2)/2)
    for value in out.values():
        assert tuple(value.shape) == expected
    assert set(out) == ({"logits", "aux_stage3", "aux_stage2"} if name.startswith("gsto") else {"logits"})


def test_model_round_trip_and_fit(tmp_path):
    run_model_test(build("gsto_hrnet_w18_small_v1", 4), _x(32, 48, n=2), tmp_path=tmp_path,
                   build_fn=lambda: build("gsto_hrnet_w18_small_v1", 4))


def test_aux_flag_and_inference_model():
    model = build("gsto_hrnet_w18_small_v1", 3, aux=False)
    assert list(model.output) == ["logits"]
    infer = inference_model(build("gsto_hrnet_w18_small_v1", 3))
    assert infer(_x(40, 40)).shape == (1, 10, 10, 3)


def test_gradients_reach_every_trainable_weight():
    model = build("gsto_hrnet_w18_small_v1", 3)
    x = _x(64, 64, n=2)  # big enough that the 1/16 class-map gate sees more than a few BN samples
    # With every BN beta at its initial 0, a BN -> ReLU -> conv -> training-mode BN chain is invariant to the first
    # gamma (ReLU is positively homogeneous, the second BN removes the scale), so its gradient is ~0 by algebra.
    # Trained models have non-zero betas; give them some so that the test checks connectivity, not that symmetry.
    rng = np.random.default_rng(0)
    for w in model.weights:
        if w.path.endswith("beta"):
            w.assign(rng.normal(0.0, 0.5, w.shape).astype("float32"))
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(tf.reduce_mean(tf.square(v)) for v in out.values())
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.any(g.numpy())]
    assert not missing, missing


def test_gate_values_official_and_paper_ranges():
    x = _x(48, 64)
    for style, lo, hi in (("official", 0.5, 1.0), ("paper", 0.0, 1.0)):
        model = build("gsto_hrnet_w18_small_v1", 3, gate_style=style)
        gates = gate_model(model)(x)
        assert len(gates) == 4 + 9 + 16 + 2  # fusion gates of stages 2-4 (1 module each) + att2, att3
        fusion = np.concatenate([g.numpy().ravel() for n, g in gates.items() if "att_layers" in n])
        assert fusion.min() >= lo and fusion.max() < hi
        if style == "paper":
            assert fusion.min() < 0.5  # the paper gate can close below one half
    with pytest.raises(ValueError, match="no GSTO gates"):
        gate_model(build("hrnetv2_w18_small_v1", 3))


def test_mixed_precision_keeps_float32_logits():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = build("gsto_hrnet_w18_small_v1", 3)
    out = model(_x(32, 32))
    assert all(v.dtype == tf.float32 for v in out.values())
    assert model.get_layer("conv1").compute_dtype == "bfloat16"


def test_backbone_exposes_four_strides():
    backbone = build_hrnet_backbone("w18_small_v1")
    feats = backbone(_x(64, 96))
    assert {k: tuple(v.shape[1:3]) for k, v in feats.items()} == {
        "stride4": (16, 24), "stride8": (8, 12), "stride16": (4, 6), "stride32": (2, 3)}
    gsto = build_hrnet_backbone("w18_small_v1", gsto=True, num_classes=3)
    assert {"aux_stage2", "aux_stage3"} <= set(gsto.output)


def test_sync_batchnorm_option():
    model = build("hrnetv2_w18_small_v1", 3, sync_batchnorm=True)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.synchronized for l in bns)


def test_gate_model_reaches_gates_inside_gated_scale_transfer_layers():
    from gsto_tf.layers import GatedScaleTransfer

    inputs = keras.Input((None, None, 6))
    scores = keras.layers.Conv2D(3, 1, name="scores")(inputs)
    a = GatedScaleTransfer(4, scale="down", name="gst_unsup")(inputs)
    b = GatedScaleTransfer(4, scale="down", gate="supervised", name="gst_sup")(inputs, class_scores=scores)
    plain = GatedScaleTransfer(4, scale="down", gate=None, name="gst_plain")(inputs)
    model = keras.Model(inputs, {"logits": keras.layers.Add()([a, b, plain])})
    x = np.random.default_rng(0).normal(size=(1, 9, 11, 6)).astype("float32")
    gates = gate_model(model)(x)
    assert set(gates) == {"gst_unsup", "gst_sup"}
    _, expected = model.get_layer("gst_sup")(x, class_scores=model.get_layer("scores")(x), return_gate=True)
    np.testing.assert_allclose(gates["gst_sup"].numpy(), expected.numpy(), atol=1e-6)
    assert gates["gst_unsup"].shape == (1, 9, 11, 1)


def _param_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_gsto_parts_ablations_build_exactly_their_parts():
    full = build("gsto_hrnet_w18_small_v1", 5)
    hrnet = build("hrnetv2_w18_small_v1", 5)
    fusion = build("gsto_hrnet_w18_small_v1", 5, gsto_parts=["fusion_gates"])
    aux = build("gsto_hrnet_w18_small_v1", 5, gsto_parts=["aux_heads"])
    transition = build("gsto_hrnet_w18_small_v1", 5, gsto_parts=["aux_heads", "transition_gates"])

    def names(model, key):
        return [layer.name for layer in model.layers if key in layer.name]

    assert sorted(fusion.output) == ["logits"] and names(fusion, "att_layers") and not names(fusion, "att2.")
    assert sorted(aux.output) == ["aux_stage2", "aux_stage3", "logits"]
    assert not names(aux, "att_layers") and not names(aux, "att2.") and names(aux, "last_layer_stage2")
    assert names(transition, "att3.3") and not names(transition, "att_layers")
    # The parts are disjoint and together make the published model.
    extra = [_param_count(m) - _param_count(hrnet) for m in (fusion, transition)]
    assert min(extra) > 0 and sum(extra) == _param_count(full) - _param_count(hrnet)
    assert _param_count(build("gsto_hrnet_w18_small_v1", 5, gsto_parts=list(GSTO_PARTS))) == _param_count(full)
    x = tf.random.normal((1, 33, 47, 3))
    assert transition(x)["aux_stage2"].shape == (1, 9, 12, 5)


def test_gsto_parts_errors():
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['gates'\]; valid parts"):
        build("gsto_hrnet_w18_small_v1", 5, gsto_parts=["gates"])
    with pytest.raises(ValueError, match="'transition_gates' needs 'aux_heads'"):
        build("gsto_hrnet_w18_small_v1", 5, gsto_parts=["transition_gates"])
    with pytest.raises(ValueError, match="only meaningful for GSTO-HRNet"):
        build("hrnetv2_w18_small_v1", 5, gsto_parts=["fusion_gates"])
