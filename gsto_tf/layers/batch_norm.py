"""BatchNormalization with PyTorch's running-variance rule on every path, and a fused training step where it helps.

PyTorch's ``BatchNorm2d`` normalises a training batch by its *biased* variance but updates ``running_var`` with the
*unbiased* one (``n / (n - 1)``, Bessel's correction, ``n`` = values per channel over the whole batch); the official
HRNet / GSTO training therefore does so for every BN, the one-channel gate BNs included, and with synchronized BN
over the batch of all replicas. Keras 3 updates the moving variance with the biased batch variance.
``FusedBatchNormalization`` takes Keras' arguments, weights and config and follows PyTorch:

* the output and its gradients are those of Keras' BN (normalisation by the biased batch variance, tested);
* the moving variance is updated with the unbiased batch variance on every training path; moving mean and
  momentum are unchanged.

Training paths:

* fused: NHWC rank-4 float32 / bfloat16 / float16 maps with more than one channel, ``center`` and ``scale``, no
  mask, not synchronized: TensorFlow's ``FusedBatchNormV3``, one kernel forward and one backward instead of
  Keras' chain of composed ops (fewer passes over the activations; measured in benchmarks/speed.py). Given the
  moving statistics and ``exponential_avg_factor = 1 - momentum`` it also returns them updated with the batch
  mean and the Bessel-corrected batch variance, so the update costs no further op.
* composed: everything else. Single-channel maps (GSTO's gates: the fused kernel is slower there), float64 (the
  fused kernel has no float64 kernel; this path is exact float64), ``synchronized=True`` (the moments of the
  global batch: sums and counts are all-reduced over the replicas, then the squared deviations from the global
  mean, two passes rather than ``E[x^2] - E[x]^2``), masks (moments over the unmasked positions). The output is
  the normalisation by the batch mean and biased variance; without mask or synchronization (the one-channel
  gates, float64) batch norm's gradient is written out (:func:`_normalise_by_batch`), otherwise it is Keras'
  ``batch_normalization`` differentiated through the moments. The count ``n`` that corrects the moving variance
  is the number of values per channel in the (global, unmasked) batch.

Inference, frozen layers (``trainable=False``) and batch renormalisation run Keras' own code.

Also here, as BatchNorm knowledge every layer and model shares: PyTorch's BN defaults in Keras' terms
(:data:`TORCH_BN_MOMENTUM`, :data:`TORCH_BN_EPSILON`) and the arithmetic of folding an inference BN into the conv
before it (:func:`fold_conv_bn_weights`, :func:`folded_conv_weights`; the graph rewrite that uses it on whole
models lives with the models, which import the layers, never the other way round).
"""

import keras
import numpy as np
import tensorflow as tf

_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
# PyTorch's BatchNorm2d as the official HRNet / GSTO code configures it (BN_MOMENTUM = 0.01, eps = 1e-5). Keras'
# momentum is the weight of the old moving value: 1 - 0.01.
TORCH_BN_MOMENTUM = 0.99
TORCH_BN_EPSILON = 1e-5
DEPTHWISE_CONV_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


