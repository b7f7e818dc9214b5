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

Sublayer names ``"0"`` (conv) and ``"1"`` (BN) follow the official checkpoint keys ``...att_layers.{i}.{j}.{0,1}``.
"""

import keras

from gsto_tf.layers.batch_norm import FusedBatchNormalization

GATE_STYLES = ("official", "paper")


@keras.saving.register_keras_serializable(package="gsto_tf")
class SpatialGate(keras.layers.Layer):
    """Maps a feature or class-score map ``[N, H, W, C]`` to a gate ``[N, H, W, 1]`` in (0, 1).

    Args:
        style: ``"official"`` (sigmoid(ReLU(BN(conv1x1, no bias)))) or ``"paper"`` (sigmoid(conv1x1 + bias)).
        sync_batchnorm: use synchronized BatchNormalization (multi-replica training).
    """

    def __init__(self, style="official", sync_batchnorm=False, **kwargs):
        super().__init__(**kwargs)
        if style not in GATE_STYLES:
            raise ValueError(f"SpatialGate: `style` must be one of {GATE_STYLES}, got {style!r}.")
        self.style = style
        self.sync_batchnorm = bool(sync_batchnorm)
        self.conv = keras.layers.Conv2D(
            1, 1, use_bias=(style == "paper"), dtype=self.dtype_policy, name="0"
        )
        self.bn = None
        if style == "official":
            self.bn = FusedBatchNormalization(
                momentum=0.99, epsilon=1e-5, synchronized=self.sync_batchnorm, dtype=self.dtype_policy, name="1"
            )

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build(tuple(input_shape[:-1]) + (1,))
        self.built = True

    def call(self, inputs, training=None):
        g = self.conv(inputs)
        if self.bn is not None:
            g = keras.ops.relu(self.bn(g, training=training))
        return keras.ops.sigmoid(g)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update({"style": self.style, "sync_batchnorm": self.sync_batchnorm})
        return config
