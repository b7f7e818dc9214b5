"""PreciseBN: BatchNorm statistics re-estimated on training batches with the weights frozen, before evaluation.

A BN layer's moving statistics are an exponential average (momentum 0.01 in PyTorch terms, HRNet's setting) of
batch statistics computed while the weights kept changing. After a short run they still lag the final weights, and
evaluation, which normalises with them, under-reports. PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm",
2021; detectron2's ``PreciseBN`` hook via fvcore's ``update_bn_stats``, mmcv's ``PreciseBNHook``) recomputes them
for the final weights:

* run the model in training mode (batch statistics, augmentation as in training, dropout active) on ``N`` training
  batches, without any weight update;
* for each BN, take the plain average over the batches of the per-batch mean and of the per-batch *unbiased*
  variance (``n / (n - 1)`` times the biased one), and make them the moving statistics.

The variance is the "average of variance" of fvcore / detectron2 and mmcv, which is also the inference rule of the
BatchNorm paper (Ioffe & Szegedy 2015, Alg. 2: ``Var[x] = m / (m - 1) * E_B[sigma_B^2]``), rather than the
population variance of all pixels: the latter adds the spread of the batch means *between* batches, which no
training step ever normalised with (each batch is normalised by its own mean); the average of the per-batch
variances is the normalisation the network was trained under. The unbiased per-batch variance is what the moving
variance tracks during training too (PyTorch's rule, :mod:`gsto_tf.layers.batch_norm`).

Implementation: every trainable BN layer's momentum is set to 0 for the re-estimation, so after a training-mode
forward pass its moving statistics *are* that batch's statistics (mean and unbiased variance; of the global batch
with synchronized BN under a distribution strategy); they are read after each batch and averaged in float64. Frozen
BN layers (``trainable=False``) normalise with their moving statistics in training mode too and are left alone.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from gsto_tf.keras_internals import walk_layers


def batch_norm_layers(model):
    """The trainable BatchNormalization layers of ``model``, nested layers and sub-models included."""
    return [layer for layer in walk_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def _statistics(layers):
    return [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]


def _assign(layers, statistics):
    for layer, (mean, variance) in zip(layers, statistics):
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))


def precise_bn(model, dataset, num_batches, strategy=None):
    """Set the moving statistics of every trainable BN layer of ``model`` to the average batch statistics over the
    first ``num_batches`` batches of ``dataset`` (see the module docstring). Weights are not changed.

    ``dataset``: a ``tf.data.Dataset`` of input batches, or of ``(inputs, targets, ...)`` tuples (the training
    dataset; only the inputs are used). ``strategy``: the distribution strategy the model was built under (default:
    the current one); each batch is split over its replicas like a training batch. Returns the number of BN layers
    re-estimated. Raises ValueError if the dataset ends before ``num_batches`` batches.
    """
    num_batches = int(num_batches)
    if num_batches <= 0:
        raise ValueError(f"precise_bn: num_batches must be a positive int, got {num_batches}")
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(dataset.element_spec, tuple):
        dataset = dataset.map(lambda inputs, *_: inputs)
    batches = iter(strategy.experimental_distribute_dataset(dataset))

    @tf.function
    def forward(inputs):
        strategy.run(lambda x: model(x, training=True), args=(inputs,))

    original = _statistics(layers)
    momenta = [layer.momentum for layer in layers]
    averages = [(np.zeros(m.shape, np.float64), np.zeros(v.shape, np.float64)) for m, v in original]
    try:
        for layer in layers:
            layer.momentum = 0.0  # moving statistics := the batch's statistics
        for k in range(num_batches):
            try:
                inputs = next(batches)
            except StopIteration:
                raise ValueError(f"precise_bn: the dataset ended after {k} batches, {num_batches} were asked for") \
                    from None
            forward(inputs)
            for (mean, variance), (batch_mean, batch_variance) in zip(averages, _statistics(layers)):
                mean += (batch_mean - mean) / (k + 1)
                variance += (batch_variance - variance) / (k + 1)
    except BaseException:
        _assign(layers, original)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    _assign(layers, averages)
    return len(layers)


@contextlib.contextmanager
def precise_bn_applied(model, dataset, num_batches, strategy=None):
    """PreciseBN for the duration of the block (an evaluation, a checkpoint save), then the model's own moving
    statistics back, so that training continues exactly as without it. Yields the number of BN layers updated."""
    layers = batch_norm_layers(model)
    original = _statistics(layers)
    try:
        yield precise_bn(model, dataset, num_batches, strategy)
    finally:
        _assign(layers, original)
