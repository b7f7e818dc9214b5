"""A tiny two-output conv + BN model and its PreciseBN numpy reference (shared by tests/test_precise_bn.py and, in a
subprocess, by the MirroredStrategy run of this script).

As a script: ``precise_bn_model.py OUT.npz`` builds the model under MirroredStrategy on two logical CPU devices
with synchronized BN, runs PreciseBN over the batches and saves the initial weights, the batches and the moving
statistics after PreciseBN to OUT.npz.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.layers import FusedBatchNormalization  # noqa: E402

EPS = 1e-5
BATCHES, BATCH, H, W = 5, 4, 6, 7


def make_batches(seed=0):
    rng = np.random.default_rng(seed)
    # batch-to-batch shifts make the average of batch statistics differ from the pooled statistics of all pixels
    return [rng.normal(0.5 * k, 1.0 + 0.3 * k, (BATCH, H, W, 3)).astype(np.float32) for k in range(BATCHES)]


def build_model(sync=False, seed=0):
    """conv1x1(3->4) -> BN (fused path) -> ReLU -> {conv1x1(4->1) -> BN (1-channel path), conv1x1(4->2)}."""
    inp = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(4, 1, name="conv1")(inp)
    h = FusedBatchNormalization(momentum=0.99, epsilon=EPS, synchronized=sync, name="bn1")(h)
    h = keras.layers.ReLU()(h)
    gate = keras.layers.Conv2D(1, 1, name="conv2")(h)
    gate = FusedBatchNormalization(momentum=0.99, epsilon=EPS, synchronized=sync, name="bn2")(gate)
    aux = keras.layers.Conv2D(2, 1, name="aux")(h)
    model = keras.Model(inp, {"logits": gate, "aux_fcn": aux})
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path or "gamma" in w.path
                               else rng.normal(0, 0.5, w.shape) for w in layer.weights])
    return model


def numpy_reference(weights, batches):
    """Average over the batches of each BN's batch mean and unbiased batch variance, the forward pass normalising
    every batch with its own statistics (training mode). ``weights``: {layer name: [arrays]} (Keras layout)."""
    w1, b1 = weights["conv1"]
    g1, be1 = weights["bn1"][:2]
    w2, b2 = weights["conv2"]
    g2, be2 = weights["bn2"][:2]
    stats = {"bn1": [], "bn2": []}
    for x in batches:
        x = x.astype(np.float64)
        h = x @ w1[0, 0] + b1
        n = h.shape[0] * h.shape[1] * h.shape[2]
        m, v = h.mean((0, 1, 2)), h.var((0, 1, 2))
        stats["bn1"].append((m, v * n / (n - 1)))
        a = np.maximum((h - m) / np.sqrt(v + EPS) * g1 + be1, 0)
        g = a @ w2[0, 0] + b2
        m2, v2 = g.mean((0, 1, 2)), g.var((0, 1, 2))
        stats["bn2"].append((m2, v2 * n / (n - 1)))
    return {name: (np.mean([s[0] for s in values], 0), np.mean([s[1] for s in values], 0))
            for name, values in stats.items()}


def main(out_path):
    from gsto_tf.training.precise_bn import precise_bn

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_model(sync=True)
    initial = {f"{layer.name}/{i}": w for layer in model.layers for i, w in enumerate(layer.get_weights())}
    batches = make_batches()
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    updated = precise_bn(model, dataset.with_options(options), BATCHES, strategy)
    after = {f"after_{name}/{i}": w for name in ("bn1", "bn2")
             for i, w in enumerate(model.get_layer(name).get_weights())}
    np.savez(out_path, **initial, **after)
    print("replicas", strategy.num_replicas_in_sync, "updated", updated)


if __name__ == "__main__":
    main(sys.argv[1])
