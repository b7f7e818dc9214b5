"""PSPNet (PPM) and DeepLabV3 (ASPP) heads, plain and with GSTO, on a dilated ResNet or on HRNet features.

Four variants of each head (the slides' table for "traditional classification backbones"):

==================  ==========================  =========================================================
name part           variant                     what is added to the baseline head
==================  ==========================  =========================================================
``pspnet``          baseline                    nothing
``pspnet_sup``      baseline (w/ sup)           a class-score map ``P`` predicted from the head's input and
                                                supervised by the ground truth (output ``aux_class_map``);
                                                nothing uses it (isolates the effect of the extra loss)
``pspnet_gsto``     + GSTO (w/o sup)            an unsupervised gate ``sigmoid(conv1x1(F))`` on every scale
                                                transfer (placement below)
``pspnet_gsto_sup`` + GSTO (w/ sup)             the same gates, computed from ``P`` (``sigmoid(conv1x1(P))``,
                                                paper eqs. 5-6); ``P`` is supervised as in ``_sup``
==================  ==========================  =========================================================

(``deeplabv3`` likewise.) Registered names are ``{head}{variant}_{backbone}`` with backbone ``resnet50``,
``resnet101``, ``hrnetv2_<spec>`` or ``gsto_hrnet_<spec>``, e.g. ``pspnet_gsto_sup_resnet101``,
``deeplabv3_gsto_hrnetv2_w18_small_v2``.

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
* Composition: ``SpatialGate`` -> multiply -> ``AdaptiveAveragePooling2D`` -> 1x1 Conv-BN-ReLU (the STO's channel
  transform) for the down transfers; ``SpatialGate`` -> multiply -> bilinear resize for the up transfers. The
  gated layers keep the baseline's names, so baseline weights load into the GSTO variants (only the gates are
  new).
* Gate style defaults to ``"paper"`` (``sigmoid(conv1x1 + bias)``): there is no official checkpoint to be
  compatible with, and the official style's BN would normalise over 1x1 / 2x2 maps (degenerate with small
  batches) and its ReLU would confine the gate to [0.5, 1).

Layer names follow mmsegmentation's PSPHead / ASPPHead / FCNHead checkpoint keys: the backbone is a nested
sub-model named ``backbone`` (keys ``backbone.stem.0.weight``, ...), the head layers are ``decode_head.*`` and the
auxiliary FCN ``auxiliary_head.*``, so an mmseg PSPNet checkpoint (ResNetV1c) maps onto ``pspnet_resnet50/101``
with the generic loader; ImageNet trunk checkpoints load into ``model.get_layer("backbone")``
(see :func:`load_backbone_weights`).
"""

import functools

import keras

from gsto_tf.layers.adaptive_pooling import AdaptiveAveragePooling2D
from gsto_tf.layers.resize import BilinearResize
from gsto_tf.layers.spatial_gate import GATE_STYLES, SpatialGate
from gsto_tf.models import outputs as out_names
from gsto_tf.models.blocks import batch_norm, conv2d, relu
from gsto_tf.models.checkpoints import load_torch_weights
from gsto_tf.models.counting import register_layer_cost
from gsto_tf.models.factory import register_model
from gsto_tf.models.resnet import RESNET_DEPTHS, build_resnet_backbone

HEADS = ("pspnet", "deeplabv3")
# variant name part -> (gate, class-map supervision)
VARIANTS = {
    "": (None, False),
    "_sup": (None, True),
    "_gsto": ("unsupervised", False),
    "_gsto_sup": ("supervised", True),
}
PPM_BINS = (1, 2, 3, 6)
# DeepLabV3 rates at output stride 8; they scale with 8 / output_stride (16 -> 6/12/18, HRNet's 4 -> 24/48/72).
ASPP_RATES_OS8 = (12, 24, 36)
BACKBONE_NAME = "backbone"


@register_layer_cost(AdaptiveAveragePooling2D)
def _adaptive_pool_cost(layer, in_shape, out_shapes):
    """No multiply-adds (convention of the paper's GFLOPs); FLOPs: one add per input element (overlapping bins
    ignored) and one divide per output element, as a pooling pass."""
    in_numel = int(in_shape[1]) * int(in_shape[2]) * int(in_shape[3])
    out = out_shapes[0]
    return 0, in_numel + int(out[1]) * int(out[2]) * int(out[3])


