"""PSPNet (PPM), DeepLabV3 (ASPP) and FCN auxiliary heads, plain and with GSTO gates (functional builders).

The variants (``gating``) are described in :mod:`gsto_tf.models.context_models`, which assembles the models.

GSTO placement (no official code exists for these heads; our choice). A scale transfer is a place where
information moves between scales, so that is where a gate decides, per location, what moves (paper, section 3):

* PPM bin ``k``: the pooling to a ``k x k`` grid is a down transfer -> the input feature is gated (at its own
  resolution) before the adaptive pooling; the upsampling back is an up transfer -> the ``k x k`` bin feature is
  gated (at ``k x k``) before the bilinear upsampling. Each bin has its own two gates.
* ASPP: the image-pooling branch is a 1-bin pyramid and gets the same two gates; each atrous 3x3 branch
  transfers context from a wider scale -> its input is gated (one gate per branch). The 1x1 branch does not
  change scale and is not gated.
* The gate of a pooled transfer is computed at the resolution of the tensor it multiplies; the supervised gate's
  class scores are brought there with the same adaptive average pooling (not a bilinear resize, which would alias
  when shrinking 64 -> 2).
* Composition: the gate is a :class:`~gsto_tf.layers.GatedScaleTransfer` without channel transform
  (``filters=None``, ``scale="same"``, named ``....gate`` / ``....up_gate``, its SpatialGate at that key) in front of
  ``AdaptiveAveragePooling2D`` -> 1x1 Conv-BN-ReLU (the STO's channel transform) for the down transfers and in
  front of the bilinear resize for the up transfers. The baseline's layers keep their names in the GSTO variants,
  so baseline weights load into them (only the gates are new).
* Gate style defaults to ``"paper"`` (``sigmoid(conv1x1 + bias)``): there is no official checkpoint to be
  compatible with, and the official style's BN would normalise over 1x1 / 2x2 maps (degenerate with small
  batches) and its ReLU would confine the gate to [0.5, 1).

Layer names follow mmsegmentation's PSPHead / ASPPHead / FCNHead checkpoint keys (``decode_head.*``,
``auxiliary_head.*``).
"""

import keras

from gsto_tf.layers.adaptive_pooling import AdaptiveAveragePooling2D
from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.resize import BilinearResize
from gsto_tf.models import outputs as out_names
from gsto_tf.models.blocks import batch_norm, conv2d, relu

PPM_BINS = (1, 2, 3, 6)
# DeepLabV3 rates at output stride 8; they scale with 8 / output_stride (16 -> 6/12/18, HRNet's 4 -> 24/48/72).
ASPP_RATES_OS8 = (12, 24, 36)


def _cbr(x, filters, kernel_size, name, dilation=1, sync_batchnorm=False):
    """mmcv ConvModule: conv (no bias) ``{name}.conv`` -> BN ``{name}.bn`` -> ReLU."""
    x = conv2d(x, filters, kernel_size, f"{name}.conv", dilation=dilation)
    x = batch_norm(x, f"{name}.bn", sync_batchnorm)
    return relu(x, f"{name}.relu")


class Gating:
    """The variant's gate in front of each scale transfer of a head (nothing for ``gate=None``).

    ``gate``: ``None``, ``"unsupervised"`` or ``"supervised"`` (from ``class_scores``, the head input's class-score
    map); ``style``: the SpatialGate style.
    """

    def __init__(self, gate=None, style="paper", class_scores=None, sync_batchnorm=False):
        self.gate = gate
        self.style = style
        self.class_scores = class_scores
        self.sync_batchnorm = sync_batchnorm
        self._pooled_scores = {}

    def scores_at(self, bins, name):
        """Class scores pooled to a ``bins x bins`` grid (computed once per grid size)."""
        if bins not in self._pooled_scores:
            self._pooled_scores[bins] = AdaptiveAveragePooling2D(bins, name=name)(self.class_scores)
        return self._pooled_scores[bins]

    def __call__(self, x, name, bins=None):
        """Gate ``x`` with a gate named ``name``; ``bins`` = the grid ``x`` was pooled to (None: full res)."""
        if self.gate is None:
            return x
        layer = GatedScaleTransfer(None, "same", gate=self.gate, gate_style=self.style,
                                   sync_batchnorm=self.sync_batchnorm, gate_key=name, resize_class_scores=False,
                                   name=name)
        if self.gate == "unsupervised":
            return layer(x)
        scores = self.class_scores if bins is None else self.scores_at(bins, f"{name}.scores_pool")
        return layer(x, class_scores=scores)


