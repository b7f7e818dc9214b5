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
  mean and the Bessel-corrected batch variance, so the update costs no further op. Where TensorFlow runs its
  oneDNN kernels (:func:`gsto_tf.keras_internals.onednn_enabled`: by default on CPUs with AVX512-VNNI /
  AVX512_BF16 / AMX), only where oneDNN has a vectorised (JIT) kernel for the channel count
  (:func:`fused_kernel_dtype`): bfloat16 needs a multiple of 16 channels, float32 of 4; a bfloat16 map with 4k
  channels (HRNet's 36, 72) is cast to float32 around the float32 kernel. The generic kernel oneDNN runs for the
  other counts (HRNet's 18 and 270 channels) takes 1.8-2.4x the composed path's time in float32 and bfloat16
  (docs/performance.md, "BatchNorm kernels").
* composed: everything else. Single-channel maps (GSTO's gates: the fused kernel is slower there), channel
  counts without a oneDNN JIT kernel (above), float64 (the
  fused kernel has no float64 kernel; this path is exact float64), ``synchronized=True`` (the moments of the
  global batch: sums and counts are all-reduced over the replicas, then the squared deviations from the global
  mean, two passes rather than ``E[x^2] - E[x]^2``), masks (moments over the unmasked positions). The output is
  the normalisation by the batch mean and biased variance; without mask or synchronization (the one-channel
  gates, float64) batch norm's gradient is written out (:func:`_batch_norm_training`), otherwise it is Keras'
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

from gsto_tf.keras_internals import onednn_enabled

_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
# PyTorch's BatchNorm2d as the official HRNet / GSTO code configures it (BN_MOMENTUM = 0.01, eps = 1e-5). Keras'
# momentum is the weight of the old moving value: 1 - 0.01.
TORCH_BN_MOMENTUM = 0.99
TORCH_BN_EPSILON = 1e-5
DEPTHWISE_CONV_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# oneDNN's vectorised (JIT) batch-norm kernels need the channels in whole vectors: 16 lanes for bfloat16 (and
# AVX-512 float32), 8 (AVX2) or 4 (SSE4.1) for float32. Other counts run a generic kernel.
ONEDNN_JIT_BN_CHANNELS = {tf.bfloat16: 16, tf.float16: 16, tf.float32: 4}


def fused_kernel_dtype(channels, dtype):
    """The dtype in which ``FusedBatchNormV3`` trains a ``channels``-channel map of ``dtype`` fastest in this
    process, or ``None`` where the composed path is faster (one channel; on oneDNN, no JIT kernel in any dtype)."""
    dtype = tf.as_dtype(dtype)
    if channels <= 1 or dtype not in _FUSED_DTYPES:
        return None
    if not onednn_enabled():  # TensorFlow's own kernels: one per dtype, any channel count
        return dtype
    for kernel_dtype in (dtype, tf.float32):  # a bfloat16 map without a bf16 JIT kernel: the float32 one, if any
        if channels % ONEDNN_JIT_BN_CHANNELS[kernel_dtype] == 0:
            return kernel_dtype
    return None


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
            and fused_kernel_dtype(inputs.shape[-1], inputs.dtype) is not None
        )

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        if self._uses_fused_training(inputs, training, mask):
            return self._fused_training_step(inputs)
        return self._composed_training_step(inputs, mask)

    def _fused_training_step(self, x, kernel_dtype=None):
        # kernel_dtype (default: fused_kernel_dtype's choice): cast x for the kernel; a no-op for x's own dtype.
        x = tf.cast(x, kernel_dtype or fused_kernel_dtype(x.shape[-1], x.dtype))
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
            y, mean, variance, count = _batch_norm_training(x, gamma, beta, self.epsilon, self._reduction_axes,
                                                            self.axis)
        else:
            mean, variance, count = self._batch_moments(x, mask)
            y = keras.ops.batch_normalization(x, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                              epsilon=self.epsilon)
        bessel = count / max(count - 1, 1) if isinstance(count, float) else count / tf.maximum(count - 1, 1)
        self._update_moving_statistics(mean, variance * bessel)
        return tf.cast(y, self.compute_dtype)

    def _batch_moments(self, x, mask):
        """Per-channel mean, biased variance and value count of a masked or synchronized batch (of all replicas
        when synchronized); the plain batch's are computed by :func:`_batch_norm_training`."""
        axes = self._reduction_axes
        replica = tf.distribute.get_replica_context() if self.synchronized else None

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


def _batch_norm_training(x, gamma, beta, epsilon, axes, axis):
    """Batch norm of ``x`` by its own moments over ``axes``: ``(y, mean, biased variance, count)``, the moments per
    channel (shape ``[C]``) and ``count`` the values per channel (a Python float for a static shape).

    ``y = gamma * (x - mean) / sqrt(variance + epsilon) + beta`` is computed as ``x * a + (beta - mean * a)`` with
    ``a = gamma / sqrt(variance + epsilon)``, and its gradient is written out (the moments are not differentiated
    separately): ``dbeta = sum(dy)``, ``dgamma = sum(dy * (x - mean)) / sigma``,
    ``dx = a * dy - a / n * (dbeta + (x - mean) / sigma * dgamma)``. Autodiff through the moments gives the same
    values with more graph ops, which every BN on this path would pay at every trace (GSTO-HRNet's 68 one-channel
    gate BNs, and on oneDNN the BNs whose channel counts have no JIT kernel). ``gamma`` / ``beta``: ``None`` =
    1 / 0."""
    rank = len(x.shape)
    channels_last = axis in (-1, rank - 1)
    mean = tf.reduce_mean(x, axes, keepdims=not channels_last)  # broadcasts against x either way
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=not channels_last)
    sizes = [x.shape[a] for a in axes]
    if all(size is not None for size in sizes):
        count = float(np.prod(sizes))
    else:
        count = tf.cast(tf.size(x, out_type=tf.int64) // tf.cast(tf.shape(x)[axis], tf.int64), x.dtype)
    inv_std = tf.math.rsqrt(variance + epsilon)
    if not channels_last:  # per-channel vectors as [1, C, 1, ...]
        shape = [1] * rank
        shape[axis] = -1
        gamma = None if gamma is None else tf.reshape(gamma, shape)
        beta = None if beta is None else tf.reshape(beta, shape)
    scale = tf.ones_like(inv_std) if gamma is None else gamma
    offset = tf.zeros_like(inv_std) if beta is None else beta

    @tf.custom_gradient
    def normalise(x, scale, offset):
        a = scale * inv_std
        y = x * a + (offset - mean * a)

        def gradient(dy):
            keep = not channels_last  # reduced to scale's shape: [C], or [1, C, 1, 1] for channels first
            d_offset = tf.reduce_sum(dy, axes, keepdims=keep)
            centred = x - mean
            d_scale = tf.reduce_sum(dy * centred, axes, keepdims=keep) * inv_std
            dx = a * dy - (a / count) * (d_offset + centred * (inv_std * d_scale))
            return dx, d_scale, d_offset

        return y, gradient

    y = normalise(x, scale, offset)
    if channels_last:
        return y, mean, variance, count
    return y, tf.reshape(mean, [-1]), tf.reshape(variance, [-1]), count  # new names: gradient() reads `mean`


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