def _cbr(x, filters, kernel_size, name, dilation=1, sync=False):
    """mmcv ConvModule: conv (no bias) ``{name}.conv`` -> BN ``{name}.bn`` -> ReLU."""
    x = conv2d(x, filters, kernel_size, f"{name}.conv", dilation=dilation)
    x = batch_norm(x, f"{name}.bn", sync)
    return relu(x, f"{name}.relu")


class _Gating:
    """Applies the variant's gate to the input of a scale transfer (nothing for gate=None)."""

    def __init__(self, gate, style, class_scores, sync):
        self.gate = gate
        self.style = style
        self.class_scores = class_scores
        self.sync = sync
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
        if self.gate == "unsupervised":
            source = x
        elif bins is None:
            source = self.class_scores
        else:
            source = self.scores_at(bins, f"{name}.scores_pool")
        g = SpatialGate(self.style, sync_batchnorm=self.sync, name=name)(source)
        return keras.layers.Multiply(name=f"{name}.mul")([x, g])


def _pooled_branch(x, bins, channels, name, gating, sync):
    """Gate -> adaptive pool to ``bins x bins`` (``{name}.0``) -> 1x1 CBR (``{name}.1``) -> gate -> upsample."""
    y = gating(x, f"{name}.gate")
    y = AdaptiveAveragePooling2D(bins, name=f"{name}.0")(y)
    y = _cbr(y, channels, 1, f"{name}.1", sync=sync)
    y = gating(y, f"{name}.up_gate", bins=bins)
    return BilinearResize(name=f"{name}.up")([y, x])


def ppm_head(x, *, channels=512, bins=PPM_BINS, gating=None, sync=False, name="decode_head"):
    """Pyramid pooling (PSPNet): ``concat(x, up(CBR1x1(pool_b(x))) for b in bins)`` -> 3x3 CBR; returns the
    ``channels``-wide feature before dropout / classifier."""
    gating = gating or _Gating(None, None, None, sync)
    outs = [x]
    for k, b in enumerate(bins):
        outs.append(_pooled_branch(x, b, channels, f"{name}.psp_modules.{k}", gating, sync))
    y = keras.layers.Concatenate(name=f"{name}.concat")(outs)
    return _cbr(y, channels, 3, f"{name}.bottleneck", sync=sync)


def aspp_head(x, *, channels=512, rates=ASPP_RATES_OS8, bottleneck_kernel=1, gating=None, sync=False,
              name="decode_head"):
    """ASPP (DeepLabV3): image pooling + 1x1 + atrous 3x3 per rate, concat -> CBR (``bottleneck_kernel``: 1 as in
    DeepLabV3, 3 as in mmseg's ASPPHead)."""
    gating = gating or _Gating(None, None, None, sync)
    outs = [_pooled_branch(x, 1, channels, f"{name}.image_pool", gating, sync)]
    outs.append(_cbr(x, channels, 1, f"{name}.aspp_modules.0", sync=sync))
    for k, rate in enumerate(rates, 1):
        branch = f"{name}.aspp_modules.{k}"
        y = gating(x, f"{branch}.gate")
        outs.append(_cbr(y, channels, 3, branch, dilation=int(rate), sync=sync))
    y = keras.layers.Concatenate(name=f"{name}.concat")(outs)
    return _cbr(y, channels, bottleneck_kernel, f"{name}.bottleneck", sync=sync)


def _classifier(x, num_classes, dropout, name):
    """Dropout2d (mmseg's default 0.1) -> 1x1 conv with bias, float32 logits even under mixed precision."""
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name=f"{name}.dropout")(x)
    return conv2d(x, num_classes, 1, f"{name}.conv_seg", use_bias=True, dtype=out_names.logits_dtype())


def fcn_aux_head(x, num_classes, *, channels=256, dropout=0.1, sync=False, name="auxiliary_head"):
    """Standard FCN auxiliary head (mmseg FCNHead, one conv): 3x3 CBR -> dropout -> 1x1 classifier."""
    y = _cbr(x, channels, 3, f"{name}.convs.0", sync=sync)
    return _classifier(y, num_classes, dropout, name)


