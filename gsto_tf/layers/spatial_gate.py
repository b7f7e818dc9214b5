"""Spatial gate of GSTO: a one-channel map in (0, 1) that is multiplied into a feature before a scale transfer.

Two sources (paper, eqs. 4-6; docs/reference.md):
* ``gate="unsupervised"``: computed from the feature itself, ``g = sigmoid(conv1x1_{C->1}(F))``;
* ``gate="supervised"``: computed from a class-score map ``P`` that is supervised by the ground truth,
  ``g = sigmoid(conv1x1_{K->1}(P))``.

Two styles:
* ``"paper"``: ``sigmoid(conv1x1 with bias)``, the formula of the paper;
* ``"official"``: ``sigmoid(ReLU(BN(conv1x1 without bias)))``, what the released GSTO-HRNet code does
  (official ``models/gsto_hrnet.py``; docs/reference.md).
  The ReLU before the sigmoid means the gate lives in [0.5, 1): it can only attenuate by up to half. This style is
  the one that loads official checkpoints and reproduces the published numbers.

The official class-map gates of GSTO-HRNet's transitions (``att{s}.{s}``) are the same primitive with a 3x3 kernel
and ``downsample`` extra steps: ``conv3x3(K->1)-BN-ReLU``, then ``downsample`` x ``conv3x3(1->1, stride 2)-BN-ReLU``
(PyTorch padding 1), then the sigmoid: the gate ends at ``1 / 2**downsample`` of the class-score map's size.

Sublayer names follow the official checkpoint keys: ``"0"`` (conv) and ``"1"`` (BN) for the 1x1 gate
(``...att_layers.{i}.{j}.{0,1}``); ``"{n}.0"`` / ``"{n}.1"`` for step ``n`` of a 3x3 gate (``att{s}.{s}.{n}.{0,1}``).
"""

import keras

from gsto_tf.layers.batch_norm import (
    TORCH_BN_EPSILON,
    TORCH_BN_MOMENTUM,
    FusedBatchNormalization,
    folded_conv_weights,
)

GATE_STYLES = ("official", "paper")


@keras.saving.register_keras_serializable(package="gsto_tf")
class SpatialGate(keras.layers.Layer):
    """Maps a feature or class-score map ``[N, H, W, C]`` to a gate ``[N, H, W, 1]`` in (0, 1).

    Args:
        style: ``"official"`` (sigmoid(ReLU(BN(conv1x1, no bias)))) or ``"paper"`` (sigmoid(conv1x1 + bias)).
        sync_batchnorm: use synchronized BatchNormalization (multi-replica training).
        kernel_size: 1 (default; the fusion gates) or 3 (the class-map gates, official style only).
        downsample: number of extra ``conv3x3 stride 2 - BN - ReLU`` steps (``kernel_size=3`` only); the gate is
            ``2**downsample`` times smaller than its input (PyTorch arithmetic ``floor((n - 1) / 2) + 1`` per step).
        batch_norm_folded: official style for inference only: every BN folded into its conv (conv with bias,
            no BN layer); made by :meth:`fold_batch_norm`.
    """

    def __init__(self, style="official", sync_batchnorm=False, kernel_size=1, downsample=0, batch_norm_folded=False,
                 **kwargs):
        super().__init__(**kwargs)
        if style not in GATE_STYLES:
            raise ValueError(f"SpatialGate: `style` must be one of {GATE_STYLES}, got {style!r}.")
        if kernel_size not in (1, 3):
            raise ValueError(f"SpatialGate: `kernel_size` must be 1 or 3, got {kernel_size!r}.")
        if int(downsample) != downsample or downsample < 0:
            raise ValueError(f"SpatialGate: `downsample` must be an int >= 0, got {downsample!r}.")
        if kernel_size == 1 and downsample:
            raise ValueError("SpatialGate: `downsample` steps are 3x3 convs; they need kernel_size=3.")
        if kernel_size == 3 and style != "official":
            raise ValueError("SpatialGate: a 3x3 (class-map) gate has the official style (conv-BN-ReLU steps, "
                             f"then sigmoid), got style={style!r}.")
        self.style = style
        self.sync_batchnorm = bool(sync_batchnorm)
        self.kernel_size = int(kernel_size)
        self.downsample = int(downsample)
        self.batch_norm_folded = bool(batch_norm_folded) and style == "official"
        policy = self.dtype_policy
        prefixes = [""] if self.kernel_size == 1 else [f"{n}." for n in range(self.downsample + 1)]
        self.pads, self.convs, self.bns = [], [], []
        for n, prefix in enumerate(prefixes):
            if n:  # PyTorch padding 1 on every side before a stride-2 conv (Keras 'same' pads bottom/right only)
                self.pads.append(keras.layers.ZeroPadding2D(1, dtype=policy, name=f"{prefix}pad"))
            self.convs.append(keras.layers.Conv2D(
                1, self.kernel_size, strides=2 if n else 1, padding="valid" if n else "same",
                use_bias=(style == "paper" or self.batch_norm_folded), dtype=policy, name=f"{prefix}0"))
            if style == "official" and not self.batch_norm_folded:
                self.bns.append(FusedBatchNormalization(
                    momentum=TORCH_BN_MOMENTUM, epsilon=TORCH_BN_EPSILON, synchronized=self.sync_batchnorm,
                    dtype=policy, name=f"{prefix}1"))
        self.conv = self.convs[0]
        self.bn = self.bns[0] if self.bns else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        for n, conv in enumerate(self.convs):
            if n:
                shape = self.pads[n - 1].compute_output_shape(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if self.bns:
                self.bns[n].build(shape)
        self.built = True

    def call(self, inputs, training=None):
        g = inputs
        for n, conv in enumerate(self.convs):
            if n:
                g = self.pads[n - 1](g)
            g = conv(g)
            if self.bns:
                g = self.bns[n](g, training=training)
            if self.style == "official":
                g = keras.ops.relu(g)
        return keras.ops.sigmoid(g)

    def fold_batch_norm(self, dtype=None):
        """An equivalent new gate for inference with every BN folded into its conv (weights set): the
        ``fold_batch_norm()`` protocol of the model-level BN folding. ``dtype``: the new gate's dtype policy
        (default: this gate's)."""
        folded = SpatialGate.from_config({**self.get_config(), "batch_norm_folded": True,
                                          **({"dtype": dtype} if dtype is not None else {})})
        folded.build((None, None, None, int(self.convs[0].kernel.shape[-2])))
        folded.load_folded_weights(self)
        return folded

    def load_folded_weights(self, source):
        """Set this (folded) gate's conv weights from ``source``, the same gate with BN layers (or without)."""

        for n, conv in enumerate(self.convs):
            src = source.convs[n]
            if source.bns:
                kernel, bias = folded_conv_weights(src, source.bns[n])
            else:
                kernel, bias = src.kernel.numpy(), src.bias.numpy() if src.use_bias else None
            conv.kernel.assign(kernel)
            if conv.use_bias:
                conv.bias.assign(bias if bias is not None else 0 * conv.bias.numpy())

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[:-1]) + (1,)
        for _ in range(self.downsample):
            shape = (shape[0],) + tuple(None if d is None else (d - 1) // 2 + 1 for d in shape[1:3]) + (1,)
        return shape

    def get_config(self):
        config = super().get_config()
        config.update({"style": self.style, "sync_batchnorm": self.sync_batchnorm, "kernel_size": self.kernel_size,
                       "downsample": self.downsample, "batch_norm_folded": self.batch_norm_folded})
        return config
