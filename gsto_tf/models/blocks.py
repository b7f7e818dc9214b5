"""Functional building blocks shared by the models, with PyTorch semantics and checkpoint-key layer names.

Layer naming convention (project-wide): every weight-bearing layer is named exactly like the PyTorch module path
of its checkpoint key (``layer1.0.conv1``, ``stage2.0.fuse_layers.1.0.0.1``), so one generic loader
(:mod:`gsto_tf.checkpoints`) maps any official state dict onto our models. Weightless helper layers get
the name of the conv they belong to plus a suffix (``.pad``, ``.relu``).
"""

import keras

from gsto_tf.layers.batch_norm import TORCH_BN_EPSILON, TORCH_BN_MOMENTUM, FusedBatchNormalization

BOTTLENECK_EXPANSION = 4  # ResNet / HRNet Bottleneck: output width = planes * 4


def conv2d(x, filters, kernel_size, name, strides=1, dilation=1, use_bias=False, dtype=None):
    """Conv2D with PyTorch padding (``padding=dilation*(k//2)`` on every side).

    For stride 1 this equals Keras 'same'; for stride 2 it does not on even sizes (Keras pads bottom/right only),
    so strided convs pad explicitly and run 'valid' (docs/reference.md). Odd sizes follow floor((n + 2p - k) / s) + 1.
    """
    pad = dilation * (kernel_size // 2)
    if strides > 1 and pad > 0:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}.pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        use_bias=use_bias,
        dtype=dtype,
        name=name,
    )(x)


def batch_norm(x, name, sync_batchnorm=False):
    return FusedBatchNormalization(
        momentum=TORCH_BN_MOMENTUM, epsilon=TORCH_BN_EPSILON, synchronized=sync_batchnorm, name=name
    )(x)


def relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def conv_bn(x, filters, kernel_size, conv_name, bn_name, strides=1, dilation=1, sync_batchnorm=False, act=True):
    x = conv2d(x, filters, kernel_size, conv_name, strides=strides, dilation=dilation)
    x = batch_norm(x, bn_name, sync_batchnorm)
    return relu(x, f"{bn_name}.relu") if act else x


def basic_block(x, filters, name, strides=1, downsample=False, sync_batchnorm=False):
    """ResNet BasicBlock (expansion 1): conv3x3-BN-ReLU-conv3x3-BN (+ shortcut), ReLU."""
    shortcut = x
    y = conv_bn(x, filters, 3, f"{name}.conv1", f"{name}.bn1", strides=strides, sync_batchnorm=sync_batchnorm)
    y = conv_bn(y, filters, 3, f"{name}.conv2", f"{name}.bn2", sync_batchnorm=sync_batchnorm, act=False)
    if downsample:
        shortcut = conv2d(x, filters, 1, f"{name}.downsample.0", strides=strides)
        shortcut = batch_norm(shortcut, f"{name}.downsample.1", sync_batchnorm)
    y = keras.layers.Add(name=f"{name}.add")([y, shortcut])
    return relu(y, f"{name}.relu")


def bottleneck_block(x, planes, name, strides=1, dilation=1, downsample=False, sync_batchnorm=False,
                     expansion=BOTTLENECK_EXPANSION):
    """ResNet Bottleneck: conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1(x expansion)-BN (+ shortcut), ReLU."""
    shortcut = x
    y = conv_bn(x, planes, 1, f"{name}.conv1", f"{name}.bn1", sync_batchnorm=sync_batchnorm)
    y = conv_bn(y, planes, 3, f"{name}.conv2", f"{name}.bn2", strides=strides, dilation=dilation,
                sync_batchnorm=sync_batchnorm)
    y = conv_bn(y, planes * expansion, 1, f"{name}.conv3", f"{name}.bn3", sync_batchnorm=sync_batchnorm, act=False)
    if downsample:
        shortcut = conv2d(x, planes * expansion, 1, f"{name}.downsample.0", strides=strides)
        shortcut = batch_norm(shortcut, f"{name}.downsample.1", sync_batchnorm)
    y = keras.layers.Add(name=f"{name}.add")([y, shortcut])
    return relu(y, f"{name}.relu")