def _parse_backbone(backbone):
    if backbone.startswith("resnet") and backbone[len("resnet"):].isdigit():
        return "resnet", int(backbone[len("resnet"):])
    for family, gsto in (("hrnetv2_", False), ("gsto_hrnet_", True)):
        if backbone.startswith(family):
            return ("gsto_hrnet" if gsto else "hrnetv2"), backbone[len(family):]
    raise ValueError(
        f"unknown backbone {backbone!r}; expected resnet50, resnet101, hrnetv2_<spec> or gsto_hrnet_<spec>."
    )


def _backbone_features(inputs, backbone, num_classes, output_stride, stem, blocks, base_channels,
                       contract_dilation, backbone_gate_style, sync):
    """(head input, aux-head input or None, backbone aux outputs dict, output stride of the head input)."""
    family, arg = _parse_backbone(backbone)
    if family == "resnet":
        net = build_resnet_backbone(
            arg, output_stride=output_stride, stem=stem, blocks=blocks, base_channels=base_channels,
            contract_dilation=contract_dilation, sync_batchnorm=sync, input_shape=tuple(inputs.shape[1:]),
            name=BACKBONE_NAME,
        )
        feats = net(inputs)
        return feats["stage4"], feats["stage3"], {}, output_stride
    from gsto_tf.models.hrnet import build_hrnet_backbone

    gsto = family == "gsto_hrnet"
    net = build_hrnet_backbone(
        arg, gsto=gsto, num_classes=num_classes if gsto else None, gate_style=backbone_gate_style,
        sync_batchnorm=sync, input_shape=tuple(inputs.shape[1:]), name=BACKBONE_NAME,
    )
    feats = net(inputs)
    # HRNetV2 representation: all four branches upsampled to stride 4 and concatenated (as HRNetV2's own head).
    branches = [feats[f"stride{4 * 2**k}"] for k in range(4)]
    ups = [branches[0]] + [BilinearResize(name=f"neck.up{k}")([b, branches[0]]) for k, b in enumerate(branches[1:], 1)]
    x = keras.layers.Concatenate(name="neck.concat")(ups)
    aux = {k: feats[k] for k in (out_names.AUX_STAGE3, out_names.AUX_STAGE2) if k in feats}
    return x, None, aux, 4


