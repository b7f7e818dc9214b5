#!/usr/bin/env python
"""GSTO-HRNet vs HRNetV2 speed on this machine: inference latency and train-step time, fp32 and bf16.

A and B are timed *interleaved* in one process after warm-up: every round runs each model once, in a random order
(seeded), so load from other processes and cache effects of the previous run hit both alike. The table reports
each model's median, the ratio of the medians GSTO / HRNetV2 and the quartiles of the per-round ratios
(``ratio_q1`` / ``ratio_q3``: differences smaller than their spread are not resolved), plus achieved GFLOP/s
(2 x conv multiply-adds per second) next to a matmul peak measured in the same run. ``macs_ratio`` is GSTO / HRNetV2 in conv multiply-adds as executed here (``ModelCounts.executed_macs``:
the heads' per-branch 1x1 conv runs fewer than the official count): the time ratio that free memory traffic and
zero per-op overhead would give. Writes benchmarks/results/speed.csv.

Three steps are timed: ``infer`` (inference model, logits only), ``backprop`` (training forward + backward of the
network alone) and ``train`` (forward, the segmentation loss on every output at label resolution, backward, SGD
update). ``train`` minus ``backprop`` is what the losses cost: GSTO-HRNet has three supervised outputs
(final + two auxiliary), HRNetV2 one, so its loss costs about three times as much.

``--precisions tflite`` adds the deployed model: the fixed-size fp32 TFLite file (``gsto_tf.export``) run by the
LiteRT interpreter with XNNPACK on all cores (inference only). The converter folds BatchNorm into the convs, so
it shows what the gates cost once the framework's per-op overhead is gone.

    python benchmarks/speed.py [--widths w18_small_v2 w48] [--size 512x1024] [--repeats 15] \
        [--precisions fp32 bf16 tflite]
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.cli.common import parse_size  # noqa: E402
from gsto_tf.export import TFLiteRunner, export_tflite  # noqa: E402
from gsto_tf.models import build, inference_model  # noqa: E402
from gsto_tf.models.counting import count_model  # noqa: E402
from gsto_tf.tables import print_and_write  # noqa: E402
from gsto_tf.training.losses import SegmentationLoss  # noqa: E402


def matmul_peak_gflops(n=2048, repeats=5):
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    fn = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn().numpy()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def backprop_step(model, x):
    """A tf.function running the training forward + backward of the network alone: no loss, no update."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            total = tf.add_n([tf.reduce_mean(v) for v in out.values()])
        grads = tape.gradient(total, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    return step


def step_functions(name, size, num_classes=19):
    """({"infer", "backprop", "train"}: tf.functions on a random batch-1 input, executed multiply-adds) of ``name``."""
    model = build(name, num_classes, input_shape=(*size, 3))
    infer = inference_model(model)
    loss_fn = SegmentationLoss(num_classes)
    opt = keras.optimizers.SGD(0.001)
    x = tf.random.normal((1, *size, 3))
    y = tf.random.uniform((1, *size), 0, num_classes, tf.int32)

    @tf.function
    def infer_step():
        return tf.reduce_sum(infer(x, training=False))

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.add_n([tf.reduce_sum(loss_fn(y, v)) for v in out.values()])
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    macs = count_model(model).executed_macs
    return {"infer": infer_step, "backprop": backprop_step(model, x), "train": train_step}, macs


def tflite_step(name, size, workdir, num_classes=19):
    """({"infer": callable}, executed multiply-adds) for the fp32 TFLite file of ``name`` on the XNNPACK delegate."""
    model = build(name, num_classes, input_shape=(*size, 3))
    path = export_tflite(model, os.path.join(workdir, f"{name}.tflite"), size)
    runner = TFLiteRunner(path, num_threads=os.cpu_count())
    if runner.delegate != "xnnpack":
        print(f"{name}: XNNPACK refused the TFLite model; timing the builtin kernels", file=sys.stderr)
    image = np.random.default_rng(0).normal(size=(1, *size, 3)).astype(np.float32)
    return {"infer": lambda: runner(image)}, count_model(model).executed_macs


def time_interleaved(steps, repeats, seed=0):
    """{model: [seconds per round]}: each round runs every step once, in a seeded random order, after warm-up."""
    for fn in steps.values():  # warm-up: trace + first runs
        _run(fn)
        _run(fn)
    order = list(steps)
    rng = random.Random(seed)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            _run(steps[name])
            times[name].append(time.perf_counter() - t)
    return times


def _run(fn):
    out = fn()
    return out.numpy() if hasattr(out, "numpy") else out


def bench(widths, size, repeats, precisions):
    peak = matmul_peak_gflops()
    rows = []
    for precision in precisions:
        keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")
        for width in widths:
            pair = {}
            with tempfile.TemporaryDirectory() as workdir:
                for family in ("hrnetv2", "gsto_hrnet"):
                    name = f"{family}_{width}"
                    pair[family] = tflite_step(name, size, workdir) if precision == "tflite" else step_functions(
                        name, size)
            for kind in pair["hrnetv2"][0]:
                times = time_interleaved({f: fns[kind] for f, (fns, _) in pair.items()}, repeats)
                med = {f: statistics.median(v) for f, v in times.items()}
                per_round = [g / h for g, h in zip(times["gsto_hrnet"], times["hrnetv2"])]
                q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
                for family in pair:
                    macs = pair[family][1]
                    rows.append({
                        "width": width, "precision": precision, "step": kind, "model": family,
                        "median_s": round(med[family], 4),
                        "gsto_over_hrnet": round(med["gsto_hrnet"] / med["hrnetv2"], 3),
                        "ratio_q1": round(q1, 3), "ratio_q3": round(q3, 3),
                        "macs_ratio": round(pair["gsto_hrnet"][1] / pair["hrnetv2"][1], 3),
                        "achieved_GFLOPs": round(2 * macs * (1 if kind == "infer" else 3) / med[family] / 1e9, 1),
                        "matmul_peak_GFLOPs": round(peak, 1),
                    })
            keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default=["w18_small_v2"])
    parser.add_argument("--size", type=parse_size, default="512x1024")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "tflite"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "speed.csv"))
    args = parser.parse_args()
    size = args.size
    rows = bench(args.widths, size, args.repeats, args.precisions)
    print_and_write(rows, args.out, f"batch 1, {size[0]}x{size[1]}, median of {args.repeats} rounds in random order, "
                    f"{os.cpu_count()} CPU cores (train GFLOP/s counts 3x the forward multiply-adds)")


if __name__ == "__main__":
    main()
