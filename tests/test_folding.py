"""BatchNorm folding (gsto_tf/models/folding.py): exact algebra, the same function on HRNetV2 / GSTO-HRNet, the
official fixtures, bf16 predictions, what must stay unfolded, and export round trips."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.checkpoints import load_torch_weights
from gsto_tf.data import build_eval_dataset, ensure_synthetic
from gsto_tf.export import export_saved_model
from gsto_tf.keras_internals import walk_layers
from gsto_tf.layers import (FusedBatchNormalization, GatedScaleTransfer, SpatialGate, UpsampleConcatConv1x1,
                            resize_bilinear)
from gsto_tf.layers.batch_norm import fold_conv_bn_weights, folded_conv_weights
from gsto_tf.models import build, inference_model
from gsto_tf.models.folding import fold_batch_norm, folded_pairs

PARITY_CASES = {"hrnetv2_w18s1_c19": ("hrnetv2_w18_small_v1", ["logits"]),
                "gsto_hrnet_w18s1_c19": ("gsto_hrnet_w18_small_v1", ["logits", "aux_stage3", "aux_stage2"])}


def randomize_batch_norms(model, seed=0):
    """Non-trivial BN statistics and affine parameters, so that folding changes every folded kernel."""
    rng = np.random.default_rng(seed)
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, n))


def _relative(got, ref):
    return float(np.abs(np.asarray(got) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max())


def _bn_layers(model):
    return [layer for layer in walk_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def test_fold_conv_bn_weights_equals_conv_then_bn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 4)).astype("float32")
    inp = keras.Input((None, None, 4))
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    model = keras.Model(inp, bn(keras.layers.Conv2D(6, 3, padding="same", use_bias=True)(inp)))
    randomize_batch_norms(model)
    conv = model.layers[1]
    conv.bias.assign(rng.normal(size=6))
    kernel, bias = fold_conv_bn_weights(conv.kernel.numpy(), conv.bias.numpy(), bn.gamma.numpy(), bn.beta.numpy(),
                                        bn.moving_mean.numpy(), bn.moving_variance.numpy(), bn.epsilon)
    assert kernel.dtype == np.float32 and bias.shape == (6,)
    got = tf.nn.conv2d(x, kernel, 1, "SAME") + bias
    assert _relative(got, model(x, training=False)) < 1e-6


@pytest.mark.parametrize("name", ["hrnetv2_w18_small_v1", "gsto_hrnet_w18_small_v1"])
def test_folded_hrnet_equals_unfolded_in_float32(name):
    model = build(name, 5)
    randomize_batch_norms(model)
    folded = fold_batch_norm(model)
    x = np.random.default_rng(1).normal(size=(1, 97, 131, 3)).astype("float32")
    ref, got = model(x, training=False), folded(x, training=False)
    assert list(got) == list(ref) and folded.output_names == model.output_names  # same dict, same names
    for key in ref:
        assert got[key].shape == ref[key].shape
        assert _relative(got[key], ref[key]) <= 1e-5, key
    pairs = dict(folded_pairs(model))
    assert pairs["conv1"] == "bn1" and pairs["last_layer.0"] == "last_layer.1"  # UpsampleConcatConv1x1 folds too
    assert isinstance(folded.get_layer("last_layer.0"), UpsampleConcatConv1x1)
    # Every BN is folded: top-level conv -> BN pairs by the graph walk, those inside GatedScaleTransfer (HRNet's
    # fuse paths, GSTO's gated transfers) and SpatialGate (the gates) by their fold_batch_norm() protocol.
    assert not _bn_layers(folded) and _bn_layers(model)


def test_folded_model_is_independent_of_the_original():
    model = build("hrnetv2_w18_small_v1", 3)
    folded = fold_batch_norm(model)
    ids = {id(v) for v in model.weights}
    assert not any(id(v) in ids for v in folded.weights)
    x = np.random.default_rng(0).normal(size=(1, 33, 41, 3)).astype("float32")
    before = folded(x, training=False)["logits"].numpy()
    for v in model.trainable_weights:
        v.assign(v + 1.0)
    np.testing.assert_array_equal(folded(x, training=False)["logits"].numpy(), before)


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_folded_model_still_matches_the_official_fixtures(fixtures_dir, case):
    name, keys = PARITY_CASES[case]
    model = build(name, 19)
    assert load_torch_weights(model, fixtures_dir / f"{case}.pth", strict=True).ok
    folded = fold_batch_norm(model)
    io = np.load(fixtures_dir / f"{case}_io.npz")
    for i in range(2):
        outputs = folded(io[f"input_{i}"].transpose(0, 2, 3, 1), training=False)
        for k, key in enumerate(keys):
            ref = io[f"out_{i}_{k}"].transpose(0, 2, 3, 1)
            rel = np.abs(outputs[key].numpy() - ref).max() / ref.std()
            assert rel <= 1e-4, f"{case} input_{i} {key}: {rel:.2e} x std"


def test_mixed_bfloat16_folded_model_keeps_float32_logits_and_dict():
    model = build("gsto_hrnet_w18_small_v1", 4, dtype="mixed_bfloat16")
    randomize_batch_norms(model)
    folded = fold_batch_norm(model)
    # The folded weights are stored in bfloat16, rounded from the float32 folding as a mixed layer casts them.
    conv = folded.get_layer("conv1")
    assert conv.dtype_policy.name == "bfloat16" and conv.kernel.dtype == "bfloat16"
    kernel, bias = folded_conv_weights(model.get_layer("conv1"), model.get_layer("bn1"))
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(conv.kernel.numpy(), tf.cast(kernel, tf.bfloat16).numpy())
    np.testing.assert_array_equal(conv.bias.numpy(), tf.cast(bias, tf.bfloat16).numpy())
    gsto = next(layer for layer in folded.layers if isinstance(layer, GatedScaleTransfer))
    assert {v.dtype for v in gsto.weights} == {"bfloat16"}  # composite layers too (gates included)
    # The classifier keeps its float32 policy (float32 logits), so its weights stay float32.
    float32_layers = [layer for layer in model.layers if layer.dtype_policy.name == "float32" and layer.weights]
    assert float32_layers
    for layer in float32_layers:
        assert {v.dtype for v in folded.get_layer(layer.name).weights} == {"float32"}
    out = folded(np.zeros((1, 24, 32, 3), "float32"), training=False)
    assert sorted(out) == ["aux_stage2", "aux_stage3", "logits"]
    assert all(v.dtype == tf.float32 for v in out.values())
    infer = inference_model(model)
    assert infer(np.zeros((1, 24, 32, 3), "float32"), training=False).dtype == tf.float32


def _with_policy(config, old, new):
    """``config`` (a nested Keras config) with every dtype policy named ``old`` renamed ``new``."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name") == old:
            return {**config, "config": {**config["config"], "name": new}}
        return {k: _with_policy(v, old, new) for k, v in config.items()}
    if isinstance(config, list):
        return [_with_policy(v, old, new) for v in config]
    return config


