#!/usr/bin/env python
"""What a user waits for before the first training step, and the steps after it: HRNetV2 vs GSTO-HRNet.

Each row is one fresh process (what every run and every resume pays), doing what ``train`` does before and in
``model.fit``: build the model, ``compile_model`` it (losses of every output, TorchSGD + poly), build the
optimizer's slots (``train`` does that before ``fit`` when it restores its backup; ``train_step.py``'s
``compiled_training_model``), then ``model.fit`` on one
repeated batch at the dataset's crop size. ``first_step_s`` is the first step (tracing the training step, graph
optimisation, the first execution), ``step_s`` the median of the ``--steps`` steps after it. Processes alternate
between the models (and code versions) for ``--rounds`` rounds; ``first_step_s`` / ``step_s`` are medians over the
rounds, and ``gsto_over_hrnet`` divides GSTO-HRNet's median by HRNetV2's of the same code.

``--code LABEL=PATH`` times the gsto_tf package found under ``PATH`` (a checkout of another commit) and labels
its rows ``LABEL``; the default is this checkout, labelled ``this``. ``--no-graph-optimizer LABEL ...``: those
labels' processes run with TensorFlow's graph optimiser (Grappler) off
(``tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})``), to see what it costs the first
step and saves the others. Writes benchmarks/results/first_step.csv.

``--mixed-precision mixed_bfloat16`` sets that Keras dtype policy before each model is built (what
``train --mixed-precision`` does); its rows say so in the ``policy`` column.

``--count-ops`` instead counts the graph ops of the traced training step (``model.train_step`` as ``fit`` traces
it, same crop) and the trainable variables, per model and code version, into benchmarks/results/first_step_ops.csv:
tracing and graph optimisation take time in proportion to the ops. ``optimizer_ops`` are the ops under the
optimizer's name scope (the parameter update), ``gate_ops`` those of GSTO's gate sublayers (forward and gradient).

    python benchmarks/first_step.py [--code before=/tmp/old after=. after_no_grappler=.]
        [--no-graph-optimizer after_no_grappler] [--rounds 3] [--steps 3] [--dataset cityscapes] [--count-ops]
        [--mixed-precision mixed_bfloat16] [--out CSV]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("hrnetv2_w18_small_v2", "gsto_hrnet_w18_small_v2")
OPS_COLUMNS = ["code", "model", "policy", "crop", "graph_ops", "optimizer_ops", "gate_ops", "trainable_variables",
               "gsto_over_hrnet_ops"]
# A GatedScaleTransfer's gate sublayer (SpatialGate: conv, BN, ReLU, sigmoid), forward and gradient ops alike.
GATE_OP = re.compile(r"/gate(_\d+)?/")
COLUMNS = ["code", "model", "policy", "dataset", "crop", "build_s", "first_step_s", "step_s", "first_over_step",
           "gsto_over_hrnet_first", "gsto_over_hrnet_step", "rounds"]


def measure_one(model_name, dataset, steps, graph_optimizer=True, policy="float32"):
    """In the child process: build, compile, fit ``1 + steps`` steps; returns the times."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    keras.mixed_precision.set_dtype_policy(policy)

    if not graph_optimizer:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    from train_step import compiled_training_model  # benchmarks/ is sys.path[0]

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    model, spec, (h, w) = compiled_training_model(model_name, dataset)
    built = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, h, w, 3)).astype("float32")
    y = rng.integers(0, spec.num_classes, (1, h, w)).astype("int32")
    names = list(model.output)
    batches = tf.data.Dataset.from_tensors((x, {n: y for n in names})).repeat()
    ends = []

    class StepEnds(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    fit_start = time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=1 + steps, verbose=0, callbacks=[StepEnds()])
    times = [b - a for a, b in zip([fit_start] + ends[:-1], ends)]
    return {"build_s": built - start, "first_step_s": times[0], "step_s": statistics.median(times[1:])}


