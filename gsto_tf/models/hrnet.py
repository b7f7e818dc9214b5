"""HRNetV2 and GSTO-HRNet as functional Keras models (official HRNet / GSTO code; docs/reference.md).

The graph is flat: every conv / BN is a top-level layer named after its official checkpoint key, so the generic
loader in :mod:`gsto_tf.models.checkpoints` loads official HRNet and GSTO-HRNet weights without a mapping table.

GSTO-HRNet = HRNetV2 plus, as in the released code (``models/gsto_hrnet.py``):

1. gated fusion: in every HighResolutionModule, for every output branch ``i`` and input branch ``j`` (``i == j``
   included) a gate ``g_ij`` (:class:`~gsto_tf.layers.SpatialGate`, layer ``stage{s}.{m}.att_layers.{i}.{j}``)
   computed from ``x_j`` at ``x_j``'s resolution multiplies ``x_j`` before the fuse op ``T_ij``;
2. supervised gated transitions: after stages 2 and 3 an auxiliary predictor (same shape as the final head) gives
   class logits at 1/4; a small conv chain (``att2.2`` / ``att3.3``) turns them into a gate at the resolution of
   the lowest branch, which multiplies that branch before the stride-2 transition conv creating the next branch.
   (``att1`` of the official checkpoints is never used by the official forward pass and is not built.)

For ablations ``gsto_parts`` builds a subset: ``"fusion_gates"`` (1.), ``"aux_heads"`` (the stage-2/3 predictors
as deeply supervised side outputs) and ``"transition_gates"`` (2., needs ``"aux_heads"``). The default is all
three, the published model; ``("aux_heads",)`` alone is HRNetV2 with deep supervision.
"""

import keras

from gsto_tf.layers.resize import BilinearResize
from gsto_tf.layers.spatial_gate import GATE_STYLES, SpatialGate
from gsto_tf.layers.upsample_concat_conv import UpsampleConcatConv1x1
from gsto_tf.models import outputs as out_names
from gsto_tf.models.blocks import basic_block, batch_norm, bottleneck_block, conv2d, conv_bn, relu
from gsto_tf.models.hrnet_specs import get_hrnet_spec

BOTTLENECK_EXPANSION = 4
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


def _layer1(x, stage, sync):
    planes = stage["num_channels"][0]
    in_channels = x.shape[-1]
    for k in range(stage["num_blocks"][0]):
        downsample = k == 0 and in_channels != planes * BOTTLENECK_EXPANSION
        x = bottleneck_block(x, planes, f"layer1.{k}", downsample=downsample, sync=sync)
    return x


def _transition(xs, cur_channels, index, sync, new_branch_input=None):
    """transition{index}: adapt existing branches' widths and create the new, half-resolution branch.

    ``new_branch_input`` replaces ``xs[-1]`` as the source of the new branch (GSTO's gated transition).
    """
    prev_channels = [x.shape[-1] for x in xs]
    out = []
    for i, channels in enumerate(cur_channels):
        if i < len(xs):
            if channels != prev_channels[i]:
                out.append(conv_bn(xs[i], channels, 3, f"transition{index}.{i}.0", f"transition{index}.{i}.1",
                                   sync=sync))
            else:
                out.append(xs[i])
        else:
            src = xs[-1] if new_branch_input is None else new_branch_input
            out.append(conv_bn(src, channels, 3, f"transition{index}.{i}.0.0", f"transition{index}.{i}.0.1",
                               strides=2, sync=sync))
    return out


def _gate(x, name, style, sync):
    """Multiply ``x`` by its own spatial gate (official key ``{name}.{0,1}``)."""
    g = SpatialGate(style, sync_batchnorm=sync, name=name)(x)
    return keras.layers.Multiply(name=f"{name}.mul")([x, g])


