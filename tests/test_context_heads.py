"""PPM / ASPP models (baseline, w/ sup, GSTO, GSTO w/ sup): names, outputs, counts, gating, checkpoints, export."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.checkpoints import load_torch_weights
from gsto_tf.models import available_models, build, gate_layer_names, inference_model
from gsto_tf.models.context_models import build_context_model
from gsto_tf.models.outputs import AUX_CLASS_MAP, AUX_FCN, AUX_LOSS_WEIGHTS, AUX_STAGE2, AUX_STAGE3, FINAL_LOGITS
from helpers import run_model_test
from test_resnet import random_state_dict, torch_resnet_keys

K = 5
TINY = {"blocks": (1, 1, 1, 1), "base_channels": 8, "head_channels": 16, "aux_channels": 8}
VARIANTS = ("", "_sup", "_gsto", "_gsto_sup")


def _tiny(name, **kwargs):
    return build(name, K, **{**TINY, **kwargs})


def _images(h=45, w=61, n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, 3)).astype("float32")


def _params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_all_eight_variants_are_registered_for_both_resnets():
    names = set(available_models())
    for head in ("pspnet", "deeplabv3"):
        for variant in VARIANTS:
            for depth in (50, 101):
                assert f"{head}{variant}_resnet{depth}" in names
    assert "pspnet_gsto_hrnetv2_w18_small_v2" in names
    assert "deeplabv3_gsto_sup_gsto_hrnet_w48" in names
    assert all(AUX_LOSS_WEIGHTS[n] > 0 for n in (AUX_FCN, AUX_CLASS_MAP))


@pytest.mark.parametrize("head", ["pspnet", "deeplabv3"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_on_odd_size(head, variant):
    model = _tiny(f"{head}{variant}_resnet50")
    out = model(_images(), training=False)
    expected = {FINAL_LOGITS, AUX_FCN} | ({AUX_CLASS_MAP} if variant.endswith("sup") else set())
    assert set(out) == expected
    for value in out.values():
        # stride 8: 45 -> 23 -> 12 -> 6, 61 -> 31 -> 16 -> 8 (PyTorch arithmetic)
        assert tuple(value.shape) == (2, 6, 8, K) and value.dtype == tf.float32
    assert set(_tiny(f"{head}{variant}_resnet50", aux=False).output) == {FINAL_LOGITS}


def test_gate_placement():
    # PPM: each of the 4 bins gates its pooling input and its upsampling; ASPP: image pooling (2) + 3 atrous.
    psp = _tiny("pspnet_gsto_resnet50")
    names = gate_layer_names(psp)
    assert sorted(names) == sorted(
        [f"decode_head.psp_modules.{k}.{g}" for k in range(4) for g in ("gate", "up_gate")])
    aspp = _tiny("deeplabv3_gsto_sup_resnet50")
    names = gate_layer_names(aspp)
    assert sorted(names) == sorted(["decode_head.image_pool.gate", "decode_head.image_pool.up_gate"]
                                   + [f"decode_head.aspp_modules.{k}.gate" for k in (1, 2, 3)])
    # supervised gates read the K-channel class-score map, unsupervised ones the feature
    assert all(aspp.get_layer(n).gate_layer.conv.kernel.shape[2] == K for n in names)
    assert psp.get_layer("decode_head.psp_modules.0.gate").gate_layer.conv.kernel.shape[2] == 256
    assert psp.get_layer("decode_head.psp_modules.3.up_gate").gate_layer.conv.kernel.shape[2] == 16
    assert not gate_layer_names(_tiny("pspnet_sup_resnet50"))


def test_aspp_rates_follow_output_stride():
    for os_, rates in ((8, (12, 24, 36)), (16, (6, 12, 18))):
        model = _tiny("deeplabv3_resnet50", output_stride=os_)
        got = tuple(model.get_layer(f"decode_head.aspp_modules.{k}.conv").dilation_rate[0] for k in (1, 2, 3))
        assert got == rates
        assert model.get_layer("decode_head.aspp_modules.0.conv").kernel.shape[0] == 1


def _head_params(head, variant, cin, c3, c, k, a):
    """Hand count of head + aux parameters (BN gamma/beta included), 'paper' gates (conv with bias)."""
    bn = 2 * c
    if head == "pspnet":
        n = 4 * (cin * c + bn) + (cin + 4 * c) * c * 9 + bn
        down_gates, up_gates = 4, 4
    else:
        n = 2 * (cin * c + bn) + 3 * (cin * c * 9 + bn) + 5 * c * c + bn
        down_gates, up_gates = 4, 1  # image pool + 3 atrous; image pool up
    n += c * k + k  # classifier
    n += c3 * a * 9 + 2 * a + a * k + k  # FCN aux
    if variant.endswith("sup"):
        n += cin * k + k
    if variant.startswith("_gsto"):
        src_down = k if variant.endswith("sup") else cin
        src_up = k if variant.endswith("sup") else c
        n += down_gates * (src_down + 1) + up_gates * (src_up + 1)
    return n


@pytest.mark.parametrize("head", ["pspnet", "deeplabv3"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_params_by_hand_tiny(head, variant):
    model = _tiny(f"{head}{variant}_resnet50")
    backbone = _params(model.get_layer("backbone"))
    assert _params(model) - backbone == _head_params(head, variant, 256, 128, 16, K, 8)


@pytest.mark.parametrize("head", ["pspnet", "deeplabv3"])
def test_params_full_resnet50_models(head):
    # ResNetV1c-50 trunk: 23,527,264 (test_resnet); PSPNet / DeepLabV3 heads 512 wide, FCN aux 256 wide, 19 classes.
    model = build(f"{head}_gsto_sup_resnet50", 19, input_shape=(33, 33, 3))
    assert _params(model) == 23_527_264 + _head_params(head, "_gsto_sup", 2048, 1024, 512, 19, 256)


def test_gsto_with_open_gates_equals_baseline():
    """Gates multiply and do nothing else: with every gate forced to 1 the GSTO model computes the baseline."""
    for head in ("pspnet", "deeplabv3"):
        for base, gated in (("", "_gsto"), ("_sup", "_gsto_sup")):
            ref = _tiny(f"{head}{base}_resnet50")
            model = _tiny(f"{head}{gated}_resnet50")
            for layer in ref.layers:
                if layer.weights:
                    model.get_layer(layer.name).set_weights(layer.get_weights())
            for name in gate_layer_names(model):
                conv = model.get_layer(name).gate_layer.conv
                conv.kernel.assign(tf.zeros_like(conv.kernel))
                conv.bias.assign(tf.fill(conv.bias.shape, 30.0))  # sigmoid(30) == 1 in float32
            x = _images(seed=3)
            a, b = ref(x, training=False), model(x, training=False)
            for key in a:
                np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-5, atol=1e-5)
            # and a closed gate changes the result
            conv = model.get_layer(gate_layer_names(model)[0]).gate_layer.conv
            conv.bias.assign(tf.fill(conv.bias.shape, -30.0))
            assert not np.allclose(model(x, training=False)[FINAL_LOGITS].numpy(), a[FINAL_LOGITS].numpy())


@pytest.mark.parametrize("name", ["pspnet_gsto_sup_resnet50", "deeplabv3_gsto_resnet50"])
def test_gradient_reaches_every_trainable_weight(name):
    model = _tiny(name)
    x = _images(h=33, w=35)
    rng = np.random.default_rng(1)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(tf.reduce_mean(tf.square(v - rng.normal(size=v.shape).astype("float32"))) for v in out.values())
    grads = tape.gradient(loss, model.trainable_weights)
    dead = [w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.any(g.numpy())]
    assert not dead, f"no gradient for: {dead}"


def test_keras_model_contract(tmp_path):
    """Config round trip, .keras save/reload gives identical outputs, a fit step, mixed_bfloat16 outputs float32."""
    x = _images(h=37, w=43)
    run_model_test(_tiny("pspnet_gsto_sup_resnet50"), x, tmp_path=tmp_path,
                   build_fn=lambda: _tiny("pspnet_gsto_sup_resnet50"))


def test_deeplab_mixed_precision_and_reload(tmp_path):
    x = _images(h=29, w=31, n=1)
    run_model_test(_tiny("deeplabv3_gsto_sup_resnet50"), x, tmp_path=tmp_path, run_fit=False,
                   build_fn=lambda: _tiny("deeplabv3_gsto_sup_resnet50"))


def test_heads_on_hrnet_backbones():
    x = _images(h=37, w=45, n=1)
    model = build("pspnet_gsto_sup_gsto_hrnet_w18_small_v1", K, head_channels=8)
    out = model(x, training=False)
    assert set(out) == {FINAL_LOGITS, AUX_CLASS_MAP, AUX_STAGE3, AUX_STAGE2}
    for value in out.values():
        assert tuple(value.shape) == (1, 10, 12, K) and value.dtype == tf.float32  # ceil(ceil(37/2)/2) = 10
    # GSTO-HRNet's own fusion gates keep the official style (checkpoint compatible); the head's gates are "paper"
    backbone = model.get_layer("backbone")
    assert backbone.get_layer("stage2.0.att_layers.0.1").gate_style == "official"
    assert model.get_layer("decode_head.psp_modules.0.gate").gate_style == "paper"
    model = build("deeplabv3_gsto_hrnetv2_w18_small_v1", K, head_channels=8)
    assert set(model(x, training=False)) == {FINAL_LOGITS}
    # stride-4 head: rates 12/24/36 scaled by 8/4
    assert model.get_layer("decode_head.aspp_modules.3.conv").dilation_rate == (72, 72)
    assert model.get_layer("decode_head.aspp_modules.1.gate").gate_layer.conv.kernel.shape[2] == 16 + 32 + 64 + 128


def mmseg_pspnet_keys(blocks, base, c, a, k):
    """Key layout of an mmseg PSPNet checkpoint (ResNetV1c backbone, PSPHead, FCNHead auxiliary head)."""
    shapes = {f"backbone.{n}": s for n, s in torch_resnet_keys(blocks, "deep", base).items() if not n.startswith("fc.")}

    def conv_module(name, cout, cin, ks):
        shapes[f"{name}.conv.weight"] = (cout, cin, ks, ks)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{suffix}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()

    cin, c3 = base * 32, base * 16
    for b in range(4):
        conv_module(f"decode_head.psp_modules.{b}.1", c, cin, 1)
    conv_module("decode_head.bottleneck", c, cin + 4 * c, 3)
    shapes["decode_head.conv_seg.weight"] = (k, c, 1, 1)
    shapes["decode_head.conv_seg.bias"] = (k,)
    conv_module("auxiliary_head.convs.0", a, c3, 3)
    shapes["auxiliary_head.conv_seg.weight"] = (k, a, 1, 1)
    shapes["auxiliary_head.conv_seg.bias"] = (k,)
    return shapes


def test_mmseg_pspnet_checkpoint_layout_loads_strict_and_into_gsto_variant():
    state = random_state_dict(mmseg_pspnet_keys(TINY["blocks"], 8, 16, 8, K))
    model = _tiny("pspnet_resnet50")
    report = load_torch_weights(model, state, strict=True)
    assert len(report.loaded) == len([k for k in state if not k.endswith("num_batches_tracked")])
    np.testing.assert_array_equal(model.get_layer("decode_head.bottleneck.conv").kernel.numpy(),
                                  state["decode_head.bottleneck.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("backbone").get_layer("stem.3").kernel.numpy(),
                                  state["backbone.stem.3.weight"].transpose(2, 3, 1, 0))
    # The GSTO variant takes the same checkpoint; only its gates are missing (non-strict load reports them).
    gsto = _tiny("pspnet_gsto_resnet50")
    report = load_torch_weights(gsto, state, strict=False)
    assert not report.unexpected and not report.mismatched
    assert report.missing and all(".gate." in k or ".up_gate." in k for k in report.missing)


def test_imagenet_trunk_checkpoint_loads_into_backbone():
    state = random_state_dict(torch_resnet_keys(TINY["blocks"], "deep", 8))
    model = _tiny("deeplabv3_gsto_resnet50")
    report = load_torch_weights(model, state, backbone_only=True, strict=True)
    assert report.ok and sorted(report.ignored) == ["fc.bias", "fc.weight"]
    np.testing.assert_array_equal(model.get_layer("backbone").get_layer("layer4.0.conv3").kernel.numpy(),
                                  state["layer4.0.conv3.weight"].transpose(2, 3, 1, 0))


def test_saved_model_unknown_size_in_separate_process(tmp_path):
    model = inference_model(_tiny("pspnet_gsto_sup_resnet50"))
    export_dir = str(tmp_path / "sm")
    model.export(export_dir, verbose=False)
    sizes = [(45, 61), (50, 37)]
    for h, w in sizes:
        np.save(tmp_path / f"x_{h}x{w}.npy", _images(h=h, w=w, n=1, seed=h))
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        fn = tf.saved_model.load({export_dir!r}).signatures["serving_default"]
        for h, w in {sizes!r}:
            x = np.load({str(tmp_path)!r} + f"/x_{{h}}x{{w}}.npy")
            np.save({str(tmp_path)!r} + f"/y_{{h}}x{{w}}.npy", list(fn(tf.constant(x)).values())[0].numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    for h, w in sizes:
        expected = model(np.load(tmp_path / f"x_{h}x{w}.npy"), training=False).numpy()
        np.testing.assert_allclose(np.load(tmp_path / f"y_{h}x{w}.npy"), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    ({"head": "fcn"}, "head"), ({"variant": "_gated"}, "variant"), ({"gate_style": "x"}, "gate_style"),
    ({"backbone": "vgg16"}, "backbone"), ({"output_stride": 32}, "output_stride"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    args = {"head": "pspnet", "backbone": "resnet50", "num_classes": K, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_context_model(**args, **TINY)


def test_counting_walks_the_nested_backbone_and_the_pooling():
    from gsto_tf.models.counting import count_named_model

    counts = count_named_model("pspnet_gsto_resnet50", K, (64, 64), **TINY)
    model = build("pspnet_gsto_resnet50", K, input_shape=(64, 64, 3), **TINY)
    bn_params = sum(int(np.prod(w.shape)) for layer in model.get_layer("backbone").layers + model.layers
                    if isinstance(layer, keras.layers.BatchNormalization) for w in layer.trainable_weights)
    assert counts.params == _params(model)
    assert counts.paper_params == _params(model) - bn_params
    # the classifier alone: 16 * K multiply-adds at each of the 8 x 8 stride-8 positions
    assert counts.conv_macs > 16 * K * 8 * 8


@pytest.mark.parametrize("kernel", [3, 1])
def test_mmseg_deeplabv3_checkpoint_fixes_the_aspp_bottleneck_kernel(kernel, tmp_path):
    """An mmseg DeepLabV3 checkpoint (ASPPHead: 3x3 bottleneck) loads strictly without aspp_bottleneck_kernel=3."""
    from gsto_tf.checkpoints import load_checkpoint, torch_state_dict
    from torch_zip import write_state_dict

    source = _tiny("deeplabv3_resnet50", aspp_bottleneck_kernel=kernel)
    state = {f"model.{k}": v for k, v in torch_state_dict(source).items()}
    assert state["model.decode_head.bottleneck.conv.weight"].shape[-1] == kernel
    path = write_state_dict(tmp_path / "mmseg_deeplabv3.pth", state)
    model, report = load_checkpoint(path, name="deeplabv3_resnet50", strict=True, **TINY)
    assert report.ok and model.get_layer("decode_head.bottleneck.conv").kernel.shape[0] == kernel
    x = _images(h=29, w=31, n=1)
    np.testing.assert_allclose(model(x, training=False)[FINAL_LOGITS].numpy(),
                               source(x, training=False)[FINAL_LOGITS].numpy(), atol=1e-5)
