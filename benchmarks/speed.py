#!/usr/bin/env python
"""GSTO-HRNet vs HRNetV2 speed on this machine: inference latency and train-step time, fp32 and bf16.

All variants of one step are timed *interleaved* in one process after warm-up: every round runs each of them once
(both models, every precision, BatchNorm folded and not), in a random order (seeded), so load from other
processes and cache effects of the previous run hit all alike. The table reports each variant's median, the ratio
of the medians GSTO / HRNetV2 and the quartiles of the per-round ratios (``ratio_q1`` / ``ratio_q3``: differences
smaller than their spread are not resolved), ``vs_fp32`` (the fp32 median of the same model, step and BN over
this one: the speed-up of the precision), ``vs_unfolded`` (the unfolded median over this one: the speed-up of BN
folding), each with the quartiles of its per-round ratios (``_q1`` / ``_q3``), plus achieved GFLOP/s (2 x conv multiply-adds per second) next to fp32 and bf16 matmul peaks measured
in the same run, and ``cpu_bf16`` (the bf16 instructions /proc/cpuinfo reports: ``amx_bf16``, ``avx512_bf16`` or
``none``). ``macs_ratio`` is GSTO / HRNetV2 in conv multiply-adds as executed here (``ModelCounts.executed_macs``:
the heads' per-branch 1x1 conv runs fewer than the official count): the time ratio that free memory traffic and
zero per-op overhead would give. Writes benchmarks/results/speed.csv.

Three steps are timed: ``infer`` (inference model, logits only; ``bn=folded``: the default of
:func:`gsto_tf.models.inference_model`, BatchNorm folded into the convs; ``bn=unfolded``: the model as trained),
``backprop`` (training forward + backward of the network alone) and ``train`` (forward, the segmentation loss on
every output at label resolution, backward, SGD update). ``train`` minus ``backprop`` is what the losses cost:
GSTO-HRNet has three supervised outputs (final + two auxiliary), HRNetV2 one, so its loss costs about three times
as much. ``bf16`` is Keras' ``mixed_bfloat16`` policy (bf16 compute, float32 variables and logits).

``--precisions tflite tflite_fp16 tflite_dynamic`` adds the deployed model: the fixed-size TFLite file
(``gsto_tf.export``: fp32, fp16 weights, or int8 weights with float activations) run by the LiteRT interpreter with
XNNPACK on all cores (inference only), interleaved with each other; their ``vs_fp32`` is against the fp32 file. The converter folds BatchNorm into the convs, so it shows what the gates cost once the framework's per-op
overhead is gone.

    python benchmarks/speed.py [--widths w18_small_v2 w48] [--size 512x1024] [--repeats 15] \
        [--precisions fp32 bf16 tflite tflite_fp16] [--steps infer backprop train]
"""

import argparse
import functools
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

from gsto_tf.user_input import parse_size  # noqa: E402
from gsto_tf.export import TFLiteRunner, export_tflite  # noqa: E402
from gsto_tf.models import build, inference_model  # noqa: E402
from gsto_tf.models.counting import count_model  # noqa: E402
from gsto_tf.tables import print_and_write  # noqa: E402
from gsto_tf.training.losses import SegmentationLoss  # noqa: E402


POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}
FAMILIES = ("hrnetv2", "gsto_hrnet")


