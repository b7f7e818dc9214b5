"""Dilated ResNet backbone: parameter counts, PyTorch padding / sizes, dilation layout, checkpoint key layouts."""

import keras
import numpy as np
import pytest

from gsto_tf.checkpoints import CheckpointError, load_torch_weights
from gsto_tf.models.resnet import build_resnet_backbone

TINY = {"blocks": (1, 2, 2, 2), "base_channels": 8}


def _torch_out(n, k, s, p, d=1):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_torchvision_resnet50_trunk_params():
    # torchvision resnet50: 25,557,032 parameters, of which fc = 2048*1000 + 1000 = 2,049,000.
    model = build_resnet_backbone(50, stem="basic")
    assert _params(model) == 25_557_032 - 2_049_000 == 23_508_032


def test_deep_stem_resnet50_params_by_hand():
    # v1c replaces conv1 7x7 (3*64*49) + bn1 (2*64) by 3x3 convs 3->32->32->64 with three BNs.
    basic_stem = 3 * 64 * 49 + 2 * 64
    deep_stem = 3 * 32 * 9 + 2 * 32 + 32 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64
    model = build_resnet_backbone(50, stem="deep")
    assert _params(model) == 23_508_032 - basic_stem + deep_stem == 23_527_264


def test_tiny_config_params_by_hand():
    c = 8
    total = 3 * (c // 2) * 9 + c + (c // 2) ** 2 * 9 + c + (c // 2) * c * 9 + 2 * c  # deep stem
    cin = c
    for s, n in enumerate(TINY["blocks"]):
        planes, cout = c * 2**s, c * 2**s * 4
        for k in range(n):
            total += cin * planes + 2 * planes + planes * planes * 9 + 2 * planes + planes * cout + 2 * cout
            if k == 0:
                total += cin * cout + 2 * cout
            cin = cout
    assert _params(build_resnet_backbone(blocks=TINY["blocks"], base_channels=c)) == total


@pytest.mark.parametrize("output_stride,stem", [(8, "deep"), (16, "basic")])
@pytest.mark.parametrize("h,w", [(45, 61), (64, 50)])
def test_feature_sizes_follow_pytorch_arithmetic(output_stride, stem, h, w):
    model = build_resnet_backbone(output_stride=output_stride, stem=stem, **TINY)
    out = model(np.zeros((1, h, w, 3), "float32"))

    def trunk(n):
        n = _torch_out(n, 3, 2, 1) if stem == "deep" else _torch_out(n, 7, 2, 3)
        n4 = _torch_out(n, 3, 2, 1)  # max pool
        n8 = _torch_out(n4, 3, 2, 1)
        n16 = n8 if output_stride == 8 else _torch_out(n8, 3, 2, 1)
        return n4, n8, n16, n16

    expected = list(zip(trunk(h), trunk(w)))
    for k, channels in enumerate((32, 64, 128, 256)):
        assert tuple(out[f"stage{k + 1}"].shape) == (1, *expected[k], channels)


def test_dilation_layout_contracted_and_full():
    model = build_resnet_backbone(output_stride=8, **TINY)
    dil = {n: model.get_layer(f"{n}.conv2").dilation_rate[0] for n in ("layer3.0", "layer3.1", "layer4.0")}
    assert dil == {"layer3.0": 1, "layer3.1": 2, "layer4.0": 2}
    assert all(model.get_layer(f"layer{s}.0.conv2").strides == (1, 1) for s in (3, 4))
    model = build_resnet_backbone(output_stride=8, contract_dilation=False, **TINY)
    assert model.get_layer("layer3.0.conv2").dilation_rate == (2, 2)
    assert model.get_layer("layer4.0.conv2").dilation_rate == (4, 4)
    model = build_resnet_backbone(output_stride=16, **TINY)
    assert model.get_layer("layer3.0.conv2").strides == (2, 2)
    assert model.get_layer("layer4.1.conv2").dilation_rate == (2, 2)


def _numpy_conv(x, kernel, stride, pad):
    """Direct PyTorch-style convolution (symmetric zero padding), NHWC x, HWIO kernel."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    oh = (x.shape[1] - k) // stride + 1
    ow = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


def test_strided_stem_conv_and_maxpool_match_pytorch_padding_on_even_size():
    model = build_resnet_backbone(**TINY)
    probe = keras.Model(model.input, [model.get_layer("stem.0").output, model.get_layer("stem.7.relu").output,
                                      model.get_layer("maxpool").output])
    x = np.random.default_rng(0).normal(size=(1, 10, 12, 3)).astype("float32")
    conv, relu, pooled = (t.numpy() for t in probe(x))
    np.testing.assert_allclose(conv, _numpy_conv(x, model.get_layer("stem.0").kernel.numpy(), 2, 1), atol=1e-5)
    # MaxPool2d(3, 2, padding=1) pads with -inf.
    padded = np.pad(relu, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    oh, ow = _torch_out(relu.shape[1], 3, 2, 1), _torch_out(relu.shape[2], 3, 2, 1)
    expected = np.array([[[padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1)) for j in range(ow)]
                          for i in range(oh)]])
    np.testing.assert_array_equal(pooled, expected)


def torch_resnet_keys(blocks, stem, base=64, fc_classes=10):
    """State-dict keys and shapes of torchvision ResNet (stem='basic') / mmseg ResNetV1c (stem='deep'),
    written out from those libraries' module layouts (not from our model)."""
    shapes = {}

    def conv(name, cout, cin, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)

    def bn(name, c):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{suffix}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    if stem == "basic":
        conv("conv1", base, 3, 7)
        bn("bn1", base)
    else:
        conv("stem.0", base // 2, 3, 3)
        bn("stem.1", base // 2)
        conv("stem.3", base // 2, base // 2, 3)
        bn("stem.4", base // 2)
        conv("stem.6", base, base // 2, 3)
        bn("stem.7", base)
    cin = base
    for s, n in enumerate(blocks):
        planes = base * 2**s
        for k in range(n):
            p = f"layer{s + 1}.{k}"
            conv(f"{p}.conv1", planes, cin, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if k == 0:
                conv(f"{p}.downsample.0", planes * 4, cin, 1)
                bn(f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    shapes["fc.weight"] = (fc_classes, cin)
    shapes["fc.bias"] = (fc_classes,)
    return shapes


def random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (np.array(7, np.int64) if not s else rng.uniform(0.5, 1.5, s).astype("float32"))
            for k, s in shapes.items()}


@pytest.mark.parametrize("stem", ["basic", "deep"])
def test_imagenet_checkpoint_layout_round_trip(stem):
    model = build_resnet_backbone(stem=stem, **TINY)
    state = random_state_dict(torch_resnet_keys(TINY["blocks"], stem, TINY["base_channels"]))
    report = load_torch_weights(model, state, strict=True, backbone_only=True)
    weights = [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert sorted(report.loaded) == sorted(weights)
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    conv_name = "conv1" if stem == "basic" else "stem.0"
    np.testing.assert_array_equal(model.get_layer(conv_name).kernel.numpy(),
                                  state[f"{conv_name}.weight"].transpose(2, 3, 1, 0))
    bn = model.get_layer("layer2.0.downsample.1")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(bn.gamma.numpy(), state["layer2.0.downsample.1.weight"])


def test_wrong_stem_layout_fails_strict_load_and_assigns_nothing():
    model = build_resnet_backbone(stem="deep", **TINY)
    before = model.get_layer("layer1.0.conv1").kernel.numpy().copy()
    state = random_state_dict(torch_resnet_keys(TINY["blocks"], "basic", TINY["base_channels"]))
    with pytest.raises(CheckpointError, match="stem.0.weight"):
        load_torch_weights(model, state, strict=True)
    np.testing.assert_array_equal(model.get_layer("layer1.0.conv1").kernel.numpy(), before)


@pytest.mark.parametrize("kwargs,match", [({"depth": 34}, "depth"), ({"output_stride": 4}, "output_stride"),
                                          ({"stem": "v1d"}, "stem"), ({"blocks": (1, 1)}, "blocks")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_resnet_backbone(**kwargs)