def build_context_model(head, backbone, num_classes, *, variant="", aux=True, output_stride=8, stem="deep",
                        blocks=None, base_channels=64, contract_dilation=True, head_channels=None,
                        aux_channels=256, dropout=0.1, bins=PPM_BINS, aspp_rates=None, aspp_bottleneck_kernel=1,
                        gate_style="paper", backbone_gate_style="official", sync_batchnorm=False,
                        input_shape=(None, None, 3), name=None):
    """A PPM / ASPP segmentation model.

    Args:
        head: ``"pspnet"`` (PPM) or ``"deeplabv3"`` (ASPP).
        backbone: ``"resnet50"``, ``"resnet101"``, ``"hrnetv2_<spec>"`` or ``"gsto_hrnet_<spec>"``.
        variant: ``""``, ``"_sup"``, ``"_gsto"`` or ``"_gsto_sup"`` (see the module docstring).
        aux: add the training outputs (``aux_fcn`` on ResNet stage 3, ``aux_class_map`` for ``*_sup``,
            GSTO-HRNet's ``aux_stage3/2``).
        output_stride: 8 or 16 (ResNet only; HRNet heads run on the stride-4 concatenation).
        stem, blocks, base_channels, contract_dilation: ResNet options (:func:`~gsto_tf.models.resnet.
            resnet_features`); ``blocks`` / ``base_channels`` make tiny test networks.
        head_channels: width of the PPM / ASPP branches and bottleneck (default 512 on ResNet, as PSPNet / mmseg;
            256 on HRNet, whose head runs at stride 4).
        aspp_rates: atrous rates (default 12/24/36 scaled by 8 / output_stride).
        gate_style: ``"paper"`` (default) or ``"official"`` SpatialGate style of the head's gates.
        backbone_gate_style: gate style inside a GSTO-HRNet backbone (default ``"official"``, as GSTO-HRNet
            itself, so its official checkpoints fit).

    Output dict: ``"logits"`` ``[N, h, w, K]`` float32 at the head's output stride (ResNet OS8: ``h`` = the
    stage-4 size, ``ceil``-style PyTorch arithmetic; HRNet: ``ceil(ceil(H/2)/2)``), plus the auxiliary outputs.
    """
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {HEADS}, got {head!r}.")
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(VARIANTS)}, got {variant!r}.")
    if int(num_classes) <= 0:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
    if gate_style not in GATE_STYLES:
        raise ValueError(f"`gate_style` must be one of {GATE_STYLES}, got {gate_style!r}.")
    if output_stride not in (8, 16):
        raise ValueError(f"`output_stride` must be 8 or 16 for the context heads, got {output_stride!r}.")
    gate, supervised_map = VARIANTS[variant]
    sync = sync_batchnorm

    inputs = keras.Input(input_shape, name="image")
    x, aux_in, backbone_aux, stride = _backbone_features(
        inputs, backbone, num_classes, output_stride, stem, blocks, base_channels, contract_dilation,
        backbone_gate_style, sync,
    )
    if head_channels is None:
        head_channels = 512 if backbone.startswith("resnet") else 256

    outputs = {}
    class_scores = None
    if supervised_map:
        # P = conv1x1_{C->K}(F) on the head's input (GSTO paper eq. 5); float32 like every output.
        class_scores = conv2d(x, num_classes, 1, "decode_head.class_scores", use_bias=True,
                              dtype=out_names.logits_dtype())
    gating = _Gating(gate, gate_style, class_scores, sync)
    if head == "pspnet":
        y = ppm_head(x, channels=head_channels, bins=tuple(bins), gating=gating, sync=sync)
    else:
        rates = aspp_rates if aspp_rates is not None else tuple(r * 8 // stride for r in ASPP_RATES_OS8)
        y = aspp_head(x, channels=head_channels, rates=tuple(rates), bottleneck_kernel=aspp_bottleneck_kernel,
                      gating=gating, sync=sync)
    outputs[out_names.FINAL_LOGITS] = _classifier(y, num_classes, dropout, "decode_head")
    if aux:
        if aux_in is not None:
            outputs[out_names.AUX_FCN] = fcn_aux_head(aux_in, num_classes, channels=aux_channels, dropout=dropout,
                                                      sync=sync)
        if class_scores is not None:
            outputs[out_names.AUX_CLASS_MAP] = class_scores
        outputs.update(backbone_aux)
    return keras.Model(inputs, outputs, name=name or f"{head}{variant}_{backbone}")


def load_backbone_weights(model, state_dict_or_path, strict=True):
    """Load an ImageNet trunk checkpoint (torchvision ResNet, mmseg ResNetV1c, HRNet ImageNet) into the
    ``backbone`` sub-model of a context-head model; its classifier keys are ignored. Returns the LoadReport."""
    try:
        backbone = model.get_layer(BACKBONE_NAME)
    except ValueError:
        raise ValueError(f"model '{model.name}' has no sub-model named '{BACKBONE_NAME}'.") from None
    return load_torch_weights(backbone, state_dict_or_path, strict=strict, backbone_only=True)


def _builder(head, variant, backbone, model_name, num_classes, **options):
    options.setdefault("name", model_name)
    return build_context_model(head, backbone, num_classes, variant=variant, **options)


def _register_all():
    from gsto_tf.models.hrnet_specs import HRNET_SPECS

    backbones = [f"resnet{d}" for d in sorted(RESNET_DEPTHS)]
    backbones += [f"{family}_{spec}" for family in ("hrnetv2", "gsto_hrnet") for spec in HRNET_SPECS]
    for backbone in backbones:
        for head in HEADS:
            for variant in VARIANTS:
                model_name = f"{head}{variant}_{backbone}"
                register_model(model_name)(functools.partial(_builder, head, variant, backbone, model_name))


_register_all()