def _hr_module(xs, stage, prefix, gsto, gate_style, sync):
    channels = stage["num_channels"]
    branches = []
    for b, x in enumerate(xs):
        for k in range(stage["num_blocks"][b]):
            x = basic_block(x, channels[b], f"{prefix}.branches.{b}.{k}", sync=sync)
        branches.append(x)
    n = len(branches)
    fused = []
    for i in range(n):
        terms = []
        for j in range(n):
            t = branches[j]
            if gsto:
                t = _gate(t, f"{prefix}.att_layers.{i}.{j}", gate_style, sync)
            if j > i:
                name = f"{prefix}.fuse_layers.{i}.{j}"
                t = conv2d(t, channels[i], 1, f"{name}.0")
                t = batch_norm(t, f"{name}.1", sync)
                t = BilinearResize(name=f"{name}.up")([t, branches[i]])
            elif j < i:
                for k in range(i - j):
                    last = k == i - j - 1
                    name = f"{prefix}.fuse_layers.{i}.{j}.{k}"
                    t = conv2d(t, channels[i] if last else channels[j], 3, f"{name}.0", strides=2)
                    t = batch_norm(t, f"{name}.1", sync)
                    if not last:
                        t = relu(t, f"{name}.relu")
            terms.append(t)
        y = keras.layers.Add(name=f"{prefix}.fuse.{i}.add")(terms)
        fused.append(relu(y, f"{prefix}.fuse.{i}.relu"))
    return fused


def _stage(xs, stage, index, gsto, gate_style, sync):
    for m in range(stage["num_modules"]):
        xs = _hr_module(xs, stage, f"stage{index}.{m}", gsto, gate_style, sync)
    return xs


def _seg_head(xs, num_classes, prefix, sync):
    """Concat all branches upsampled to branch 0 -> conv1x1 -> BN -> ReLU -> conv1x1 to K (HRNetV2 head).

    The first conv is evaluated per branch before upsampling (:class:`UpsampleConcatConv1x1`, same weights, same
    result up to rounding): 8x fewer multiply-adds for HRNetV2's head, 3-4x for GSTO's auxiliary heads.
    """
    channels = sum(x.shape[-1] for x in xs)
    x = UpsampleConcatConv1x1(channels, use_bias=True, name=f"{prefix}.0")(xs)
    x = batch_norm(x, f"{prefix}.1", sync)
    x = relu(x, f"{prefix}.2")
    # Logits in float32 even under a mixed-precision policy (stable softmax / loss); float64 in a float64 model.
    return conv2d(x, num_classes, 1, f"{prefix}.3", use_bias=True, dtype=out_names.logits_dtype())


def _class_map_gate(logits, name, num_downsamples, sync):
    """att{2,3}: conv3x3(K->1) s1, then ``num_downsamples`` conv3x3(1->1) s2, each +BN+ReLU; sigmoid."""
    g = conv_bn(logits, 1, 3, f"{name}.0.0", f"{name}.0.1", sync=sync)
    for n in range(1, num_downsamples + 1):
        g = conv_bn(g, 1, 3, f"{name}.{n}.0", f"{name}.{n}.1", strides=2, sync=sync)
    return keras.layers.Activation("sigmoid", name=f"{name}.sigmoid")(g)


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
    sync = sync_batchnorm
    x = conv_bn(inputs, 64, 3, "conv1", "bn1", strides=2, sync=sync)
    x = conv_bn(x, 64, 3, "conv2", "bn2", strides=2, sync=sync)
    x = _layer1(x, spec["stage1"], sync)

    aux = {}
    xs = _transition([x], spec["stage2"]["num_channels"], 1, sync)
    for s in (2, 3):
        xs = _stage(xs, spec[f"stage{s}"], s, "fusion_gates" in parts, gate_style, sync)
        gated = None
        if "aux_heads" in parts:
            aux_name = out_names.AUX_STAGE2 if s == 2 else out_names.AUX_STAGE3
            aux[aux_name] = _seg_head(xs, num_classes, f"last_layer_stage{s}", sync)
        if "transition_gates" in parts:  # stage-s class map -> att{s}.{s} gate on the lowest branch
            gate = _class_map_gate(aux[aux_name], f"att{s}.{s}", s - 1, sync)
            gated = keras.layers.Multiply(name=f"att{s}.{s}.mul")([xs[-1], gate])
        xs = _transition(xs, spec[f"stage{s + 1}"]["num_channels"], s, sync, new_branch_input=gated)
    xs = _stage(xs, spec["stage4"], 4, "fusion_gates" in parts, gate_style, sync)
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
