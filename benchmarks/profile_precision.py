#!/usr/bin/env python
"""Where bf16 (``mixed_bfloat16``) gains or loses time against fp32: TensorFlow profiler op times per op type.

``benchmarks/speed.py`` gives the wall-time ratio bf16 / fp32; this script says which ops make it. It runs the
steps of speed.py (``infer``: the inference model with BatchNorm folded; ``train``: forward, losses, backward, SGD
update) of one model in fp32 and in bf16, each under ``tf.profiler`` after warm-up, reads the trace with
``profile_gsto.op_times`` and sums the op durations per op *type* (``Conv2D``, ``Conv2DBackpropFilter``, ``Cast``,
``_FusedConv2D``, ...; oneDNN kernels carry their own names such as ``_MklNativeConv2D``). ``Cast`` rows are the
precision conversions that mixed precision inserts (variables to bf16, logits and BN statistics to float32).

Columns: ``fp32_ms`` / ``bf16_ms`` (op time per step, summed over the executor threads: shares of work, not a
timeline), ``fp32_count`` / ``bf16_count`` (executed ops per step), ``bf16_over_fp32`` (time ratio, > 1 = bf16
slower) and ``share_of_bf16`` (the op type's share of the bf16 step's op time). Rows are sorted by bf16 time; op
types under 0.5 % of both totals are summed into ``(other)``. Writes benchmarks/results/profile_precision.csv.

    python benchmarks/profile_precision.py [--model gsto_hrnet_w18_small_v2] [--size 512x1024] [--steps 2]
"""

import argparse
import collections
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.user_input import parse_size  # noqa: E402
from gsto_tf.tables import print_and_write  # noqa: E402
from profile_gsto import op_times  # noqa: E402  (this folder is sys.path[0])
from speed import POLICIES, step_functions  # noqa: E402

MIN_SHARE = 0.005


def op_type(op_name):
    """``"<node name>:<op type>"`` -> op type."""
    return op_name.rsplit(":", 1)[-1]


def profile_types(fn, steps):
    """({op type: ms per step}, {op type: executed ops per step}) for ``steps`` profiled calls of ``fn``."""
    fn().numpy()  # trace + warm up outside the profile
    fn().numpy()
    with tempfile.TemporaryDirectory() as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        for _ in range(steps):
            fn().numpy()
        tf.profiler.experimental.stop()
        totals, counts = op_times(trace_dir, with_counts=True)
    ms, n = collections.Counter(), collections.Counter()
    for name, value in totals.items():
        ms[op_type(name)] += value / steps
        n[op_type(name)] += counts[name] / steps
    return ms, n


def compare_rows(kind, measured):
    """Rows of one step kind from ``measured[precision] = (ms, counts)``."""
    (ms32, n32), (ms16, n16) = measured["fp32"], measured["bf16"]
    total32, total16 = sum(ms32.values()), sum(ms16.values())
    big = {t for t in set(ms32) | set(ms16) if ms32[t] >= MIN_SHARE * total32 or ms16[t] >= MIN_SHARE * total16}
    groups = {t: [t] for t in big}
    groups["(other)"] = sorted((set(ms32) | set(ms16)) - big)
    groups["(total)"] = sorted(set(ms32) | set(ms16))
    rows = []
    for name, types in groups.items():
        a, b = sum(ms32[t] for t in types), sum(ms16[t] for t in types)
        rows.append({
            "step": kind, "op_type": name, "fp32_ms": round(a, 1), "bf16_ms": round(b, 1),
            "fp32_count": round(sum(n32[t] for t in types)), "bf16_count": round(sum(n16[t] for t in types)),
            "bf16_over_fp32": round(b / a, 2) if a else "", "share_of_bf16": round(b / total16, 3) if total16 else "",
        })
    order = {"(other)": 1, "(total)": 2}
    return sorted(rows, key=lambda r: (order.get(r["op_type"], 0), -r["bf16_ms"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gsto_hrnet_w18_small_v2")
    parser.add_argument("--size", type=parse_size, default="512x1024", help="input HxW (default 512x1024)")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps per precision and step kind")
    parser.add_argument("--kinds", nargs="+", default=["infer", "train"], choices=["infer", "infer_unfolded", "train"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "profile_precision.csv"))
    args = parser.parse_args(argv)
    rows = []
    for kind in args.kinds:
        measured = {}
        for precision, policy in POLICIES.items():
            fns, _ = step_functions(args.model, args.size, dtype=policy, kinds=(kind,))
            measured[precision] = profile_types(fns[kind], args.steps)
            keras.backend.clear_session()
        rows += compare_rows(kind, measured)
    print_and_write(rows, args.out, f"op time per step by op type (profiler, {args.steps} steps), {args.model}, "
                    f"batch 1, {args.size[0]}x{args.size[1]}, {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
