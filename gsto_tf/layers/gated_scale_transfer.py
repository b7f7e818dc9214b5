"""GatedScaleTransfer: the Gated Scale-Transfer Operation (GSTO) as one Keras layer.

A scale-transfer operation (STO) is a channel transform followed by a change of scale (paper, eqs. 1-2):
``F' = ST(sum_m w_km F_m)``. GSTO first multiplies the input by a spatial gate, ``F^g = g * F``, so the network
can choose, per location, what is transferred to another scale. The three steps, in order:

1. gate (:class:`~gsto_tf.layers.SpatialGate`): ``"unsupervised"`` from the input feature; ``"supervised"`` from a
   class-score map, either passed in (``class_scores=``) or predicted by the layer itself with a 1x1 conv and
   returned so that a loss can supervise it; ``None`` for the plain STO baseline;
2. channel transform: 1x1 conv (+ BN) (+ activation), or none (``filters=None``). With ``scale="down"`` and a
   strided-conv ``down_method`` the channel transform *is* the strided 3x3 conv (PyTorch padding: 1 on every side),
   as in HRNet's downsampling paths;
3. scale change: ``"same"``; ``"down"`` by an integer ``factor`` (strided conv(s), average or max pooling);
   ``"up"`` by bilinear resize (align_corners=False) to ``reference``'s size or by ``factor``.

The transform runs *before* an upsampling and the pooling *after* the 1x1 transform, which is also the cheap order.

Every gated scale transfer of the models is this layer: HRNet's fuse paths (``T_ij`` of output branch ``i`` from
input branch ``j``, gated for GSTO-HRNet), GSTO-HRNet's class-map gated transitions, and the PPM / ASPP transfers.
A layer inside a model maps its weights to the official checkpoint keys given by ``gate_key`` / ``transform_key``
(:meth:`checkpoint_sublayers`), which the generic checkpoint loader reads.
"""

import math

import keras

from gsto_tf.layers.batch_norm import (
    TORCH_BN_EPSILON,
    TORCH_BN_MOMENTUM,
    FusedBatchNormalization,
    folded_conv_weights,
)
from gsto_tf.layers.resize import BilinearResize, resize_bilinear, spatial_size
from gsto_tf.keras_internals import build_shapes
from gsto_tf.layers.spatial_gate import GATE_STYLES, SpatialGate

SCALES = ("same", "down", "up")
DOWN_METHODS = ("conv", "strided_conv", "avg_pool", "max_pool")
GATES = ("unsupervised", "supervised", None)