def cpu_flags():
    """The flags /proc/cpuinfo reports for this CPU; None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None


def cpu_bf16():
    """The bf16 matrix instructions this CPU reports (``amx_bf16``, ``avx512_bf16``) or ``none``."""
    flags = cpu_flags()
    if flags is None:
        return "unknown"
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), "none")


def matmul_peak_gflops(n=2048, repeats=5, dtype=tf.float32):
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    fn = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn().numpy()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def backprop_step(model, x, jit_compile=False):
    """A tf.function running the training forward + backward of the network alone: no loss, no update."""

    @functools.partial(tf.function, jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            total = tf.add_n([tf.reduce_mean(v) for v in out.values()])
        grads = tape.gradient(total, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    return step


def step_functions(name, size, num_classes=19, dtype=None, kinds=("infer", "infer_unfolded", "backprop", "train"),
                   jit_compile=False):
    """({kind: tf.function on a random batch-1 input}, executed multiply-adds) of ``name`` under the Keras dtype
    policy ``dtype`` (default: the global one). Kinds: ``infer`` (BN folded), ``infer_unfolded``, ``backprop``,
    ``train``. ``jit_compile``: compile every step function with XLA."""
    model = build(name, num_classes, dtype=dtype, input_shape=(*size, 3))
    loss_fn = SegmentationLoss(num_classes)
    opt = keras.optimizers.SGD(0.001)
    opt.build(model.trainable_variables)  # built inside the traced step, its variables would make it trace twice
    x = tf.random.normal((1, *size, 3))
    y = tf.random.uniform((1, *size), 0, num_classes, tf.int32)

    def infer_step(fold):
        infer = inference_model(model, fold_batch_norm=fold)
        return tf.function(lambda: tf.reduce_sum(tf.cast(infer(x, training=False), tf.float32)),
                           jit_compile=jit_compile)

    @functools.partial(tf.function, jit_compile=jit_compile)
    def train_step():
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.add_n([tf.reduce_sum(loss_fn(y, v)) for v in out.values()])
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    makers = {"infer": lambda: infer_step(True), "infer_unfolded": lambda: infer_step(False),
              "backprop": lambda: backprop_step(model, x, jit_compile), "train": lambda: train_step}
    macs = count_model(model).executed_macs
    return {kind: makers[kind]() for kind in kinds}, macs


def tflite_step(name, size, workdir, num_classes=19, quantize="none"):
    """({"infer": callable}, executed multiply-adds) for the TFLite file of ``name`` (fp32, or ``quantize``) on the
    XNNPACK delegate."""
    model = build(name, num_classes, input_shape=(*size, 3))
    path = export_tflite(model, os.path.join(workdir, f"{name}_{quantize}.tflite"), size, quantize)
    runner = TFLiteRunner(path, num_threads=os.cpu_count())
    if runner.delegate != "xnnpack":
        print(f"{name}: XNNPACK refused the TFLite model; timing the builtin kernels", file=sys.stderr)
    # within the normalised range the runner accepts
    image = np.clip(np.random.default_rng(0).normal(size=(1, *size, 3)), -2, 2).astype(np.float32)
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


def _quartiles(numerators, denominators):
    """(q1, q3) of the per-round ratios ``numerators[i] / denominators[i]``."""
    per_round = [a / b for a, b in zip(numerators, denominators)]
    q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
    return round(q1, 3), round(q3, 3)


def _variant_rows(times, macs, width, kind, peaks, bf16):
    """Table rows of one interleaved group: ``times`` / ``macs`` keyed by (family, precision, bn)."""
    med = {key: statistics.median(v) for key, v in times.items()}
    rows = []
    for (family, precision, bn), median in med.items():
        key = (family, precision, bn)
        hrnet, gsto = (("hrnetv2", precision, bn), ("gsto_hrnet", precision, bn))
        q1, q3 = _quartiles(times[gsto], times[hrnet])
        fp32 = (family, "tflite" if precision.startswith("tflite") else "fp32", bn)
        unfolded = (family, precision, "unfolded") if bn == "folded" else None
        row = {
            "width": width, "precision": precision, "step": kind, "bn": bn, "model": family,
            "median_s": round(median, 4),
            "gsto_over_hrnet": round(med[gsto] / med[hrnet], 3), "ratio_q1": q1, "ratio_q3": q3,
            "vs_fp32": "", "vs_fp32_q1": "", "vs_fp32_q3": "",
            "vs_unfolded": "", "vs_unfolded_q1": "", "vs_unfolded_q3": "",
        }
        for name, reference in (("vs_fp32", fp32), ("vs_unfolded", unfolded)):
            if reference in times:  # speed-up: reference time over this one, per round
                row[name] = round(med[reference] / median, 3)
                row[f"{name}_q1"], row[f"{name}_q3"] = _quartiles(times[reference], times[key])
        row.update({
            "macs_ratio": round(macs[gsto] / macs[hrnet], 3),
            "achieved_GFLOPs": round(2 * macs[key] * (1 if kind == "infer" else 3) / median / 1e9, 1),
            "matmul_peak_GFLOPs": round(peaks["fp32"], 1), "matmul_peak_bf16_GFLOPs": round(peaks["bf16"], 1),
            "cpu_bf16": bf16,
        })
        rows.append(row)
    return rows


def bench(widths, size, repeats, precisions, steps=("infer", "backprop", "train")):
    peaks = {"fp32": matmul_peak_gflops(), "bf16": matmul_peak_gflops(dtype=tf.bfloat16)}
    bf16 = cpu_bf16()
    keras_precisions = [p for p in precisions if p in POLICIES]
    tflite_precisions = [p for p in precisions if p.startswith("tflite")]
    rows = []
    for width in widths:
        kinds = [k for k in steps if k != "infer"] + (["infer", "infer_unfolded"] if "infer" in steps else [])
        fns, macs = {}, {}
        for family in FAMILIES:
            for precision in keras_precisions:
                fns[family, precision], macs[family, precision] = step_functions(
                    f"{family}_{width}", size, dtype=POLICIES[precision], kinds=kinds)
        for kind in steps:
            variants = {}
            for (family, precision), by_kind in fns.items():
                if kind == "infer":
                    variants[family, precision, "folded"] = by_kind["infer"]
                    variants[family, precision, "unfolded"] = by_kind["infer_unfolded"]
                else:
                    variants[family, precision, "trained"] = by_kind[kind]
            if not variants:
                continue
            times = time_interleaved(variants, repeats)
            rows += _variant_rows(times, {key: macs[key[:2]] for key in variants}, width, kind, peaks, bf16)
        fns.clear()
        keras.backend.clear_session()
        if tflite_precisions:
            variants, tflite_macs = {}, {}
            with tempfile.TemporaryDirectory() as workdir:
                for family in FAMILIES:
                    for precision in tflite_precisions:
                        quantize = precision.split("_")[1] if "_" in precision else "none"
                        step, tflite_macs[family, precision, "folded"] = tflite_step(
                            f"{family}_{width}", size, workdir, quantize=quantize)
                        variants[family, precision, "folded"] = step["infer"]
                keras.backend.clear_session()
                times = time_interleaved(variants, repeats)
            rows += _variant_rows(times, tflite_macs, width, "infer", peaks, bf16)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default=["w18_small_v2"])
    parser.add_argument("--size", type=parse_size, default="512x1024")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16", "tflite", "tflite_fp16", "tflite_dynamic"])
    parser.add_argument("--steps", nargs="+", default=["infer", "backprop", "train"],
                        choices=["infer", "backprop", "train"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "speed.csv"))
    args = parser.parse_args()
    size = args.size
    rows = bench(args.widths, size, args.repeats, args.precisions, args.steps)
    print_and_write(rows, args.out, f"batch 1, {size[0]}x{size[1]}, median of {args.repeats} rounds in random order, "
                    f"{os.cpu_count()} CPU cores (train GFLOP/s counts 3x the forward multiply-adds)")


if __name__ == "__main__":
    main()
