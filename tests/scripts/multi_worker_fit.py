"""One worker of the multi-worker test; the single-process reference when TF_CONFIG is unset; MirroredStrategy
on two logical CPUs with GSTO_TEST_MIRRORED_CPUS=1.

Trains a tiny conv + synchronized-BN model with model.fit for a few steps on a fixed dataset with a fixed
global batch, then saves its weights to argv[1].
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.training.distribute import make_strategy  # noqa: E402
from gsto_tf.training.losses import SegmentationLoss  # noqa: E402
from gsto_tf.training.optimizer import TorchSGD, poly_schedule  # noqa: E402

GLOBAL_BATCH, STEPS = 4, 3


def _strategy():
    if os.environ.get("GSTO_TEST_MIRRORED_CPUS"):  # MirroredStrategy over 2 logical CPU devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return make_strategy("multi_worker" if "TF_CONFIG" in os.environ else "default")


def main(out_path):
    strategy = _strategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, (GLOBAL_BATCH * STEPS, 16, 16)).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options)
    keras.utils.set_random_seed(1)
    with strategy.scope():
        inp = keras.Input((16, 16, 3))
        h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
        h = keras.layers.BatchNormalization(synchronized=True)(h)
        h = keras.layers.ReLU()(h)
        out = keras.layers.Conv2D(3, 1)(h)
        model = keras.Model(inp, {"logits": out})
        model.compile(optimizer=TorchSGD(poly_schedule(0.1, STEPS), momentum=0.9, weight_decay_l2=1e-3),
                      loss={"logits": SegmentationLoss(3)})
    ds = ds.map(lambda a, b: (a, {"logits": b}))
    np.savez(out_path.replace(".npz", "_init.npz"), *[w.numpy() for w in model.weights])
    history = model.fit(ds, epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False)
    np.savez(out_path, *[w.numpy() for w in model.weights])
    print("replicas", strategy.num_replicas_in_sync, "loss", history.history["loss"][-1])


if __name__ == "__main__":
    main(sys.argv[1])