@keras.saving.register_keras_serializable(package="gsto_tf")
class GatedScaleTransfer(keras.layers.Layer):
    """Gate -> channel transform -> scale change.

    Args:
        filters: output channels of the channel transform; ``None``: no transform (identity; gate and
            resize / pooling only; not with a strided-conv ``down_method``).
        scale: ``"same"``, ``"down"`` or ``"up"``.
        factor: integer down factor (``scale="down"``, default 2), or the up factor when no ``reference`` is passed
            (output size ``floor(H * factor)`` like PyTorch's ``scale_factor``).
        down_method: ``"conv"`` (one 3x3 conv, stride ``factor``, padding 1); ``"strided_conv"`` (HRNet's down
            path: ``log2(factor)`` steps of 3x3 conv stride 2 + BN, ReLU between steps but not after the last;
            the steps before the last keep the input width; ``factor`` a power of 2); ``"avg_pool"`` or
            ``"max_pool"`` (window = stride = ``factor``, floor mode).
        gate: ``"unsupervised"``, ``"supervised"`` or ``None`` (plain STO).
        gate_style: ``"official"`` (sigmoid(ReLU(BN(conv)))) or ``"paper"`` (sigmoid(conv + bias)).
        gate_kernel_size, gate_downsample: the SpatialGate's kernel size and extra stride-2 steps (3 and ``n`` for
            GSTO-HRNet's class-map gates, which bring the given class scores down to ``x``'s scale themselves).
        num_classes: classes of the self-predicted class-score map (``gate="supervised"`` without
            ``class_scores``).
        use_bn: BatchNormalization after the channel transform (after every strided conv of ``"strided_conv"``).
        activation: optional activation after the channel transform (e.g. ``"relu"``).
        sync_batchnorm: synchronized BatchNormalization.
        gate_key, transform_key: checkpoint key prefixes of the gate and of the transform (default
            ``{name}.gate`` / ``{name}.transform``). The transform's conv / BN are ``{transform_key}.0`` / ``.1``;
            step ``k`` of ``"strided_conv"`` is ``{transform_key}.{k}.0`` / ``.1`` (HRNet's ``fuse_layers`` keys).
        resize_class_scores: bilinearly resize given ``class_scores`` to ``x``'s size (default); ``False`` when the
            caller passes them at ``x``'s size already (no resize op in the graph).
        gate_batch_norm_folded: the gate's BNs are folded into its convs (inference only; see
            :meth:`fold_batch_norm`, which also folds the transform's BNs: ``use_bn=False`` with conv biases).

    Call: ``layer(x, reference=None, class_scores=None, return_gate=False, training=None)``.
    Given ``class_scores`` are bilinearly resized to ``x``'s size, unless ``resize_class_scores=False`` or the gate
    downsamples them itself (``gate_downsample > 0``; then they must be ``2**gate_downsample`` times ``x``'s size)
    or they already have ``x``'s static size. Returns the transferred feature; with a self-predicted supervised gate,
    ``(output, class_scores)``; with ``return_gate=True`` the gate map ``[N, H, W, 1]`` (at ``x``'s resolution)
    is appended to the result (all ones for ``gate=None``); :meth:`compute_gate` returns the gate alone.
    """

    def __init__(
        self,
        filters=None,
        scale="same",
        factor=None,
        down_method="conv",
        gate="unsupervised",
        gate_style="official",
        num_classes=None,
        use_bn=True,
        activation=None,
        sync_batchnorm=False,
        gate_kernel_size=1,
        gate_downsample=0,
        gate_key=None,
        transform_key=None,
        resize_class_scores=True,
        gate_batch_norm_folded=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        factor = _checked_options(filters, scale, factor, down_method, gate, gate_style, activation, num_classes,
                                  gate_kernel_size, gate_downsample)
        self.filters = None if filters is None else int(filters)
        self.scale = scale
        self.factor = factor
        self.down_method = down_method
        self.gate = gate
        self.gate_style = gate_style
        self.num_classes = None if num_classes is None else int(num_classes)
        self.use_bn = bool(use_bn) and self.filters is not None
        self.activation = keras.activations.get(activation)
        self.activation_name = activation  # as given (a name or None), for get_config
        self.sync_batchnorm = bool(sync_batchnorm)
        self.gate_kernel_size = int(gate_kernel_size)
        self.gate_downsample = int(gate_downsample)
        self.gate_key = gate_key
        self.transform_key = transform_key
        self.resize_class_scores = bool(resize_class_scores)
        self.gate_batch_norm_folded = bool(gate_batch_norm_folded)
        policy = self.dtype_policy

        # 1. The gate g (paper eqs. 3-5), from x or from a class-score map.
        self.gate_layer = None
        if gate is not None:
            self.gate_layer = SpatialGate(gate_style, sync_batchnorm=sync_batchnorm, kernel_size=gate_kernel_size,
                                          downsample=gate_downsample, batch_norm_folded=gate_batch_norm_folded,
                                          dtype=policy, name="gate")
        # A supervised gate without given class scores predicts them (eq. 5), returned so a loss can supervise them.
        self.class_score_layer = None
        if gate == "supervised" and self.num_classes is not None:
            self.class_score_layer = keras.layers.Conv2D(self.num_classes, 1, dtype=policy, name="class_scores")
        # Given class scores are resized to x's size by a layer (not a raw op) so compute_gate works symbolically.
        self.scores_resize = None
        if gate == "supervised" and not gate_downsample and self.resize_class_scores:
            self.scores_resize = BilinearResize(dtype=policy, name="scores_resize")

        # 2. The channel transform: conv k (after ZeroPadding pad k for strided convs), then BN k.
        self._pads, self._convs, self._bns = [], [], []
        if self.filters is not None:
            self._make_transform(policy)

        # 3. The scale change: pooling here; strided convs are the transform; "up" resizes in call().
        self.pool = None
        if scale == "down" and down_method in ("avg_pool", "max_pool"):
            pool_cls = keras.layers.AveragePooling2D if down_method == "avg_pool" else keras.layers.MaxPooling2D
            self.pool = pool_cls(self.factor, strides=self.factor, padding="valid", dtype=policy, name="pool")

    @property
    def steps(self):
        """``[(pad or None, conv, bn or None)]``: the channel transform, one entry per (strided) conv."""
        pads = self._pads or [None] * len(self._convs)
        bns = self._bns or [None] * len(self._convs)
        return list(zip(pads, self._convs, bns))

    @property
    def transform(self):
        """The (last) conv of the channel transform, or None for ``filters=None``."""
        return self._convs[-1] if self._convs else None

    def _make_transform(self, policy):
        strided = self.scale == "down" and self.down_method in ("conv", "strided_conv")
        count = int(math.log2(self.factor)) if strided and self.down_method == "strided_conv" else 1
        for k in range(count):
            suffix = "" if count == 1 else f".{k}"
            if strided:  # PyTorch padding 1 on every side (Keras 'same' pads bottom/right only on even sizes)
                self._pads.append(keras.layers.ZeroPadding2D(1, dtype=policy, name=f"pad{suffix}"))
            conv = keras.layers.Conv2D(
                self.filters,  # steps before the last keep the input width: set in build
                3 if strided else 1,
                strides=(self.factor if count == 1 else 2) if strided else 1,
                padding="valid",
                use_bias=not self.use_bn,
                dtype=policy,
                name=f"transform{suffix}",
            )
            self._convs.append(conv)
            if self.use_bn:
                self._bns.append(FusedBatchNormalization(momentum=TORCH_BN_MOMENTUM, epsilon=TORCH_BN_EPSILON,
                                                         synchronized=self.sync_batchnorm, dtype=policy,
                                                         name=f"bn{suffix}"))

    def build(self, x_shape, reference_shape=None, class_scores_shape=None):
        input_shape = tuple(x_shape)
        if self.gate_layer is not None and self.gate == "unsupervised":
            self.gate_layer.build(input_shape)
        if self.class_score_layer is not None:
            self.class_score_layer.build(input_shape)
            self.gate_layer.build(tuple(input_shape[:-1]) + (self.num_classes,))
        elif self.gate == "supervised" and class_scores_shape is not None:
            self.gate_layer.build(tuple(class_scores_shape))
        shape = input_shape
        for k, (pad, conv, bn) in enumerate(self.steps):
            if k < len(self.steps) - 1:
                conv.filters = int(input_shape[-1])  # HRNet: intermediate steps keep the input width
            if pad is not None:
                shape = pad.compute_output_shape(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if bn is not None:
                bn.build(shape)
        self.built = True

    def checkpoint_sublayers(self):
        """``{checkpoint key prefix: sublayer}`` for every weight-bearing sublayer (prefixes relative to the
        layer's parent, like a layer name): the gate at ``gate_key``, the class-score conv at
        ``{name}.class_scores``, the transform at ``transform_key`` (see the class docstring)."""
        out = {}
        if self.gate_layer is not None:
            out[self.gate_key or f"{self.name}.gate"] = self.gate_layer
        if self.class_score_layer is not None:
            out[f"{self.name}.class_scores"] = self.class_score_layer
        prefix = self.transform_key or f"{self.name}.transform"
        chain = self.scale == "down" and self.down_method == "strided_conv"  # keys per step, also for one step
        for k, (_, conv, bn) in enumerate(self.steps):
            step = f"{prefix}.{k}" if chain else prefix
            out[f"{step}.0"] = conv
            if bn is not None:
                out[f"{step}.1"] = bn
        return out

    def _gate_map(self, x, class_scores, training):
        if self.gate is None:
            return None, None
        if self.gate == "unsupervised":
            return self.gate_layer(x, training=training), None
        predicted = None
        if class_scores is None:
            if self.class_score_layer is None:
                raise ValueError(
                    f"GatedScaleTransfer '{self.name}': gate='supervised' needs either `class_scores=` at call "
                    "time or `num_classes` at construction (to predict the class-score map itself)."
                )
            predicted = self.class_score_layer(x)
            class_scores = predicted
        elif self.scores_resize is not None and not _same_static_size(class_scores, x):
            class_scores = self.scores_resize([keras.ops.cast(class_scores, x.dtype), x])
        return self.gate_layer(class_scores, training=training), predicted

    def compute_gate(self, x, class_scores=None, training=False):
        """The gate map ``[N, H, W, 1]`` this layer would apply to ``x`` (for visualisation); ``None`` for
        ``gate=None``. Same as the last element of ``layer(x, ..., return_gate=True)``."""
        return self._gate_map(x, class_scores, training)[0]

    def call(self, x, reference=None, class_scores=None, return_gate=False, training=None):
        gate, predicted = self._gate_map(x, class_scores, training)
        y = x if gate is None else x * gate
        for k, (pad, conv, bn) in enumerate(self.steps):
            if pad is not None:
                y = pad(y)
            y = conv(y)
            if bn is not None:
                y = bn(y, training=training)
            if k < len(self.steps) - 1:
                y = keras.ops.relu(y)
        if self.activation_name is not None:
            y = self.activation(y)
        if self.pool is not None:
            y = self.pool(y)
        if self.scale == "up":
            if reference is not None:
                y = resize_bilinear(y, spatial_size(reference))
            elif self.factor is not None:
                hw = keras.ops.cast(spatial_size(x), "float32") * float(self.factor)
                y = resize_bilinear(y, keras.ops.cast(keras.ops.floor(hw), "int32"))
            else:
                raise ValueError(
                    f"GatedScaleTransfer '{self.name}': scale='up' needs `reference=` at call time or `factor`."
                )
        outputs = [y]
        if predicted is not None:
            outputs.append(predicted)
        if return_gate:
            outputs.append(gate if gate is not None else keras.ops.ones_like(x[..., :1]))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def fold_batch_norm(self, dtype=None):
        """An equivalent new layer for inference with every BN (transform and gate) folded into its conv, weights
        set: the ``fold_batch_norm()`` protocol of the model-level BN folding. The transform convs get biases
        (``use_bn=False``); the ReLUs between strided steps and the activation stay. ``dtype``: the new layer's
        dtype policy (default: this layer's)."""

        folded = GatedScaleTransfer.from_config({**self.get_config(), "use_bn": False, "gate_batch_norm_folded": True,
                                                 **({"dtype": dtype} if dtype is not None else {})})
        folded.build(**build_shapes(self))
        if self.gate_layer is not None:
            folded.gate_layer.load_folded_weights(self.gate_layer)
        if self.class_score_layer is not None:
            folded.class_score_layer.set_weights(self.class_score_layer.get_weights())
        for (_, conv, bn), (_, new_conv, _) in zip(self.steps, folded.steps):
            if bn is not None:
                kernel, bias = folded_conv_weights(conv, bn)
                new_conv.set_weights([kernel, bias])
            else:
                new_conv.set_weights(conv.get_weights())
        return folded

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "scale": self.scale,
                "factor": self.factor,
                "down_method": self.down_method,
                "gate": self.gate,
                "gate_style": self.gate_style,
                "num_classes": self.num_classes,
                "use_bn": self.use_bn,
                "activation": self.activation_name,
                "sync_batchnorm": self.sync_batchnorm,
                "gate_kernel_size": self.gate_kernel_size,
                "gate_downsample": self.gate_downsample,
                "gate_key": self.gate_key,
                "transform_key": self.transform_key,
                "resize_class_scores": self.resize_class_scores,
                "gate_batch_norm_folded": self.gate_batch_norm_folded,
            }
        )
        return config