def _pooled_branch(x, bins, channels, name, gating, sync_batchnorm):
    """Gate -> adaptive pool to ``bins x bins`` (``{name}.0``) -> 1x1 CBR (``{name}.1``) -> gate -> upsample."""
    y = gating(x, f"{name}.gate")
    y = AdaptiveAveragePooling2D(bins, name=f"{name}.0")(y)
    y = _cbr(y, channels, 1, f"{name}.1", sync_batchnorm=sync_batchnorm)
    y = gating(y, f"{name}.up_gate", bins=bins)
    return BilinearResize(name=f"{name}.up")([y, x])


def ppm_head(x, *, channels=512, bins=PPM_BINS, gating=None, sync_batchnorm=False, name="decode_head"):
    """Pyramid pooling (PSPNet): ``concat(x, up(CBR1x1(pool_b(x))) for b in bins)`` -> 3x3 CBR; returns the
    ``channels``-wide feature before dropout / classifier."""
    gating = gating or Gating(sync_batchnorm=sync_batchnorm)
    outs = [x]
    for k, b in enumerate(bins):
        outs.append(_pooled_branch(x, b, channels, f"{name}.psp_modules.{k}", gating, sync_batchnorm))
    y = keras.layers.Concatenate(name=f"{name}.concat")(outs)
    return _cbr(y, channels, 3, f"{name}.bottleneck", sync_batchnorm=sync_batchnorm)


def aspp_head(x, *, channels=512, rates=ASPP_RATES_OS8, bottleneck_kernel=1, gating=None, sync_batchnorm=False,
              name="decode_head"):
    """ASPP (DeepLabV3): image pooling + 1x1 + atrous 3x3 per rate, concat -> CBR (``bottleneck_kernel``: 1 as in
    DeepLabV3, 3 as in mmseg's ASPPHead)."""
    gating = gating or Gating(sync_batchnorm=sync_batchnorm)
    outs = [_pooled_branch(x, 1, channels, f"{name}.image_pool", gating, sync_batchnorm)]
    outs.append(_cbr(x, channels, 1, f"{name}.aspp_modules.0", sync_batchnorm=sync_batchnorm))
    for k, rate in enumerate(rates, 1):
        branch = f"{name}.aspp_modules.{k}"
        y = gating(x, f"{branch}.gate")
        outs.append(_cbr(y, channels, 3, branch, dilation=int(rate), sync_batchnorm=sync_batchnorm))
    y = keras.layers.Concatenate(name=f"{name}.concat")(outs)
    return _cbr(y, channels, bottleneck_kernel, f"{name}.bottleneck", sync_batchnorm=sync_batchnorm)


def classifier(x, num_classes, dropout, name):
    """Dropout2d (mmseg's default 0.1) -> 1x1 conv with bias, float32 logits even under mixed precision."""
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name=f"{name}.dropout")(x)
    return conv2d(x, num_classes, 1, f"{name}.conv_seg", use_bias=True, dtype=out_names.logits_dtype())


def fcn_aux_head(x, num_classes, *, channels=256, dropout=0.1, sync_batchnorm=False, name="auxiliary_head"):
    """Standard FCN auxiliary head (mmseg FCNHead, one conv): 3x3 CBR -> dropout -> 1x1 classifier."""
    y = _cbr(x, channels, 3, f"{name}.convs.0", sync_batchnorm=sync_batchnorm)
    return classifier(y, num_classes, dropout, name)
