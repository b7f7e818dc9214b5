"""Choosing a tf.distribute strategy."""

import tensorflow as tf

from gsto_tf.training.config import STRATEGIES


def make_strategy(name="auto"):
    """``auto``: MirroredStrategy when more than one GPU is visible, else the default strategy.

    ``multi_worker``: MultiWorkerMirroredStrategy configured from ``TF_CONFIG``; ``model.fit`` works under it
    thanks to :func:`gsto_tf.keras_internals.enable_multi_worker_fit` (keras-team/keras#20585).
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {STRATEGIES}, got {name!r}")
    if name == "multi_worker":
        import json
        import os

        from gsto_tf.keras_internals import enable_multi_worker_fit

        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi_worker needs TF_CONFIG (cluster worker addresses and this task's "
                             "index), e.g. {\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                             "\"task\": {\"type\": \"worker\", \"index\": 0}}")
        json.loads(os.environ["TF_CONFIG"])  # fail early on malformed JSON
        enable_multi_worker_fit()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe_strategy(strategy):
    """How a start line names ``strategy``: its class, or "one device" for TensorFlow's default strategy."""
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return "one device, no tf.distribute strategy"
    return type(strategy).__name__
