"""PSPNet (PPM) and DeepLabV3 (ASPP) models on a dilated ResNet or on HRNet features: assembly and registry.

The heads themselves (and where GSTO gates them) are in :mod:`gsto_tf.models.heads`. Four variants of each head
(the slides' table for "traditional classification backbones"):

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

Layer names follow mmsegmentation's PSPHead / ASPPHead / FCNHead checkpoint keys: the backbone is a nested
sub-model named ``backbone`` (keys ``backbone.stem.0.weight``, ...), the head layers are ``decode_head.*`` and the
auxiliary FCN ``auxiliary_head.*``, so an mmseg PSPNet checkpoint (ResNetV1c) maps onto ``pspnet_resnet50/101``
with the generic loader; ImageNet trunk checkpoints load into the ``backbone`` sub-model with
``load_torch_weights(model, path, backbone_only=True)``.
"""

import keras

from gsto_tf.layers.resize import BilinearResize
from gsto_tf.layers.spatial_gate import GATE_STYLES
from gsto_tf.models import outputs as out_names
from gsto_tf.models.blocks import conv2d
from gsto_tf.models.factory import register_variant
from gsto_tf.models.heads import ASPP_RATES_OS8, PPM_BINS, Gating, aspp_head, classifier, fcn_aux_head, ppm_head
from gsto_tf.models.resnet import RESNET_DEPTHS, build_resnet_backbone

HEADS = ("pspnet", "deeplabv3")
# variant name part -> (gate, class-map supervision)
VARIANTS = {
    "": (None, False),
    "_sup": (None, True),
    "_gsto": ("unsupervised", False),
    "_gsto_sup": ("supervised", True),
}
BACKBONE_NAME = "backbone"


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
                       contract_dilation, backbone_gate_style, sync_batchnorm):
    """(head input, aux-head input or None, backbone aux outputs dict, output stride of the head input)."""
    family, arg = _parse_backbone(backbone)
    if family == "resnet":
        net = build_resnet_backbone(
            arg, output_stride=output_stride, stem=stem, blocks=blocks, base_channels=base_channels,
            contract_dilation=contract_dilation, sync_batchnorm=sync_batchnorm, input_shape=tuple(inputs.shape[1:]),
            name=BACKBONE_NAME,
        )
        feats = net(inputs)
        return feats["stage4"], feats["stage3"], {}, output_stride
    from gsto_tf.models.hrnet import build_hrnet_backbone

    gsto = family == "gsto_hrnet"
    net = build_hrnet_backbone(
        arg, gsto=gsto, num_classes=num_classes if gsto else None, gate_style=backbone_gate_style,
        sync_batchnorm=sync_batchnorm, input_shape=tuple(inputs.shape[1:]), name=BACKBONE_NAME,
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

    inputs = keras.Input(input_shape, name="image")
    x, aux_in, backbone_aux, stride = _backbone_features(
        inputs, backbone, num_classes, output_stride, stem, blocks, base_channels, contract_dilation,
        backbone_gate_style, sync_batchnorm,
    )
    if head_channels is None:
        head_channels = 512 if backbone.startswith("resnet") else 256

    outputs = {}
    class_scores = None
    if supervised_map:
        # P = conv1x1_{C->K}(F) on the head's input (GSTO paper eq. 5); float32 like every output.
        class_scores = conv2d(x, num_classes, 1, "decode_head.class_scores", use_bias=True,
                              dtype=out_names.logits_dtype())
    gating = Gating(gate, gate_style, class_scores, sync_batchnorm)
    if head == "pspnet":
        y = ppm_head(x, channels=head_channels, bins=tuple(bins), gating=gating, sync_batchnorm=sync_batchnorm)
    else:
        rates = aspp_rates if aspp_rates is not None else tuple(r * 8 // stride for r in ASPP_RATES_OS8)
        y = aspp_head(x, channels=head_channels, rates=tuple(rates), bottleneck_kernel=aspp_bottleneck_kernel,
                      gating=gating, sync_batchnorm=sync_batchnorm)
    outputs[out_names.FINAL_LOGITS] = classifier(y, num_classes, dropout, "decode_head")
    if aux:
        if aux_in is not None:
            outputs[out_names.AUX_FCN] = fcn_aux_head(aux_in, num_classes, channels=aux_channels, dropout=dropout,
                                                      sync_batchnorm=sync_batchnorm)
        if class_scores is not None:
            outputs[out_names.AUX_CLASS_MAP] = class_scores
        outputs.update(backbone_aux)
    return keras.Model(inputs, outputs, name=name or f"{head}{variant}_{backbone}")


def _register_all():
    from gsto_tf.models.hrnet_specs import HRNET_SPECS

    backbones = [f"resnet{d}" for d in sorted(RESNET_DEPTHS)]
    backbones += [f"{family}_{spec}" for family in ("hrnetv2", "gsto_hrnet") for spec in HRNET_SPECS]
    for backbone in backbones:
        for head in HEADS:
            for variant in VARIANTS:
                register_variant(f"{head}{variant}_{backbone}", build_context_model, head=head, backbone=backbone,
                                 variant=variant)


_register_all()