def _checked_options(filters, scale, factor, down_method, gate, gate_style, activation, num_classes,
                     gate_kernel_size, gate_downsample):
    """Refuse option combinations that have no meaning (naming the argument); returns the effective ``factor``
    (2 by default for ``scale="down"``)."""
    def refuse(message):
        raise ValueError(f"GatedScaleTransfer: {message}")

    if scale not in SCALES:
        refuse(f"`scale` must be one of {SCALES}, got {scale!r}.")
    if down_method not in DOWN_METHODS:
        refuse(f"`down_method` must be one of {DOWN_METHODS}, got {down_method!r}.")
    if gate not in GATES:
        refuse(f"`gate` must be one of {GATES}, got {gate!r}.")
    if gate_style not in GATE_STYLES:
        refuse(f"`gate_style` must be one of {GATE_STYLES}, got {gate_style!r}.")
    if filters is not None and (int(filters) != filters or int(filters) <= 0):
        refuse(f"`filters` must be a positive int or None, got {filters!r}.")
    if scale == "down":
        factor = 2 if factor is None else factor
        if int(factor) != factor or factor < 2:
            refuse(f"a down `factor` must be an int >= 2, got {factor!r}.")
        factor = int(factor)
        if down_method == "strided_conv" and factor & (factor - 1):
            refuse(f"down_method='strided_conv' halves the size per step; `factor` must be a power of 2, got "
                   f"{factor!r}.")
        if down_method in ("conv", "strided_conv") and filters is None:
            refuse(f"down_method={down_method!r} is a strided conv; it needs `filters` (filters=None is the "
                   "identity transform).")
    elif scale == "up" and factor is not None and float(factor) <= 0:
        refuse(f"an up `factor` must be > 0, got {factor!r}.")
    elif scale == "same" and factor not in (None, 1):
        refuse(f"`factor` has no meaning for scale='same', got {factor!r}.")
    if filters is None and activation is not None:
        refuse("`activation` follows the channel transform; filters=None has none.")
    if num_classes is not None and int(num_classes) <= 0:
        refuse(f"`num_classes` must be a positive int, got {num_classes!r}.")
    if (gate_kernel_size != 1 or gate_downsample) and gate != "supervised":
        refuse("`gate_kernel_size` / `gate_downsample` shape a class-map gate; they need gate='supervised', got "
               f"gate={gate!r}.")
    return factor


def _same_static_size(a, b):
    """True when both tensors have the same, fully known spatial size (no resize needed)."""
    ha, wa = a.shape[1:3]
    hb, wb = b.shape[1:3]
    return None not in (ha, wa, hb, wb) and (ha, wa) == (hb, wb)
