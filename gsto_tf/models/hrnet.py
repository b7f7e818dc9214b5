"""HRNetV2 and GSTO-HRNet as functional Keras models (official HRNet / GSTO code; docs/reference.md).

Every conv / BN is named after its official checkpoint key: the trunk's blocks are top-level layers with those
names, and every scale transfer (fuse paths, new-branch transitions) is one :class:`~gsto_tf.layers.GatedScaleTransfer`
that declares the keys of its sublayers (``gate_key`` / ``transform_key``). So the generic loader in
:mod:`gsto_tf.checkpoints` loads official HRNet and GSTO-HRNet weights without a mapping table.

GSTO-HRNet = HRNetV2 plus, as in the released code (``models/gsto_hrnet.py``):

1. gated fusion: in every HighResolutionModule, for every output branch ``i`` and input branch ``j`` (``i == j``
   included) a gate ``g_ij`` (key ``stage{s}.{m}.att_layers.{i}.{j}``) computed from ``x_j`` at ``x_j``'s
   resolution multiplies ``x_j`` before the fuse op ``T_ij``: one GatedScaleTransfer per ``(i, j)``, named after
   its gate (HRNetV2: the same layers without gate, named ``stage{s}.{m}.fuse_layers.{i}.{j}``);
2. supervised gated transitions: after stages 2 and 3 an auxiliary predictor (same shape as the final head) gives
   class logits at 1/4; a small conv chain (``att2.2`` / ``att3.3``) turns them into a gate at the resolution of
   the lowest branch, which multiplies that branch before the stride-2 transition conv creating the next branch:
   one GatedScaleTransfer named ``att{s}.{s}`` fed with the class scores (``class_scores=``).
   (``att1`` of the official checkpoints is never used by the official forward pass and is not built.)

For ablations ``gsto_parts`` builds a subset: ``"fusion_gates"`` (1.), ``"aux_heads"`` (the stage-2/3 predictors
as deeply supervised side outputs) and ``"transition_gates"`` (2., needs ``"aux_heads"``). The default is all
three, the published model; ``("aux_heads",)`` alone is HRNetV2 with deep supervision.
"""

import keras

from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.spatial_gate import GATE_STYLES
from gsto_tf.layers.upsample_concat_conv import UpsampleConcatConv1x1
from gsto_tf.models import outputs as out_names
from gsto_tf.models.blocks import (BOTTLENECK_EXPANSION, basic_block, batch_norm, bottleneck_block, conv2d,
                                   conv_bn, relu)
from gsto_tf.models.factory import register_variant
from gsto_tf.models.hrnet_specs import HRNET_SPECS, get_hrnet_spec

GSTO_PARTS = ("fusion_gates", "aux_heads", "transition_gates")


def _check_gsto_parts(gsto, gsto_parts):
    """The GSTO parts to build: all for the published model, none for HRNetV2."""
    if not gsto:
        if gsto_parts is not None:
            raise ValueError("`gsto_parts` is only meaningful for GSTO-HRNet (gsto=True).")
        return frozenset()
    if gsto_parts is None:
        return frozenset(GSTO_PARTS)
    parts = frozenset(gsto_parts)
    unknown = sorted(parts - set(GSTO_PARTS))
    if unknown:
        raise ValueError(f"`gsto_parts`: unknown part(s) {unknown}; valid parts: {list(GSTO_PARTS)}.")
    if "transition_gates" in parts and "aux_heads" not in parts:
        raise ValueError("`gsto_parts`: 'transition_gates' needs 'aux_heads' (the gates are computed from them).")
    return parts


def _layer1(x, stage, sync_batchnorm):
    planes = stage["num_channels"][0]
    in_channels = x.shape[-1]
    for k in range(stage["num_blocks"][0]):
        downsample = k == 0 and in_channels != planes * BOTTLENECK_EXPANSION
        x = bottleneck_block(x, planes, f"layer1.{k}", downsample=downsample, sync_batchnorm=sync_batchnorm)
    return x