def test_folded_bfloat16_weights_give_the_outputs_of_casting_them_at_every_call():
    """Storing the folded weights in bfloat16 changes no output bit against mixed layers that hold the same values
    in float32 and cast them at every call."""
    model = build("gsto_hrnet_w18_small_v1", 4, dtype="mixed_bfloat16")
    randomize_batch_norms(model)
    folded = inference_model(model)
    mixed = keras.Model.from_config(_with_policy(folded.get_config(), "bfloat16", "mixed_bfloat16"))
    mixed.set_weights([np.asarray(w, np.float32) for w in folded.get_weights()])
    assert {v.dtype for v in mixed.weights} == {"float32"}
    x = np.random.default_rng(0).normal(size=(1, 40, 56, 3)).astype("float32")
    got, want = folded(x, training=False), mixed(x, training=False)
    assert got.dtype == want.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_bfloat16_predictions_of_folded_model_on_the_synthetic_val_set(fixtures_dir, tmp_path, case):
    """Folding must not cost bfloat16 predictions anything beyond bfloat16's own rounding.

    The official-format fixture weights are random, so many pixels have near-tied logits that bfloat16 rounding
    flips with or without folding: agreement with float32 is compared with and without folding, and the
    99.9 % bound is asserted on the pixels whose float32 top-2 margin exceeds 5 % of the logits' std.
    """
    name = PARITY_CASES[case][0]
    root = ensure_synthetic(str(tmp_path), height=128, width=256, train=1, val=8)
    images = np.stack([s["image"].numpy() for s in build_eval_dataset("synthetic", root)])
    logits = {}
    for policy in ("float32", "mixed_bfloat16"):
        model = build(name, 19, dtype=policy)
        load_torch_weights(model, fixtures_dir / f"{case}.pth", strict=True)
        for fold in (False, True):
            infer = inference_model(model, fold_batch_norm=fold)
            logits[policy, fold] = np.concatenate([infer(images[i:i + 4], training=False).numpy()
                                                   for i in range(0, len(images), 4)])
    ref = logits["float32", False]
    np.testing.assert_allclose(logits["float32", True], ref, atol=1e-4 * ref.std())
    labels = ref.argmax(-1)
    agreement = {fold: np.mean(logits["mixed_bfloat16", fold].argmax(-1) == labels) for fold in (False, True)}
    # Folding rounds other numbers to bfloat16 (w * s instead of w, then a bias add instead of the BN), so the
    # near-tied pixels it flips are other ones: the two agreements differ by about 0.1 % either way.
    assert agreement[True] >= agreement[False] - 3e-3, agreement
    top2 = np.sort(ref, -1)[..., -2:]
    decisive = (top2[..., 1] - top2[..., 0]) > 0.05 * ref.std()
    assert decisive.mean() > 0.5
    decisive_agreement = np.mean(logits["mixed_bfloat16", True].argmax(-1)[decisive] == labels[decisive])
    assert decisive_agreement >= 0.999, (decisive_agreement, decisive.mean(), agreement)


