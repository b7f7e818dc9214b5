"""Make ``model.fit`` work under MultiWorkerMirroredStrategy in Keras 3.15 — the one place that does it.

Keras 3.15's TensorFlow trainer fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585):

1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first distributed batch with a cross-replica
   ``strategy.reduce("MEAN", batch, axis=None)`` just to learn its shapes; under the collective multi-worker
   strategy that is a cross-worker collective on the input batch outside the training function (PerReplica
   errors). Only shapes are needed, so we take the first local replica's values instead: no communication.
2. ``reduce_per_replica(..., reduction="mean")`` calls ``strategy.reduce("MEAN", v, axis=0)`` in multi-worker
   mode; the per-step logs (losses, metrics) are scalars, which have no axis 0. The intended reduction is the mean
   *across replicas*, i.e. ``axis=None``.

:func:`enable_multi_worker_fit` patches exactly these two functions, only for the Keras versions checked here,
and only once. Single-worker behaviour is unchanged (both patches defer to the originals there).
"""

import keras
import tensorflow as tf

_PATCHED = False
SUPPORTED_KERAS = ("3.15.",)


def _in_multi_worker_mode(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def enable_multi_worker_fit():
    """Idempotently patch Keras' TF trainer for MultiWorkerMirroredStrategy (see the module docstring)."""
    global _PATCHED
    if _PATCHED:
        return
    if not keras.__version__.startswith(SUPPORTED_KERAS):
        raise RuntimeError(
            f"gsto_tf's multi-worker fix targets Keras {SUPPORTED_KERAS}, found {keras.__version__}: check whether "
            "keras-team/keras#20585 is fixed there and update gsto_tf/training/multi_worker.py"
        )
    from keras.src.backend.tensorflow import trainer as tf_trainer
    from keras.src import tree

    original_reduce = tf_trainer.reduce_per_replica
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _in_multi_worker_mode(strategy):
            def mean_across_replicas(v):
                if isinstance(v, tf.distribute.DistributedValues):
                    return strategy.reduce("MEAN", v, axis=None)
                return v

            return tree.map_structure(mean_across_replicas, values)
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not _in_multi_worker_mode(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda x: strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x,
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _PATCHED = True
