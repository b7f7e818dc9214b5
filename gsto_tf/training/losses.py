"""Segmentation losses of HRNet (lib/core/criterion.py): cross-entropy with ignore label, class weights and OHEM.

Logits are bilinearly resized to the label size first (:func:`gsto_tf.layers.resize.resize_bilinear`), then
the loss is computed in float32 whatever the compute dtype (bfloat16 / float16 logits included), or in float64 for
float64 logits (a float64 model, trained with ``keras.config.set_floatx("float64")``: Keras casts the logits to
floatx before the loss). Conventions follow PyTorch / HRNet:

* plain / weighted CE = ``sum_p w[y_p] * ce_p / sum_p w[y_p]`` over valid (non-ignore) pixels
  (``nn.CrossEntropyLoss(weight, ignore_index)``);
* OHEM keeps the valid pixels whose ground-truth probability is below ``max(p_sorted[min_kept], thresh)`` and
  averages their (weighted) CE values — the unweighted mean of the kept losses, as HRNet's OhemCrossEntropy.

Auxiliary outputs are combined by Keras (``loss_weights`` from :mod:`gsto_tf.models.outputs`).
"""

import keras
import tensorflow as tf

from gsto_tf.layers.resize import resize_bilinear

@tf.custom_gradient
def pixel_cross_entropy(logits, labels):
    """Softmax cross-entropy per row of ``logits`` [P, K] for int ``labels`` [P] in [0, K); returns [P].

    The same values as ``tf.nn.sparse_softmax_cross_entropy_with_logits`` (``logsumexp(z) - z_y``) with the
    gradient ``dce * (softmax(z) - onehot(y))`` written out, so the backward pass is one elementwise expression
    over the saved softmax instead of TensorFlow's generic chain; that matters because the loss runs once per
    output at label resolution, three times per GSTO-HRNet step. Labels outside [0, K) raise InvalidArgumentError
    (from the gather).
    """
    shift = tf.reduce_max(logits, axis=-1, keepdims=True)
    exp = tf.exp(logits - shift)
    total = tf.reduce_sum(exp, axis=-1, keepdims=True)
    picked = tf.gather(logits, labels, axis=1, batch_dims=1)
    ce = tf.math.log(total[:, 0]) + shift[:, 0] - picked

    def grad(d_ce):
        onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
        return d_ce[:, None] * (exp / total - onehot), None

    return ce, grad


@keras.saving.register_keras_serializable(package="gsto_tf")
class SegmentationLoss(keras.losses.Loss):
    """CE over valid pixels of ``y_true`` [B, H, W] for logits ``y_pred`` [B, h, w, K] of any resolution."""

    def __init__(self, num_classes, ignore_label=255, class_weights=None, ohem=False, ohem_thresh=0.9,
                 ohem_min_kept=131072, name="segmentation_loss", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if len(class_weights) != self.num_classes:
                raise ValueError(f"class_weights has {len(class_weights)} entries, expected {self.num_classes}")
        self.class_weights = class_weights
        self.ohem = bool(ohem)
        self.ohem_thresh = float(ohem_thresh)
        self.ohem_min_kept = int(ohem_min_kept)

    def call(self, y_true, y_pred):
        # A shape-[1] result, not a scalar: Keras' reduction returns scalars untouched and would then skip
        # `scale_loss_for_distribution`, so with R replicas the summed gradients would be R times too large.
        return tf.reshape(self._mean_loss(y_true, y_pred), [1])

    def _mean_loss(self, y_true, y_pred):
        labels = tf.cast(y_true, tf.int32)
        if labels.shape.rank == 4:
            labels = labels[..., 0]
        dtype = tf.float64 if y_pred.dtype == tf.float64 else tf.float32
        logits = resize_bilinear(tf.cast(y_pred, dtype), tf.shape(labels)[1:3])
        labels = tf.reshape(labels, [-1])
        logits = tf.reshape(logits, [-1, self.num_classes])
        # Ignored pixels are masked with weights, not removed with boolean_mask: gathering the [pixels, K] logits
        # and scattering their gradient back copies the whole label-resolution map twice more, a cost GSTO-HRNet
        # pays three times (final + two auxiliary outputs).
        valid = tf.not_equal(labels, self.ignore_label)
        safe_labels = tf.where(valid, labels, 0)
        ce = pixel_cross_entropy(logits, safe_labels)
        weights = tf.cast(valid, dtype)
        if self.class_weights is not None:
            weights *= tf.gather(tf.constant(self.class_weights, dtype), safe_labels)
        if not self.ohem:
            return tf.math.divide_no_nan(tf.reduce_sum(weights * ce), tf.reduce_sum(weights))
        prob_gt = tf.exp(-ce)  # softmax probability of the ground-truth class
        n_valid = tf.reduce_sum(tf.cast(valid, tf.int32))
        # Ignored pixels sort after every probability (<= 1), so the first n_valid entries are the valid ones.
        sorted_prob = tf.sort(tf.where(valid, prob_gt, 2.0))
        kth = tf.gather(sorted_prob, tf.minimum(self.ohem_min_kept, tf.maximum(n_valid - 1, 0)))
        threshold = tf.maximum(kth, self.ohem_thresh)
        kept = tf.cast(tf.logical_and(valid, prob_gt < threshold), dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(kept * weights * ce), tf.reduce_sum(kept))

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "class_weights": self.class_weights,
            "ohem": self.ohem,
            "ohem_thresh": self.ohem_thresh,
            "ohem_min_kept": self.ohem_min_kept,
            "name": self.name,
        }