@keras.saving.register_keras_serializable(package="gsto_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` (same arguments, weights and config) with PyTorch's unbiased
    moving-variance update and a fused training step."""

    def _uses_fused_training(self, inputs, training, mask):
        return bool(
            training
            and self.trainable
            and mask is None
            and not self.synchronized
            and not self.renorm
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.shape[-1] is not None
            and inputs.shape[-1] > 1
            and inputs.dtype in _FUSED_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        if self._uses_fused_training(inputs, training, mask):
            return self._fused_training_step(inputs)
        return self._composed_training_step(inputs, mask)

    def _fused_training_step(self, x):
        # The kernel takes float32 scale/offset/statistics with float32 / bfloat16 / float16 x and returns x's dtype.
        # Given the moving statistics and exponential_avg_factor = 1 - momentum, it also returns them updated
        # with the batch mean and the Bessel-corrected batch variance (PyTorch's rule): one op instead of a dozen.
        y, moving_mean, moving_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=tf.cast(self.gamma, tf.float32),
            offset=tf.cast(self.beta, tf.float32),
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0 - self.momentum,
            data_format="NHWC",
            is_training=True,
        )
        self.moving_mean.assign(tf.cast(moving_mean, self.moving_mean.dtype))
        self.moving_variance.assign(tf.cast(moving_variance, self.moving_variance.dtype))
        return tf.cast(y, self.compute_dtype)

    def _composed_training_step(self, inputs, mask):
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                f"FusedBatchNormalization '{self.name}': the mask must have one dimension less than the inputs; "
                f"got mask.shape={mask.shape}, inputs.shape={inputs.shape}"
            )
        # float64 stays float64; float16 / bfloat16 statistics are computed in float32, as Keras does.
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else None
        beta = tf.cast(self.beta, x.dtype) if self.center else None
        if mask is None and not self.synchronized:
            # The moments carry no gradient here: _normalise_by_batch writes out the whole batch-norm gradient.
            mean, variance, count = self._batch_moments(tf.stop_gradient(x), None)
            y = _normalise_by_batch(x, mean, variance, count, gamma, beta, self.epsilon, self._reduction_axes,
                                    self.axis)
        else:
            mean, variance, count = self._batch_moments(x, mask)
            y = keras.ops.batch_normalization(x, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                              epsilon=self.epsilon)
        bessel = count / max(count - 1, 1) if isinstance(count, float) else count / tf.maximum(count - 1, 1)
        self._update_moving_statistics(mean, variance * bessel)
        return tf.cast(y, self.compute_dtype)

    def _batch_moments(self, x, mask):
        """Per-channel mean, biased variance and value count of the batch (of all replicas when synchronized). The
        count is a Python float when the shape is static and the batch is not masked or synchronized."""
        axes = self._reduction_axes
        replica = tf.distribute.get_replica_context() if self.synchronized else None
        if mask is None and replica is None:
            # Keras' own moments (same values and gradients as keras.layers.BatchNormalization).
            mean, variance = tf.nn.moments(x, axes)
            sizes = [x.shape[a] for a in axes]
            if all(size is not None for size in sizes):
                count = float(np.prod(sizes))
            else:
                count = tf.cast(tf.size(x, out_type=tf.int64) // tf.cast(tf.shape(x)[self.axis], tf.int64), x.dtype)
            return mean, variance, count

        def all_reduce(value):
            return replica.all_reduce(tf.distribute.ReduceOp.SUM, value) if replica is not None else value

        if mask is None:
            weights = None
            count = tf.cast(tf.size(x, out_type=tf.int64) // tf.cast(tf.shape(x)[self.axis], tf.int64), x.dtype)
            total = tf.reduce_sum(x, axes)
        else:
            weights = tf.broadcast_to(tf.cast(tf.expand_dims(mask, -1), x.dtype), tf.shape(x))
            count = tf.reduce_sum(weights, axes)
            total = tf.reduce_sum(x * weights, axes)
        count = all_reduce(count)
        mean = tf.math.divide_no_nan(all_reduce(total), count)
        shape = [1] * len(x.shape)
        shape[self.axis] = -1
        squared = tf.square(x - tf.reshape(mean, shape))
        if weights is not None:
            squared *= weights
        variance = tf.math.divide_no_nan(all_reduce(tf.reduce_sum(squared, axes)), count)
        return mean, variance, count

    def _update_moving_statistics(self, batch_mean, unbiased_variance):
        momentum = self.momentum
        for variable, batch_value in ((self.moving_mean, batch_mean), (self.moving_variance, unbiased_variance)):
            variable.assign(variable * momentum + tf.cast(batch_value, variable.dtype) * (1 - momentum))


def _normalise_by_batch(x, mean, variance, count, gamma, beta, epsilon, axes, axis):
    """``gamma * (x - mean) / sqrt(variance + epsilon) + beta`` where ``mean`` / ``variance`` are the (biased) batch
    moments of ``x`` over ``axes`` and ``count`` values per channel, with batch norm's gradient written out:
    ``dx = gamma / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))``, ``dgamma = sum(dy * xhat)``,
    ``dbeta = sum(dy)``. Autodiff through the moments gives the same values with about four times as many graph
    ops, which the 68 one-channel gate BNs of GSTO-HRNet pay at every trace. ``gamma`` / ``beta``: ``None`` = 1 / 0."""
    if axis not in (-1, len(x.shape) - 1):  # per-channel vectors broadcast against the last axis only
        shape = [1] * len(x.shape)
        shape[axis] = -1
        mean, variance = tf.reshape(mean, shape), tf.reshape(variance, shape)
        gamma = None if gamma is None else tf.reshape(gamma, shape)
        beta = None if beta is None else tf.reshape(beta, shape)
    inv_std = tf.math.rsqrt(variance + epsilon)
    scale = tf.ones_like(inv_std) if gamma is None else gamma
    offset = tf.zeros_like(inv_std) if beta is None else beta

    @tf.custom_gradient
    def normalise(x, scale, offset):
        x_hat = (x - mean) * inv_std
        y = x_hat * scale + offset

        def gradient(dy):
            keep = len(scale.shape) > 1  # reduced to scale's shape: [C], or [1, C, 1, 1] for channels first
            d_offset = tf.reduce_sum(dy, axes, keepdims=keep)
            d_scale = tf.reduce_sum(dy * x_hat, axes, keepdims=keep)
            dx = (scale * inv_std / count) * (count * dy - d_offset - x_hat * d_scale)
            return dx, d_scale, d_offset

        return y, gradient

    return normalise(x, scale, offset)


def fold_conv_bn_weights(kernel, bias, gamma, beta, mean, variance, epsilon, depthwise=False):
    """``(kernel', bias')`` of the conv equal to ``BN(conv(x))`` at inference; ``None`` gamma / beta / bias = 1 / 0 / 0.

    ``kernel``: ``[..., in, out]`` for a conv, ``[..., in, multiplier]`` for a depthwise conv (output channel
    ``c * multiplier + m``). Computed in float64, returned in ``kernel``'s dtype.
    """
    kernel = np.asarray(kernel)
    dtype = kernel.dtype
    k = kernel.astype(np.float64)
    out_shape = (k.shape[-2] * k.shape[-1],) if depthwise else (k.shape[-1],)
    mean = np.asarray(mean, np.float64).reshape(out_shape)
    scale = 1.0 / np.sqrt(np.asarray(variance, np.float64).reshape(out_shape) + float(epsilon))
    if gamma is not None:
        scale = scale * np.asarray(gamma, np.float64).reshape(out_shape)
    b = np.zeros(out_shape) if bias is None else np.asarray(bias, np.float64).reshape(out_shape)
    new_bias = (b - mean) * scale
    if beta is not None:
        new_bias = new_bias + np.asarray(beta, np.float64).reshape(out_shape)
    new_kernel = k * (scale.reshape(k.shape[-2:]) if depthwise else scale)
    return new_kernel.astype(dtype), new_bias.astype(dtype)


def folded_conv_weights(conv, bn):
    """``(kernel', bias')`` (numpy) of the conv equal to ``bn(conv(x))`` at inference, for built layers ``conv``
    and ``bn``: what a composite layer's ``fold_batch_norm()`` sets on its folded conv."""
    return fold_conv_bn_weights(
        conv.kernel.numpy(), conv.bias.numpy() if conv.use_bias else None,
        bn.gamma.numpy() if bn.scale else None, bn.beta.numpy() if bn.center else None,
        bn.moving_mean.numpy(), bn.moving_variance.numpy(), bn.epsilon,
        depthwise=isinstance(conv, DEPTHWISE_CONV_TYPES))
