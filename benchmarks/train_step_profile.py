#!/usr/bin/env python
"""Where the fp32 training step's time goes, and what XLA changes: HRNetV2 vs GSTO-HRNet, one process.

Two tables:

1. ``--what ops`` (``benchmarks/results/train_step_ops.csv``): TensorFlow profiler op time per *op type*
   (``Conv2D``, ``Conv2DBackpropFilter``, ``FusedBatchNormGradV3``, ``ResizeBilinearGrad``, ...) of the folded
   inference step and of the training step (forward, the segmentation loss of every output at label resolution,
   backward, SGD update; the steps of ``benchmarks/speed.py``), for both models. ``per_step_ms`` is the op time of
   one step (summed over TensorFlow's executor threads: with 2 cores two ops often overlap, so the total can exceed
   the wall time); ``train_over_infer`` divides an op type's training time by the whole folded inference op time of
   the same model: the op types with the largest values are where the training step's multiple of inference goes.
2. ``--what xla`` (``benchmarks/results/train_step_xla.csv``): the wall time of the folded inference and the
   training step, with TensorFlow's graph executor (``jit_compile=False``, what ``model.fit`` runs today) and with
   XLA (``jit_compile=True``), all variants interleaved in seeded random order per round after warm-up; plus the
   first call of each (trace + compile: what every run and every resume pays before its first step). Ratios:
   ``train_over_infer`` (each model's train step over its own folded graph inference), ``gsto_over_hrnet`` (same
   step and executor) and ``xla_speedup`` (graph median over XLA median of the same model and step).

    python benchmarks/train_step_profile.py --what ops xla [--size 512x1024] [--repeats 8] [--steps 2]
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.tables import print_and_write  # noqa: E402
from gsto_tf.user_input import parse_size  # noqa: E402
from profile_gsto import op_times  # noqa: E402  (benchmarks/ is sys.path[0])
from speed import _run, cpu_flags, step_functions, time_interleaved  # noqa: E402

FAMILIES = ("hrnetv2", "gsto_hrnet")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def vector_extensions():
    """The vector / matrix extensions of this CPU that matter for TensorFlow's kernels (for the table title)."""
    flags = cpu_flags()
    if flags is None:
        return "unknown CPU flags"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return "+".join(flag for flag in wanted if flag in flags) or "no AVX2"


def op_type_times(fn, steps):
    """{op type: op ms per step} over ``steps`` profiled calls of a warmed-up step function."""
    with tempfile.TemporaryDirectory() as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        for _ in range(steps):
            _run(fn)
        tf.profiler.experimental.stop()
        totals = op_times(trace_dir)
    by_type = collections.Counter()
    for name, ms in totals.items():
        by_type[name.rsplit(":", 1)[-1]] += ms / steps
    return by_type


def ops_table(width, size, steps, top):
    rows = []
    for family in FAMILIES:
        fns, _ = step_functions(f"{family}_{width}", size, kinds=("infer", "train"))
        measured = {}
        for kind in ("infer", "train"):
            _run(fns[kind])
            _run(fns[kind])
            measured[kind] = op_type_times(fns[kind], steps)
        infer_total = sum(measured["infer"].values())
        for kind, by_type in measured.items():
            total = sum(by_type.values())
            ranked = by_type.most_common()
            shown, rest = ranked[:top], ranked[top:]
            for op_type, ms in shown + ([("(other types)", sum(ms for _, ms in rest))] if rest else []):
                rows.append({"model": family, "step": kind, "op_type": op_type, "per_step_ms": round(ms, 1),
                             "share_of_step": round(ms / total, 3), "train_over_infer": round(ms / infer_total, 2)})
            rows.append({"model": family, "step": kind, "op_type": "total", "per_step_ms": round(total, 1),
                         "share_of_step": 1.0, "train_over_infer": round(total / infer_total, 2)})
        del fns
        keras.backend.clear_session()
    return rows


def _first_call_s(fn):
    start = time.perf_counter()
    _run(fn)
    return time.perf_counter() - start


def xla_table(width, size, repeats):
    variants, first = {}, {}
    for family in FAMILIES:
        for executor, jit in (("graph", False), ("xla", True)):
            fns, _ = step_functions(f"{family}_{width}", size, kinds=("infer", "train"), jit_compile=jit)
            for kind in ("infer", "train"):
                key = (family, kind, executor)
                first[key] = _first_call_s(fns[kind])
                variants[key] = fns[kind]
    times = time_interleaved(variants, repeats)
    med = {key: statistics.median(v) for key, v in times.items()}
    rows = []
    for (family, kind, executor), median in med.items():
        hrnet, gsto = (med[("hrnetv2", kind, executor)], med[("gsto_hrnet", kind, executor)])
        rows.append({
            "model": family, "step": kind, "executor": executor, "median_s": round(median, 4),
            "first_call_s": round(first[(family, kind, executor)], 1),
            "train_over_infer": round(med[(family, "train", executor)] / med[(family, "infer", "graph")], 2),
            "gsto_over_hrnet": round(gsto / hrnet, 3),
            "first_call_gsto_over_hrnet": round(first[("gsto_hrnet", kind, executor)]
                                                / first[("hrnetv2", kind, executor)], 2),
            "xla_speedup": round(med[(family, kind, "graph")] / med[(family, kind, "xla")], 3),
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", nargs="+", default=["ops", "xla"], choices=["ops", "xla"])
    parser.add_argument("--width", default="w18_small_v2")
    parser.add_argument("--size", type=parse_size, default="512x1024", help="input HxW (default 512x1024)")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps per model and step kind")
    parser.add_argument("--repeats", type=int, default=8, help="interleaved timing rounds (--what xla)")
    parser.add_argument("--top", type=int, default=12, help="op types listed per step; the rest summed")
    args = parser.parse_args(argv)
    where = f"{args.width}, batch 1, {args.size[0]}x{args.size[1]}, {os.cpu_count()} cores ({vector_extensions()})"
    if "ops" in args.what:
        print_and_write(ops_table(args.width, args.size, args.steps, args.top),
                        os.path.join(RESULTS, "train_step_ops.csv"), f"op time per op type (profiler), {where}")
    if "xla" in args.what:
        print_and_write(xla_table(args.width, args.size, args.repeats),
                        os.path.join(RESULTS, "train_step_xla.csv"),
                        f"graph executor vs XLA, {args.repeats} interleaved rounds, {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