def count_ops(model_name, dataset, policy="float32"):
    """In the child process: ops of the traced training step and trainable variables, after ``compile_model``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_dtype_policy(policy)

    from train_step import compiled_training_model

    model, _, (h, w) = compiled_training_model(model_name, dataset)
    x = tf.TensorSpec((1, h, w, 3), tf.float32)
    y = {n: tf.TensorSpec((1, h, w), tf.int32) for n in model.output}
    graphs = [tf.function(lambda x, y: model.train_step((x, y))).get_concrete_function(x, y).graph for _ in range(2)]
    graph = graphs[-1]  # the second trace: state that a code version builds lazily was created by the first
    names = [op.name for op in graph.get_operations()]
    return {"graph_ops": len(names),
            "optimizer_ops": sum(name.startswith(f"{model.optimizer.name}/") for name in names),
            "gate_ops": sum(bool(GATE_OP.search(name)) for name in names),
            "trainable_variables": len(model.trainable_variables)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", nargs="+", default=[f"this={REPO}"], metavar="LABEL=PATH",
                        help="gsto_tf checkouts to time, each labelled (default: this checkout)")
    parser.add_argument("--no-graph-optimizer", nargs="+", default=[], metavar="LABEL",
                        help="code labels whose processes run with Grappler off")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--dataset", default="cityscapes", help="whose training crop size and classes to use")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per model and code version")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--count-ops", action="store_true", help="count graph ops instead of timing")
    parser.add_argument("--mixed-precision", default="float32", choices=["float32", "mixed_bfloat16"],
                        help="Keras dtype policy set before each model is built (default float32)")
    parser.add_argument("--out", help="CSV to write (default: benchmarks/results/first_step.csv, or "
                        "first_step_ops.csv with --count-ops)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_name, dataset, optimizer = args.child.split(",")
        result = count_ops(model_name, dataset, args.mixed_precision) if args.count_ops else \
            measure_one(model_name, dataset, args.steps, optimizer == "on", args.mixed_precision)
        print("RESULT " + json.dumps(result))
        return 0

    codes = []
    for item in args.code:
        label, sep, path = item.partition("=")
        if not sep or not os.path.isdir(os.path.join(path, "gsto_tf")):
            parser.error(f"--code {item!r}: expected LABEL=PATH with a gsto_tf package under PATH")
        codes.append((label, os.path.abspath(path)))
    unknown = set(args.no_graph_optimizer) - {label for label, _ in codes}
    if unknown:
        parser.error(f"--no-graph-optimizer {sorted(unknown)}: not a --code label")
    results = os.path.join(REPO, "benchmarks", "results")
    args.out = args.out or os.path.join(results, "first_step_ops.csv" if args.count_ops else "first_step.csv")
    rounds = 1 if args.count_ops else args.rounds
    runs = {}
    for round_index in range(rounds):
        for label, path in codes:
            for model_name in args.models:
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                           PYTHONPATH=os.pathsep.join([path] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
                optimizer = "off" if label in args.no_graph_optimizer else "on"
                cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{model_name},{args.dataset},{optimizer}",
                       "--steps", str(args.steps), "--mixed-precision", args.mixed_precision] + \
                    (["--count-ops"] if args.count_ops else [])
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=path)
                result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode != 0 or not result:
                    raise SystemExit(f"{label} {model_name} failed:\n{done.stderr[-3000:]}")
                row = json.loads(result[-1][len("RESULT "):])
                runs.setdefault((label, model_name), []).append(row)
                print(f"round {round_index + 1} {label} {model_name}: {row}", flush=True)

    # Imported after the children ran: the parent holds no TensorFlow while they are timed.
    from gsto_tf.tables import print_and_write
    from gsto_tf.training.config import make_config
    from train_step_profile import vector_extensions

    h, w = make_config(args.dataset).data.crop_size
    if args.count_ops:
        rows = []
        for label, _ in codes:
            hrnet = runs.get((label, "hrnetv2_w18_small_v2"))
            for model_name in args.models:
                r = runs[(label, model_name)][0]
                rows.append({"code": label, "model": model_name, "policy": args.mixed_precision,
                             "crop": f"{h}x{w}", **r,
                             "gsto_over_hrnet_ops": round(r["graph_ops"] / hrnet[0]["graph_ops"], 2) if hrnet else ""})
        print_and_write(rows, args.out, title="Graph ops of the traced training step", columns=OPS_COLUMNS)
        return 0
    medians = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for key, rows in runs.items()}
    rows = []
    for label, _ in codes:
        hrnet = medians.get((label, "hrnetv2_w18_small_v2"))
        for model_name in args.models:
            m = medians[(label, model_name)]
            rows.append({
                "code": label, "model": model_name, "policy": args.mixed_precision, "dataset": args.dataset,
                "crop": f"{h}x{w}",
                "build_s": round(m["build_s"], 1), "first_step_s": round(m["first_step_s"], 1),
                "step_s": round(m["step_s"], 3), "first_over_step": round(m["first_step_s"] / m["step_s"], 1),
                "gsto_over_hrnet_first": round(m["first_step_s"] / hrnet["first_step_s"], 2) if hrnet else "",
                "gsto_over_hrnet_step": round(m["step_s"] / hrnet["step_s"], 3) if hrnet else "",
                "rounds": args.rounds})
    print_and_write(rows, args.out, title=f"First training step vs the steps after it, batch 1, {h}x{w}, "
                    f"{os.cpu_count()} cores ({vector_extensions()}), medians of {args.rounds} fresh processes",
                    columns=COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