def _transition(xs, cur_channels, index, sync_batchnorm, class_scores=None):
    """transition{index}: adapt existing branches' widths and create the new, half-resolution branch.

    The new branch is a scale transfer of the lowest branch (3x3 stride-2 conv-BN-ReLU, official key
    ``transition{index}.{i}.0``); with ``class_scores`` (GSTO's supervised transition) it is gated first by the
    class-map gate ``att{index}.{index}``, which brings the stride-4 class scores down to that branch's scale.
    """
    prev_channels = [x.shape[-1] for x in xs]
    out = []
    for i, channels in enumerate(cur_channels):
        if i < len(xs):
            if channels != prev_channels[i]:
                out.append(conv_bn(xs[i], channels, 3, f"transition{index}.{i}.0", f"transition{index}.{i}.1",
                                   sync_batchnorm=sync_batchnorm))
            else:
                out.append(xs[i])
            continue
        gated = class_scores is not None
        key = f"transition{index}.{i}.0"
        layer = GatedScaleTransfer(
            channels, scale="down", factor=2, down_method="conv", activation="relu",
            gate="supervised" if gated else None, gate_kernel_size=3 if gated else 1,
            gate_downsample=len(xs) - 1 if gated else 0, sync_batchnorm=sync_batchnorm,
            gate_key=f"att{index}.{index}" if gated else None, transform_key=key,
            name=f"att{index}.{index}" if gated else key,
        )
        out.append(layer(xs[-1], class_scores=class_scores))
    return out


def _fuse_term(branches, i, j, channels, prefix, gate_style, sync_batchnorm):
    """``T_ij(g_ij * x_j)``: the scale transfer from input branch ``j`` to output branch ``i``.

    One :class:`~gsto_tf.layers.GatedScaleTransfer` (``gate_style=None``: HRNetV2, no gate): up (``j > i``): 1x1
    conv + BN, bilinear to ``x_i``'s size; down (``j < i``): ``i - j`` steps of 3x3 stride-2 conv + BN, ReLU
    between; same (``i == j``): the gate only. Official keys: gate ``{prefix}.att_layers.{i}.{j}``, fuse path
    ``{prefix}.fuse_layers.{i}.{j}``; the layer is named after the first of them it has.
    """
    gate_key = f"{prefix}.att_layers.{i}.{j}"
    fuse_key = f"{prefix}.fuse_layers.{i}.{j}"
    if j == i and gate_style is None:
        return branches[j]
    if j > i:
        args = {"filters": channels[i], "scale": "up"}
    elif j < i:
        args = {"filters": channels[i], "scale": "down", "factor": 2 ** (i - j), "down_method": "strided_conv"}
    else:
        args = {"filters": None, "scale": "same"}
    layer = GatedScaleTransfer(
        **args, gate=None if gate_style is None else "unsupervised", gate_style=gate_style or "official",
        sync_batchnorm=sync_batchnorm, gate_key=gate_key, transform_key=fuse_key,
        name=fuse_key if gate_style is None else gate_key,
    )
    return layer(branches[j], reference=branches[i]) if j > i else layer(branches[j])


def _hr_module(xs, stage, prefix, gsto, gate_style, sync_batchnorm):
    channels = stage["num_channels"]
    branches = []
    for b, x in enumerate(xs):
        for k in range(stage["num_blocks"][b]):
            x = basic_block(x, channels[b], f"{prefix}.branches.{b}.{k}", sync_batchnorm=sync_batchnorm)
        branches.append(x)
    n = len(branches)
    fused = []
    for i in range(n):
        terms = [_fuse_term(branches, i, j, channels, prefix, gate_style if gsto else None, sync_batchnorm)
                 for j in range(n)]
        y = keras.layers.Add(name=f"{prefix}.fuse.{i}.add")(terms)
        fused.append(relu(y, f"{prefix}.fuse.{i}.relu"))
    return fused


def _stage(xs, stage, index, gsto, gate_style, sync_batchnorm):
    for m in range(stage["num_modules"]):
        xs = _hr_module(xs, stage, f"stage{index}.{m}", gsto, gate_style, sync_batchnorm)
    return xs


def _seg_head(xs, num_classes, prefix, sync_batchnorm):
    """Concat all branches upsampled to branch 0 -> conv1x1 -> BN -> ReLU -> conv1x1 to K (HRNetV2 head).

    The first conv is evaluated per branch before upsampling (:class:`UpsampleConcatConv1x1`, same weights, same
    result up to rounding): 8x fewer multiply-adds for HRNetV2's head, 3-4x for GSTO's auxiliary heads.
    """
    channels = sum(x.shape[-1] for x in xs)
    x = UpsampleConcatConv1x1(channels, use_bias=True, name=f"{prefix}.0")(xs)
    x = batch_norm(x, f"{prefix}.1", sync_batchnorm)
    x = relu(x, f"{prefix}.2")
    # Logits in float32 even under a mixed-precision policy (stable softmax / loss); float64 in a float64 model.
    return conv2d(x, num_classes, 1, f"{prefix}.3", use_bias=True, dtype=out_names.logits_dtype())


