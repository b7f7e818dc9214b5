"""Choosing a tf.distribute strategy."""

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored")


def make_strategy(name="auto"):
    """``auto``: MirroredStrategy when more than one GPU is visible, else the default strategy.

    Multi-worker training (MultiWorkerMirroredStrategy) is not offered yet: ``model.fit`` fails under it in
    Keras 3.15 (keras-team/keras#20585, SPEC §9).
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {STRATEGIES}, got {name!r}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
