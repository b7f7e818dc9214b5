#!/usr/bin/env python
"""Which BatchNorm training path is faster per feature-map shape: TensorFlow's fused kernel or the composed ops.

``FusedBatchNormalization`` (gsto_tf/layers/batch_norm.py) trains either with ``FusedBatchNormV3`` (one kernel
forward, one backward) or with composed ops (moments, then the normalisation with batch norm's gradient written
out; bfloat16 / float16 maps in float32). Which is faster depends on the kernel TensorFlow runs: with oneDNN (on by
default on CPUs with AVX512-VNNI / AVX512_BF16 / AMX), ``FusedBatchNormV3`` has vectorised (JIT) kernels only for
some channel counts. This script times one training-mode BN + ReLU, forward and backward, for every BN shape of
the models at the given input size (the shapes and their counts are read off the built models), on each path
(``fused``: the kernel in the map's dtype; ``fused_fp32``: a bf16 map cast to float32 around the float32 kernel;
``composed``) in fp32 and bf16, interleaved in random order per round (``speed.time_interleaved``);
``fp32_path`` / ``bf16_path`` is the path the layer takes in this process and ``*_chosen_ms`` its time.

Rows: one per shape, then per model the sum over its BNs (``count`` x median) for each path and for the chosen
one. Writes benchmarks/results/batch_norm_kernels.csv.

    python benchmarks/batch_norm_kernels.py [--models hrnetv2_w18_small_v2 gsto_hrnet_w18_small_v2]
        [--size 512x1024] [--repeats 9]
"""

import argparse
import collections
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.keras_internals import build_shapes, onednn_enabled, walk_layers  # noqa: E402
from gsto_tf.layers import FusedBatchNormalization  # noqa: E402
from gsto_tf.layers.batch_norm import fused_kernel_dtype  # noqa: E402
from gsto_tf.models import build  # noqa: E402
from gsto_tf.tables import print_and_write  # noqa: E402
from gsto_tf.user_input import parse_size  # noqa: E402
from speed import POLICIES, time_interleaved  # noqa: E402  (benchmarks/ is sys.path[0])
from train_step_profile import vector_extensions  # noqa: E402

# (precision, path): "fused" = FusedBatchNormV3 in the map's dtype, "fused_fp32" = a bf16 map cast to float32 around
# the float32 kernel, "composed" = the composed ops (in float32).
VARIANTS = [("fp32", "fused"), ("fp32", "composed"), ("bf16", "fused"), ("bf16", "fused_fp32"), ("bf16", "composed")]
KERNEL_DTYPES = {"fused": None, "fused_fp32": tf.float32}


def bn_shapes(model_name, size):
    """{(H, W, C): number of multi-channel BNs of that input shape} in ``model_name`` built for ``size``."""
    model = build(model_name, 19, input_shape=(*size, 3))
    shapes = collections.Counter()
    for layer in walk_layers(model):
        if isinstance(layer, FusedBatchNormalization):
            shape = next(iter(build_shapes(layer).values()))
            if shape[-1] > 1:  # one-channel (gate) BNs are always composed
                shapes[tuple(shape[1:])] += 1
    return shapes


def bn_step(shape, precision, path):
    """A tf.function: one training-mode BN + ReLU on a batch-1 map of ``shape``, forward and backward, on ``path``."""
    layer = FusedBatchNormalization(momentum=0.99, epsilon=1e-5, dtype=POLICIES[precision])
    layer.build((1, *shape))
    x = tf.cast(tf.random.normal((1, *shape)), layer.compute_dtype)
    upstream = tf.cast(tf.random.normal((1, *shape)), layer.compute_dtype)
    if path == "composed":
        def run(v):
            return layer._composed_training_step(v, None)
    else:
        def run(v):
            return layer._fused_training_step(v, KERNEL_DTYPES[path] or v.dtype)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.relu(run(x))
        dx, dgamma = tape.gradient(y, [x, layer.gamma], output_gradients=upstream)
        return tf.reduce_sum(tf.cast(dx[0, 0, 0], tf.float32)) + tf.reduce_sum(dgamma)

    kernel_dtype = fused_kernel_dtype(shape[-1], x.dtype) if layer._uses_fused_training(x, True, None) else None
    chosen = "composed" if kernel_dtype is None else "fused" if kernel_dtype == x.dtype else "fused_fp32"
    return step, chosen


def time_shape(shape, repeats):
    """({(precision, path): median ms}, {precision: the chosen path})."""
    steps, chosen = {}, {}
    for precision, path in VARIANTS:
        steps[precision, path], chosen[precision] = bn_step(shape, precision, path)
    times = time_interleaved(steps, repeats)
    return {key: statistics.median(v) * 1e3 for key, v in times.items()}, chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["hrnetv2_w18_small_v2", "gsto_hrnet_w18_small_v2"])
    parser.add_argument("--size", type=parse_size, default="512x1024", help="model input HxW (default 512x1024)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "batch_norm_kernels.csv"))
    args = parser.parse_args(argv)
    counts = {name: bn_shapes(name, args.size) for name in args.models}
    keras.backend.clear_session()
    measured = {}
    for shape in sorted({s for c in counts.values() for s in c}, key=lambda s: -np.prod(s)):
        measured[shape] = time_shape(shape, args.repeats)
    rows = []
    for shape, (ms, chosen) in measured.items():
        row = {"shape": "x".join(map(str, shape)), "channels": shape[-1]}
        row.update({name.split("_w")[0]: counts[name][shape] for name in args.models})
        row.update({f"{p}_{path}_ms": round(ms[p, path], 2) for p, path in VARIANTS})
        for p in POLICIES:
            row.update({f"{p}_path": chosen[p], f"{p}_chosen_ms": round(ms[p, chosen[p]], 2)})
        rows.append(row)
    for name in args.models:  # per model: the BNs' summed time on each path and on the chosen one
        row = {"shape": f"(all BNs of {name})", "channels": ""}
        row.update({other.split("_w")[0]: sum(counts[other].values()) if other == name else ""
                    for other in args.models})
        row.update({f"{p}_{path}_ms": round(sum(n * measured[s][0][p, path] for s, n in counts[name].items()), 1)
                    for p, path in VARIANTS})
        for p in POLICIES:
            row.update({f"{p}_path": "per shape", f"{p}_chosen_ms": round(
                sum(n * measured[s][0][p, measured[s][1][p]] for s, n in counts[name].items()), 1)})
        rows.append(row)
    print_and_write(rows, args.out, f"BatchNorm + ReLU training step (forward + backward), batch 1, median ms of "
                    f"{args.repeats} rounds, {os.cpu_count()} cores ({vector_extensions()}), oneDNN "
                    f"{'on' if onednn_enabled() else 'off'}; model sums: count x median; 'path': the layer's choice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