def hrnet_features(inputs, spec="w18_small_v2", *, gsto=False, num_classes=None, gate_style="official",
                   sync_batchnorm=False, gsto_parts=None):
    """Build the HRNet trunk on ``inputs``.

    Returns ``(branches, aux)``: the four stage-4 branch features (strides 4, 8, 16, 32 of the input) and, for
    GSTO, the auxiliary stage logits ``{"aux_stage3": ..., "aux_stage2": ...}`` (empty for HRNetV2). GSTO needs
    ``num_classes`` because its transitions are gated by class-score maps. ``gsto_parts``: see the module doc.
    """
    spec = get_hrnet_spec(spec)
    parts = _check_gsto_parts(gsto, gsto_parts)
    if gate_style not in GATE_STYLES:
        raise ValueError(f"`gate_style` must be one of {GATE_STYLES}, got {gate_style!r}.")
    if "aux_heads" in parts and not num_classes:
        raise ValueError("GSTO-HRNet needs `num_classes`: its transitions are gated by predicted class maps.")
    x = conv_bn(inputs, 64, 3, "conv1", "bn1", strides=2, sync_batchnorm=sync_batchnorm)
    x = conv_bn(x, 64, 3, "conv2", "bn2", strides=2, sync_batchnorm=sync_batchnorm)
    x = _layer1(x, spec["stage1"], sync_batchnorm)

    aux = {}
    xs = _transition([x], spec["stage2"]["num_channels"], 1, sync_batchnorm)
    for s in (2, 3):
        xs = _stage(xs, spec[f"stage{s}"], s, "fusion_gates" in parts, gate_style, sync_batchnorm)
        class_scores = None
        if "aux_heads" in parts:
            aux_name = out_names.AUX_STAGE2 if s == 2 else out_names.AUX_STAGE3
            aux[aux_name] = _seg_head(xs, num_classes, f"last_layer_stage{s}", sync_batchnorm)
        if "transition_gates" in parts:  # stage-s class map -> att{s}.{s} gate on the lowest branch
            class_scores = aux[aux_name]
        xs = _transition(xs, spec[f"stage{s + 1}"]["num_channels"], s, sync_batchnorm, class_scores=class_scores)
    xs = _stage(xs, spec["stage4"], 4, "fusion_gates" in parts, gate_style, sync_batchnorm)
    return xs, aux


def build_hrnet_backbone(spec="w18_small_v2", *, gsto=False, num_classes=None, gate_style="official",
                         sync_batchnorm=False, gsto_parts=None, input_shape=(None, None, 3), name=None):
    """HRNet trunk as a Keras model: outputs ``{"stride4", "stride8", "stride16", "stride32"}`` features, plus
    ``"aux_stage3"`` / ``"aux_stage2"`` logits for GSTO (they must be supervised: they drive the gates)."""
    inputs = keras.Input(input_shape, name="image")
    xs, aux = hrnet_features(inputs, spec, gsto=gsto, num_classes=num_classes, gate_style=gate_style,
                             sync_batchnorm=sync_batchnorm, gsto_parts=gsto_parts)
    outputs = {f"stride{4 * 2 ** k}": x for k, x in enumerate(xs)}
    outputs.update(aux)
    default = f"{'gsto_hrnet' if gsto else 'hrnetv2'}_backbone"
    return keras.Model(inputs, outputs, name=name or default)


def build_hrnet(spec="w18_small_v2", num_classes=19, *, gsto=False, aux=True, gate_style="official",
                sync_batchnorm=False, gsto_parts=None, input_shape=(None, None, 3), name=None):
    """HRNetV2 (``gsto=False``) or GSTO-HRNet segmentation model.

    Input: normalised float images ``[N, H, W, 3]`` (any size). Output dict: ``"logits"`` ``[N, ceil(ceil(H/2)/2),
    ..., num_classes]`` float32; GSTO with ``aux=True`` adds ``"aux_stage3"`` and ``"aux_stage2"`` (same size).
    ``gsto_parts``: a subset of :data:`GSTO_PARTS` for ablations (default: all, the published GSTO-HRNet).
    """
    if int(num_classes) <= 0:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
    inputs = keras.Input(input_shape, name="image")
    xs, aux_logits = hrnet_features(inputs, spec, gsto=gsto, num_classes=num_classes, gate_style=gate_style,
                                    sync_batchnorm=sync_batchnorm, gsto_parts=gsto_parts)
    outputs = {out_names.FINAL_LOGITS: _seg_head(xs, num_classes, "last_layer", sync_batchnorm)}
    if aux:
        outputs.update(aux_logits)
    return keras.Model(inputs, outputs, name=name)


def _register_all():
    for spec in HRNET_SPECS:
        for family, gsto in (("hrnetv2", False), ("gsto_hrnet", True)):
            register_variant(f"{family}_{spec}", build_hrnet, spec=spec, gsto=gsto)


_register_all()
