"""Dilated ResNet-50 / 101 backbones for the PPM / ASPP heads, with PyTorch semantics and checkpoint-key names.

Two stems, named like the checkpoints they load:

* ``stem="deep"`` (ResNetV1c, the PSPNet / mmsegmentation variant): three 3x3 convs
  ``stem.0`` (3 -> C/2, stride 2), ``stem.3`` (C/2 -> C/2), ``stem.6`` (C/2 -> C) with BNs ``stem.1/.4/.7``;
* ``stem="basic"`` (torchvision): ``conv1`` (7x7, stride 2) + ``bn1``.

Both are followed by a 3x3 / stride-2 max pool (PyTorch padding 1) and four stages ``layer1..layer4`` of
Bottlenecks (stride on the 3x3 conv, "pytorch" style; 1x1 conv + BN shortcut ``layer{s}.0.downsample.{0,1}``).
The key layout is torchvision's and mmseg's, so ImageNet checkpoints of either load with the generic
:func:`gsto_tf.checkpoints.load_torch_weights` (mmseg segmentation checkpoints add ``backbone.``: the
segmentation models nest this backbone as a sub-model named ``backbone``, which gives exactly that prefix).

Output stride 8 (the PSPNet / DeepLab setting): stages 3 and 4 keep stride 1 and dilate their 3x3 convs by 2 and
4; output stride 16: stage 4 only, by 2. As in torchvision (``replace_stride_with_dilation``) and mmseg
(``contract_dilation=True``), the first block of a dilated stage uses half the stage's dilation (it is where the
stride used to be); ``contract_dilation=False`` dilates every block (the original PSPNet code).

Every strided conv pads explicitly (PyTorch ``padding=k//2``) and runs 'valid', so even and odd input sizes give
PyTorch's output sizes, ``floor((n + 2p - k) / s) + 1``.
"""

import keras

from gsto_tf.models.blocks import BOTTLENECK_EXPANSION, bottleneck_block, conv_bn

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STEMS = ("deep", "basic")
# output stride -> (strides of layer1..4, dilations of layer1..4)
_STRIDE_LAYOUTS = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}
STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")


def _resolve_blocks(depth, blocks):
    if blocks is not None:
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"ResNet: `blocks` must be four positive ints (blocks per stage), got {blocks!r}.")
        return blocks
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet: `depth` must be one of {sorted(RESNET_DEPTHS)} (or pass `blocks`), got {depth!r}.")
    return RESNET_DEPTHS[depth]


def _stem(x, stem, channels, sync_batchnorm):
    if stem == "deep":
        # stem.{0,3,6} convs, stem.{1,4,7} BNs, ReLUs at stem.{2,5,8} (mmseg's nn.Sequential indices).
        x = conv_bn(x, channels // 2, 3, "stem.0", "stem.1", strides=2, sync_batchnorm=sync_batchnorm)
        x = conv_bn(x, channels // 2, 3, "stem.3", "stem.4", sync_batchnorm=sync_batchnorm)
        x = conv_bn(x, channels, 3, "stem.6", "stem.7", sync_batchnorm=sync_batchnorm)
    elif stem == "basic":
        x = conv_bn(x, channels, 7, "conv1", "bn1", strides=2, sync_batchnorm=sync_batchnorm)
    else:
        raise ValueError(f"ResNet: `stem` must be one of {STEMS}, got {stem!r}.")
    # PyTorch MaxPool2d(3, 2, padding=1) pads with -inf; the input is post-ReLU (>= 0) and every window holds a
    # real pixel, so zero padding gives the same maximum.
    x = keras.layers.ZeroPadding2D(1, name="maxpool.pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)


def resnet_features(inputs, depth=50, *, output_stride=8, stem="deep", blocks=None, base_channels=64,
                    contract_dilation=True, sync_batchnorm=False):
    """Build the ResNet trunk on ``inputs``; returns ``{"stage1": ..., "stage4": ...}`` (``layer1..4`` outputs).

    With ``base_channels=64`` stage ``s`` has ``64 * 2**(s-1) * 4`` channels (256, 512, 1024, 2048); output
    strides are 4, 8 and then 8/8 (OS8), 16/16 (OS16) or 16/32 (OS32).
    """
    if output_stride not in _STRIDE_LAYOUTS:
        raise ValueError(
            f"ResNet: `output_stride` must be one of {sorted(_STRIDE_LAYOUTS)}, got {output_stride!r}."
        )
    if int(base_channels) < 2 or int(base_channels) % 2:
        raise ValueError(f"ResNet: `base_channels` must be an even int >= 2, got {base_channels!r}.")
    blocks = _resolve_blocks(depth, blocks)
    strides, dilations = _STRIDE_LAYOUTS[output_stride]
    x = _stem(inputs, stem, base_channels, sync_batchnorm)
    in_channels = base_channels
    features = {}
    for s in range(4):
        planes = base_channels * 2**s
        for k in range(blocks[s]):
            dilation = dilations[s]
            if k == 0 and contract_dilation and dilation > 1:
                dilation //= 2
            downsample = k == 0 and (strides[s] != 1 or in_channels != planes * BOTTLENECK_EXPANSION)
            x = bottleneck_block(
                x,
                planes,
                f"layer{s + 1}.{k}",
                strides=strides[s] if k == 0 else 1,
                dilation=dilation,
                downsample=downsample,
                sync_batchnorm=sync_batchnorm,
                expansion=BOTTLENECK_EXPANSION,
            )
            in_channels = planes * BOTTLENECK_EXPANSION
        features[STAGE_NAMES[s]] = x
    return features


def build_resnet_backbone(depth=50, *, output_stride=8, stem="deep", blocks=None, base_channels=64,
                          contract_dilation=True, sync_batchnorm=False, input_shape=(None, None, 3), name=None):
    """Dilated ResNet trunk as a Keras model with outputs ``{"stage1", "stage2", "stage3", "stage4"}``.

    Its layer names are the checkpoint keys of torchvision (``stem="basic"``) or mmseg ResNetV1c
    (``stem="deep"``) ImageNet models; load them with
    ``load_torch_weights(backbone, path, backbone_only=True)`` (the classifier ``fc.*`` keys are then ignored).
    """
    inputs = keras.Input(input_shape, name="image")
    features = resnet_features(
        inputs, depth, output_stride=output_stride, stem=stem, blocks=blocks, base_channels=base_channels,
        contract_dilation=contract_dilation, sync_batchnorm=sync_batchnorm,
    )
    return keras.Model(inputs, features, name=name or f"resnet{depth if blocks is None else ''}_backbone")


__all__ = ["RESNET_DEPTHS", "STAGE_NAMES", "STEMS", "build_resnet_backbone", "resnet_features"]
