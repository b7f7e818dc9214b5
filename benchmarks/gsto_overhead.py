#!/usr/bin/env python
"""Where GSTO-HRNet's training overhead over HRNetV2 comes from: an ablation of its parts, timed two ways.

Models (all w18_small_v2 by default): HRNetV2, GSTO-HRNet, and GSTO-HRNet built with a subset of its parts
(``gsto_parts``): only the fusion gates; only the stage-2/3 auxiliary heads (deep supervision, no gates); the
auxiliary heads plus the gated transitions (no fusion gates). Each is timed on inference (``infer``: logits
only; the auxiliary heads without transition gates then drop out of the graph) and on a training forward +
backward (``backprop``, no loss: the losses' cost is in ``benchmarks/speed.py``), interleaved in random order,
median of ``--repeats``, batch 1.

Two thread settings, each in its own process (TensorFlow fixes them at start-up):

* ``default``: TensorFlow's own (inter-op and intra-op pools sized to the cores): independent ops run
  concurrently, so a model whose graph allows less concurrency pays for it in wall time;
* ``serial``: ``inter_op_parallelism_threads=1``: one op at a time, each using all cores. The ratio is then close
  to the ratio of work done, which is what the multiply-add count predicts.

The gap between the two ratios is the cost of lost concurrency, not of the gates' arithmetic.
Writes benchmarks/results/gsto_overhead.csv.

    python benchmarks/gsto_overhead.py [--width w18_small_v2] [--size 512x1024] [--repeats 15]
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from gsto_tf.user_input import parse_size
from gsto_tf.tables import print_and_write  # no TensorFlow in the parent

VARIANTS = {  # name -> (family, gsto_parts)
    "hrnetv2": ("hrnetv2", None),
    "gsto_hrnet": ("gsto_hrnet", None),
    "fusion_gates_only": ("gsto_hrnet", ["fusion_gates"]),
    "aux_heads_only": ("gsto_hrnet", ["aux_heads"]),
    "aux_heads+transition_gates": ("gsto_hrnet", ["aux_heads", "transition_gates"]),
}
THREADS = ("default", "serial")


def measure(threads, width, size, repeats):
    """Child process: times every variant under one thread setting; returns rows."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import statistics

    import tensorflow as tf

    if threads == "serial":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    # The same step speed.py times as "backprop", timed the same way (seeded random order per round).
    from speed import backprop_step, time_interleaved  # benchmarks/speed.py: this folder is sys.path[0]
    from gsto_tf.models import build, inference_model
    from gsto_tf.models.counting import count_model

    x = tf.random.normal((1, *size, 3), seed=0)
    steps = {"infer": {}, "backprop": {}}
    macs = {}
    for variant, (family, parts) in VARIANTS.items():
        options = {} if parts is None else {"gsto_parts": parts}
        model = build(f"{family}_{width}", 19, input_shape=(*size, 3), **options)
        macs[variant] = count_model(model).executed_macs
        infer = inference_model(model)
        steps["infer"][variant] = tf.function(lambda infer=infer: tf.reduce_sum(infer(x, training=False)))
        steps["backprop"][variant] = backprop_step(model, x)
    rows = []
    for step, fns in steps.items():
        times = time_interleaved(fns, repeats)
        base = statistics.median(times["hrnetv2"])
        rows += [{"threads": threads, "step": step, "variant": v, "median_s": round(statistics.median(t), 3),
                  "time_vs_hrnet": round(statistics.median(t) / base, 3),
                  "macs_vs_hrnet": round(macs[v] / macs["hrnetv2"], 3)} for v, t in times.items()]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", default="w18_small_v2")
    parser.add_argument("--size", type=parse_size, default="512x1024")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", nargs="+", default=list(THREADS), choices=THREADS)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "gsto_overhead.csv"))
    parser.add_argument("--child", choices=THREADS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.width, size, args.repeats)))
        return 0
    rows = []
    for threads in args.threads:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", threads, "--width", args.width,
               "--size", f"{size[0]}x{size[1]}", "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not result:
            raise SystemExit(f"{threads} threads failed:\n{done.stderr[-3000:]}")
        rows += json.loads(result[-1][len("RESULT "):])
    print_and_write(rows, args.out, f"{args.width}, batch 1, "
                    f"{size[0]}x{size[1]}, median of {args.repeats} rounds in random order, {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