def _model(body, channels=4):
    inp = keras.Input((None, None, channels))
    return keras.Model(inp, body(inp))


def test_bn_with_two_consumers_or_without_a_conv_is_kept():
    def body(x):
        y = keras.layers.Conv2D(4, 3, padding="same", name="shared_conv")(x)
        a = FusedBatchNormalization(name="bn_a")(y)  # y has two consumers: bn_a and the add
        s = keras.layers.Add(name="add")([a, y])
        b = FusedBatchNormalization(name="bn_after_add")(s)  # no conv before it
        c = keras.layers.Conv2D(4, 1, activation="relu", name="relu_conv")(b)
        c = FusedBatchNormalization(name="bn_after_activation")(c)  # conv with an activation
        d = FusedBatchNormalization(name="bn_of_input")(x)  # the input
        e = keras.layers.Conv2D(4, 1, name="folded_conv")(c)
        e = FusedBatchNormalization(name="bn_folded")(e)
        return keras.layers.Concatenate()([e, d])

    model = _model(body)
    randomize_batch_norms(model)
    folded = fold_batch_norm(model)
    assert folded_pairs(model) == [("folded_conv", "bn_folded")]
    kept = sorted(layer.name for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert kept == ["bn_a", "bn_after_activation", "bn_after_add", "bn_of_input"]
    x = np.random.default_rng(0).normal(size=(2, 7, 9, 4)).astype("float32")
    assert _relative(folded(x, training=False), model(x, training=False)) < 1e-5


def test_depthwise_conv_with_bias_and_bn_without_scale_or_center():
    def body(x):
        y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=True, name="dw")(x)
        y = keras.layers.BatchNormalization(center=False, name="bn_dw")(y)
        y = keras.layers.Conv2D(5, 1, name="pw")(y)
        return keras.layers.BatchNormalization(scale=False, name="bn_pw")(y)

    model = _model(body, channels=3)
    randomize_batch_norms(model)
    model.get_layer("dw").bias.assign(np.random.default_rng(2).normal(size=6))
    folded = fold_batch_norm(model)
    assert folded_pairs(model) == [("dw", "bn_dw"), ("pw", "bn_pw")]
    assert folded.output_names == ["bn_pw"]  # a folded BN that is an output keeps its name
    x = np.random.default_rng(0).normal(size=(1, 8, 10, 3)).astype("float32")
    assert _relative(folded(x, training=False), model(x, training=False)) < 1e-5


