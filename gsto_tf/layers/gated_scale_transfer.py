"""GatedScaleTransfer: the Gated Scale-Transfer Operation (GSTO) as one Keras layer.

A scale-transfer operation (STO) is a channel transform followed by a change of scale (paper, eqs. 1-2):
``F' = ST(sum_m w_km F_m)``. GSTO first multiplies the input by a spatial gate, ``F^g = g * F``, so the network
can choose, per location, what is transferred to another scale. The three steps, in order:

1. gate (``SpatialGate``): ``"unsupervised"`` from the input feature; ``"supervised"`` from a class-score map,
   either passed in (``class_scores=``) or predicted by the layer itself with a 1x1 conv and returned so that a
   loss can supervise it; ``None`` for the plain STO baseline;
2. channel transform: 1x1 conv (+ BN) (+ activation). With ``scale="down", down_method="conv"`` the channel
   transform *is* the strided 3x3 conv (PyTorch padding: 1 on every side), as in HRNet's downsampling paths;
3. scale change: ``"same"``; ``"down"`` by an integer ``factor`` (strided conv, average or max pooling);
   ``"up"`` by bilinear resize (align_corners=False) to ``reference``'s size or by ``factor``.

The transform runs *before* an upsampling and the pooling *after* the 1x1 transform, which is also the cheap order.
"""

import keras

from gsto_tf.layers.batch_norm import FusedBatchNormalization
from gsto_tf.layers.resize import BilinearResize, resize_bilinear, spatial_size
from gsto_tf.layers.spatial_gate import GATE_STYLES, SpatialGate

SCALES = ("same", "down", "up")
DOWN_METHODS = ("conv", "avg_pool", "max_pool")
GATES = ("unsupervised", "supervised", None)


