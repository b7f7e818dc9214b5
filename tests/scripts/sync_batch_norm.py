"""Synchronized FusedBatchNormalization under MirroredStrategy on two logical CPU devices (run in a subprocess:
the logical devices must be configured before TensorFlow initialises its devices).

Writes to argv[1] (.npz): the global batch ``x``, the initial moving statistics, each BN's outputs of one
training-mode call through ``strategy.run`` (replica results concatenated in batch order) and the moving
statistics after one ``model.fit`` step on the same global batch, for a 3-channel and a 1-channel BN, in the
dtype given as argv[2] (float32 or float64).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.layers import FusedBatchNormalization  # noqa: E402

GLOBAL_BATCH = 4


def main(out_path, dtype):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (GLOBAL_BATCH, 5, 6, 4)).astype(dtype)
    x[GLOBAL_BATCH // 2:] += 1.5  # the replicas' halves differ: per-replica statistics would be wrong
    with strategy.scope():
        inp = keras.Input((5, 6, 4), dtype=dtype)
        bns = {c: FusedBatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True, dtype=dtype, name=f"bn{c}")
               for c in (3, 1)}
        outputs = {f"bn{c}": bn(inp[..., :c]) for c, bn in bns.items()}
        model = keras.Model(inp, outputs)
        for c, bn in bns.items():
            bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                            rng.uniform(0.5, 1.5, c)])
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss={k: "mse" for k in outputs})
    initial = {f"{k}_{i}": w for k, bn in bns.items() for i, w in enumerate(bn.get_weights())}

    ds = tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist = strategy.experimental_distribute_dataset(ds.with_options(options))

    @tf.function
    def forward(batch):
        return strategy.run(lambda b: model(b, training=True), args=(batch,))

    per_replica = forward(next(iter(dist)))
    called = {k: np.concatenate([r.numpy() for r in strategy.experimental_local_results(v)])
              for k, v in per_replica.items()}
    for bn in bns.values():  # back to the initial statistics before the fit step
        bn.set_weights([initial[f"{bn.name[2:]}_{i}"] for i in range(4)])

    targets = {k: np.zeros((GLOBAL_BATCH, 5, 6, int(k[2:])), dtype) for k in outputs}
    fit_ds = tf.data.Dataset.from_tensor_slices((x, targets)).batch(GLOBAL_BATCH).with_options(options)
    model.fit(fit_ds, epochs=1, verbose=0)
    after = {f"after_{k}_{i}": w for k, bn in bns.items() for i, w in enumerate(bn.get_weights())}
    np.savez(out_path, x=x, **{f"initial_{k}": v for k, v in initial.items()},
             **{f"out_{k}": v for k, v in called.items()}, **after)
    print("replicas", strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