def test_nested_functional_model_is_folded_and_composite_layers_may_opt_in():
    inner = _model(lambda x: FusedBatchNormalization(name="ibn")(keras.layers.Conv2D(4, 3, name="iconv")(x)))

    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

        def fold_batch_norm(self):
            return keras.layers.Rescaling(2.0, name="folded_doubler")

    outer = _model(lambda x: Doubler(name="doubler")(inner(x)))
    randomize_batch_norms(outer)
    folded = fold_batch_norm(outer)
    assert "folded_doubler" in [layer.name for layer in folded.layers]
    assert not _bn_layers(folded)
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 4)).astype("float32")
    assert _relative(folded(x, training=False), outer(x, training=False)) < 1e-5


@pytest.mark.parametrize("options", [
    {"filters": 6, "scale": "down", "factor": 4, "down_method": "strided_conv"},
    {"filters": 6, "scale": "up", "factor": 2, "activation": "relu", "gate_style": "paper"},
    {"filters": 6, "gate": "supervised", "num_classes": 3},
    {"filters": None, "scale": "down", "down_method": "avg_pool"},
    {"filters": 6, "gate": None, "use_bn": False},
])
def test_gated_scale_transfer_and_spatial_gate_fold_themselves(options):
    layer = GatedScaleTransfer(**options, name="gst")
    outer = _model(lambda x: layer(x), channels=5)
    randomize_batch_norms(outer)
    folded = layer.fold_batch_norm()
    assert folded is not layer and folded.built and not _bn_layers(folded)
    assert GatedScaleTransfer.from_config(folded.get_config()).gate_batch_norm_folded
    x = np.random.default_rng(0).normal(size=(2, 12, 16, 5)).astype("float32")
    ref = outer(x, training=False)
    ref, got = (tree[0] if isinstance(tree, tuple) else tree for tree in (ref, folded(x, training=False)))
    assert _relative(got, ref) < 1e-5


def test_class_map_gate_folds_itself():
    gate = SpatialGate(kernel_size=3, downsample=2, name="att")
    model = _model(lambda x: gate(x), channels=4)
    randomize_batch_norms(model)
    folded = gate.fold_batch_norm()
    assert folded.batch_norm_folded and not folded.bns and all(conv.use_bias for conv in folded.convs)
    x = np.random.default_rng(0).normal(size=(1, 17, 23, 4)).astype("float32")
    assert _relative(folded(x), model(x, training=False)) < 1e-5


def test_subclassed_model_is_refused():
    class Plain(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="no functional graph"):
        fold_batch_norm(Plain())


def test_folded_toy_model_round_trips_through_saved_model(tmp_path):
    model = _model(lambda x: keras.layers.Conv2D(3, 1, name="logits_conv")(keras.layers.ReLU()(
        FusedBatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)))), channels=3)
    randomize_batch_norms(model)
    x = np.random.default_rng(0).normal(size=(1, 11, 13, 3)).astype("float32")
    expected = tf.nn.softmax(model(x, training=False)).numpy()
    counts = {}
    for fold in (True, False):
        path = export_saved_model(model, tmp_path / f"sm_{fold}", fold_batch_norm=fold)
        out = tf.saved_model.load(path).signatures["serving_normalized"](images=tf.constant(x))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
        counts[fold] = len(tf.train.list_variables(os.path.join(path, "variables", "variables")))
    assert counts[True] < counts[False]  # the BN's four variables are gone


@pytest.mark.slow
def test_folded_gsto_hrnet_round_trips_through_keras_and_saved_model(tmp_path):
    model = build("gsto_hrnet_w18_small_v1", 3)
    randomize_batch_norms(model)
    x = np.random.default_rng(0).normal(size=(1, 37, 53, 3)).astype("float32")
    ref = inference_model(model, fold_batch_norm=False)(x, training=False).numpy()
    folded = fold_batch_norm(model)
    folded.save(tmp_path / "folded.keras")
    reloaded = keras.models.load_model(tmp_path / "folded.keras")
    assert _relative(reloaded(x, training=False)["logits"], ref) <= 1e-5
    loaded = tf.saved_model.load(export_saved_model(model, tmp_path / "sm"))  # folds by default
    probs = loaded.signatures["serving_normalized"](images=tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(probs, tf.nn.softmax(resize_bilinear(ref, (37, 53))).numpy(), atol=1e-4)
