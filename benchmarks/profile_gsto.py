#!/usr/bin/env python
"""Which parts of GSTO-HRNet its extra time is spent in: TensorFlow profiler op times, summed per model part.

``benchmarks/speed.py`` gives the wall-time ratio GSTO-HRNet / HRNetV2; this script says where the difference goes.
It runs the same steps as speed.py (``infer``: inference model; ``train``: forward, the segmentation loss on every
output at label resolution, backward, SGD update) under ``tf.profiler``, reads the trace (the XSpace protobuf that
TensorFlow writes; no TensorBoard plugin needed) and adds up the duration of every executed op, forward and
gradient alike, by the layer it belongs to:

* ``fusion_gates``: the gates of the gated fusion (``stage{s}.{m}.att_layers.{i}.{j}``, their multiplies included);
* ``aux_heads``: the stage-2/3 auxiliary predictors (``last_layer_stage{2,3}``);
* ``transition_gates``: the class-map gates of the new branches (``att2.2``, ``att3.3``);
* ``loss``: the segmentation losses (resize of the logits to label size + cross-entropy);
* ``optimizer``: the SGD update;
* ``network``: everything else, i.e. what HRNetV2 has too.

Op times are summed over TensorFlow's executor threads. With 2 cores two ops often run at once and each then takes
longer, so the total exceeds the wall time and the figures are shares of work, not a timeline; ``share`` divides
each part by HRNetV2's total of the same step. Writes benchmarks/results/profile_gsto.csv.

    python benchmarks/profile_gsto.py [--width w18_small_v2] [--size 512x1024] [--steps 3]
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from gsto_tf.user_input import parse_size  # noqa: E402
from gsto_tf.tables import print_and_write  # noqa: E402
from speed import step_functions  # noqa: E402  (benchmarks/speed.py: this folder is sys.path[0])

PARTS = ("network", "fusion_gates", "aux_heads", "transition_gates", "loss", "optimizer")
# First match wins; matched against the full op name ("gradient_tape/<model>/<layer>/.../<op>").
_PART_PATTERNS = (
    ("fusion_gates", re.compile(r"\.att_layers\.")),
    ("aux_heads", re.compile(r"/last_layer_stage\d")),
    ("transition_gates", re.compile(r"/att\d\.\d")),
    ("loss", re.compile(r"segmentation_loss")),
    ("optimizer", re.compile(r"(^|/)(SGD|sgd)(_\d+)?/|AssignSubVariableOp|AssignAddVariableOp")),
)


def part_of(op_name):
    """The model part an executed op belongs to (see the module doc)."""
    for part, pattern in _PART_PATTERNS:
        if pattern.search(op_name):
            return part
    return "network"


def op_times(trace_dir, with_counts=False):
    """{op name: total duration in ms} of the TensorFlow ops in the profiler trace under ``trace_dir``; with
    ``with_counts`` also {op name: times executed}."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if len(files) != 1:
        raise RuntimeError(f"{trace_dir}: expected one *.xplane.pb profiler trace, found {len(files)}")
    space = xplane_pb2.XSpace()
    with open(files[0], "rb") as f:
        space.ParseFromString(f.read())
    totals, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # executor threads; the others are Eigen / Python
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Ops are "<node name>:<op type>"; executor and thread-pool bookkeeping events are skipped.
                if ":" in name and not name.startswith(("ExecutorState", "ThreadpoolListener")):
                    totals[name] += event.duration_ps / 1e9
                    counts[name] += 1
    return (totals, counts) if with_counts else totals


def profile_step(fn, steps):
    """{part: op ms per step} for ``steps`` profiled calls of a warmed-up step function."""
    with tempfile.TemporaryDirectory() as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        for _ in range(steps):
            fn().numpy()
        tf.profiler.experimental.stop()
        totals = op_times(trace_dir)
    parts = collections.Counter({p: 0.0 for p in PARTS})
    for name, ms in totals.items():
        parts[part_of(name)] += ms / steps
    return parts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", default="w18_small_v2")
    parser.add_argument("--size", type=parse_size, default="512x1024", help="input HxW (default 512x1024)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per model and step kind")
    parser.add_argument("--kinds", nargs="+", default=["infer", "train"], choices=["infer", "backprop", "train"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "profile_gsto.csv"))
    args = parser.parse_args(argv)
    size = args.size
    models = {family: step_functions(f"{family}_{args.width}", size)[0] for family in ("hrnetv2", "gsto_hrnet")}
    rows = []
    for kind in args.kinds:
        measured = {}
        for family, fns in models.items():
            fns[kind]().numpy()  # trace + warm up outside the profile
            fns[kind]().numpy()
            measured[family] = profile_step(fns[kind], args.steps)
        reference = sum(measured["hrnetv2"].values())
        for family, parts in measured.items():
            for part in PARTS:
                if parts[part] or family == "gsto_hrnet":
                    rows.append({"step": kind, "model": family, "part": part, "op_ms": round(parts[part], 1),
                                 "share_of_hrnetv2": round(parts[part] / reference, 3)})
            rows.append({"step": kind, "model": family, "part": "total", "op_ms": round(sum(parts.values()), 1),
                         "share_of_hrnetv2": round(sum(parts.values()) / reference, 3)})
    print_and_write(rows, args.out, f"op time per step summed by part (profiler, {args.steps} steps), {args.width}, "
                    f"batch 1, {size[0]}x{size[1]}, {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