@keras.saving.register_keras_serializable(package="gsto_tf")
class GatedScaleTransfer(keras.layers.Layer):
    """Gate -> 1x1 channel transform -> scale change.

    Args:
        filters: output channels of the channel transform.
        scale: ``"same"``, ``"down"`` or ``"up"``.
        factor: integer down factor (``scale="down"``, default 2), or the up factor when no ``reference`` is passed
            (output size ``floor(H * factor)`` like PyTorch's ``scale_factor``).
        down_method: ``"conv"`` (3x3 conv, stride ``factor``, padding 1), ``"avg_pool"`` or ``"max_pool"``
            (window = stride = ``factor``, floor mode).
        gate: ``"unsupervised"``, ``"supervised"`` or ``None`` (plain STO).
        gate_style: ``"official"`` (sigmoid(ReLU(BN(conv)))) or ``"paper"`` (sigmoid(conv + bias)).
        num_classes: classes of the self-predicted class-score map (``gate="supervised"`` without
            ``class_scores``).
        use_bn: BatchNormalization after the channel transform.
        activation: optional activation after the channel transform (e.g. ``"relu"``).
        sync_batchnorm: synchronized BatchNormalization.

    Call: ``layer(x, reference=None, class_scores=None, return_gate=False, training=None)``.
    Returns the transferred feature; with a self-predicted supervised gate, ``(output, class_scores)``; with
    ``return_gate=True`` the gate map ``[N, H, W, 1]`` (at ``x``'s resolution) is appended to the result
    (all ones for ``gate=None``); :meth:`compute_gate` returns the gate alone.
    """

    def __init__(
        self,
        filters,
        scale="same",
        factor=None,
        down_method="conv",
        gate="unsupervised",
        gate_style="official",
        num_classes=None,
        use_bn=True,
        activation=None,
        sync_batchnorm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if scale not in SCALES:
            raise ValueError(f"GatedScaleTransfer: `scale` must be one of {SCALES}, got {scale!r}.")
        if down_method not in DOWN_METHODS:
            raise ValueError(f"GatedScaleTransfer: `down_method` must be one of {DOWN_METHODS}, got {down_method!r}.")
        if gate not in GATES:
            raise ValueError(f"GatedScaleTransfer: `gate` must be one of {GATES}, got {gate!r}.")
        if gate_style not in GATE_STYLES:
            raise ValueError(f"GatedScaleTransfer: `gate_style` must be one of {GATE_STYLES}, got {gate_style!r}.")
        if int(filters) <= 0:
            raise ValueError(f"GatedScaleTransfer: `filters` must be a positive int, got {filters!r}.")
        if scale == "down":
            factor = 2 if factor is None else factor
            if int(factor) != factor or factor < 2:
                raise ValueError(f"GatedScaleTransfer: a down `factor` must be an int >= 2, got {factor!r}.")
            factor = int(factor)
        elif scale == "up" and factor is not None and float(factor) <= 0:
            raise ValueError(f"GatedScaleTransfer: an up `factor` must be > 0, got {factor!r}.")
        elif scale == "same" and factor not in (None, 1):
            raise ValueError(f"GatedScaleTransfer: `factor` has no meaning for scale='same', got {factor!r}.")
        if num_classes is not None and int(num_classes) <= 0:
            raise ValueError(f"GatedScaleTransfer: `num_classes` must be a positive int, got {num_classes!r}.")
        self.filters = int(filters)
        self.scale = scale
        self.factor = factor
        self.down_method = down_method
        self.gate = gate
        self.gate_style = gate_style
        self.num_classes = None if num_classes is None else int(num_classes)
        self.use_bn = bool(use_bn)
        self.activation = keras.activations.get(activation)
        self._activation_name = activation
        self.sync_batchnorm = bool(sync_batchnorm)

        policy = self.dtype_policy
        self.gate_layer = None
        self.class_score_layer = None
        if gate is not None:
            self.gate_layer = SpatialGate(gate_style, sync_batchnorm=sync_batchnorm, dtype=policy, name="gate")
        if gate == "supervised" and self.num_classes is not None:
            # Predicts the class-score map P that drives the gate (eq. 5); returned so a loss can supervise it.
            self.class_score_layer = keras.layers.Conv2D(self.num_classes, 1, dtype=policy, name="class_scores")
        # Resizes given class scores to x's size; a layer (not a raw op) so compute_gate also works symbolically.
        self.scores_resize = BilinearResize(dtype=policy, name="scores_resize") if gate == "supervised" else None
        strided = scale == "down" and down_method == "conv"
        self.pad = keras.layers.ZeroPadding2D(1, dtype=policy, name="pad") if strided else None
        self.transform = keras.layers.Conv2D(
            self.filters,
            3 if strided else 1,
            strides=self.factor if strided else 1,
            padding="valid",
            use_bias=not self.use_bn,
            dtype=policy,
            name="transform",
        )
        self.bn = (
            FusedBatchNormalization(
                momentum=0.99, epsilon=1e-5, synchronized=self.sync_batchnorm, dtype=policy, name="bn"
            )
            if self.use_bn
            else None
        )
        self.pool = None
        if scale == "down" and down_method != "conv":
            pool_cls = keras.layers.AveragePooling2D if down_method == "avg_pool" else keras.layers.MaxPooling2D
            self.pool = pool_cls(self.factor, strides=self.factor, padding="valid", dtype=policy, name="pool")

    def build(self, input_shape):
        if self.gate_layer is not None and self.gate == "unsupervised":
            self.gate_layer.build(input_shape)
        if self.class_score_layer is not None:
            self.class_score_layer.build(input_shape)
            self.gate_layer.build(tuple(input_shape[:-1]) + (self.num_classes,))
        shape = tuple(input_shape)
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        self.transform.build(shape)
        if self.bn is not None:
            self.bn.build(tuple(shape[:-1]) + (self.filters,))
        self.built = True

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
        else:
            class_scores = self.scores_resize([keras.ops.cast(class_scores, x.dtype), x])
        return self.gate_layer(class_scores, training=training), predicted

    def compute_gate(self, x, class_scores=None, training=False):
        """The gate map ``[N, H, W, 1]`` this layer would apply to ``x`` (for visualisation); ``None`` for
        ``gate=None``. Same as the last element of ``layer(x, ..., return_gate=True)``."""
        return self._gate_map(x, class_scores, training)[0]

    def call(self, x, reference=None, class_scores=None, return_gate=False, training=None):
        gate, predicted = self._gate_map(x, class_scores, training)
        y = x if gate is None else x * gate
        if self.pad is not None:
            y = self.pad(y)
        y = self.transform(y)
        if self.bn is not None:
            y = self.bn(y, training=training)
        if self.activation is not None:
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
                "activation": self._activation_name,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config
