#!/usr/bin/env python
"""Train-step time and peak memory on this CPU: w18_small_v2 and w48 (GSTO-HRNet and HRNetV2) at the datasets'
crop sizes, the training graph exactly as `run.py` compiles it (dict outputs, aux losses, TorchSGD + poly).

Each (model, crop, batch) runs in its own subprocess so that its peak RSS (``ru_maxrss``, includes TF and the
model) is its own. The step time is the median of ``--steps`` timed ``train_on_batch`` calls after one warm-up
step (which traces the graph). The machine is shared: timings are noisy, compare rows of one run.

    python benchmarks/train_step.py                         # default grid, prints a table, writes CSV
    python benchmarks/train_step.py --models gsto_hrnet_w18_small_v2 --crops synthetic cityscapes --batch 2
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from gsto_tf.tables import format_table, write_csv  # no TensorFlow import: the parent stays light

DEFAULT_MODELS = ("gsto_hrnet_w18_small_v2", "hrnetv2_w18_small_v2", "gsto_hrnet_w48", "hrnetv2_w48")
DEFAULT_CROPS = ("cityscapes", "pascal_context", "lip")


def compiled_training_model(model_name, dataset):
    """``(model, spec, (h, w))``: ``model_name`` built for ``dataset``'s classes and compiled as ``train`` compiles
    it (``compile_model``, the optimizer's slots built as ``train`` builds them before ``fit``); ``(h, w)`` is the
    dataset's training crop. Shared by the benchmarks that time the training step."""
    from gsto_tf.data import get_dataset_spec
    from gsto_tf.models import build
    from gsto_tf.training.config import make_config
    from gsto_tf.training.trainer import compile_model

    spec = get_dataset_spec(dataset)
    config = make_config(dataset)
    model = build(model_name, spec.num_classes)
    compile_model(model, config, spec, total_steps=1000)
    model.optimizer.build(model.trainable_variables)  # a no-op where compile_model built it
    return model, spec, tuple(config.data.crop_size)


def measure_one(model_name, dataset, batch, steps):
    """Runs inside the child process; returns a result dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model, spec, (h, w) = compiled_training_model(model_name, dataset)
    names = list(model.output)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, h, w, 3)).astype("float32")
    y = rng.integers(0, spec.num_classes, (batch, h, w)).astype("int32")
    labels = {n: y for n in names}
    t0 = time.perf_counter()
    model.train_on_batch(x, labels)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, labels)
        times.append(time.perf_counter() - t0)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"model": model_name, "crop": f"{h}x{w}", "dataset": dataset, "batch": batch,
            "step_s": round(statistics.median(times), 3), "min_step_s": round(min(times), 3),
            "first_step_s": round(first, 1), "images_per_s": round(batch / statistics.median(times), 3),
            "peak_rss_mib": round(rss_mib), "params_m": round(model.count_params() / 1e6, 2)}


COLUMNS = ["model", "crop", "batch", "step_s", "min_step_s", "images_per_s", "first_step_s", "peak_rss_mib",
           "params_m"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--crops", nargs="+", default=list(DEFAULT_CROPS),
                        help="datasets whose training crop size (and class count) to use")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "train_step.csv"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_name, dataset, batch = args.child.split(",")
        print("RESULT " + json.dumps(measure_one(model_name, dataset, int(batch), args.steps)))
        return 0

    rows = []
    for model_name in args.models:
        for dataset in args.crops:
            for batch in args.batch:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{model_name},{dataset},{batch}",
                       "--steps", str(args.steps)]
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                except subprocess.TimeoutExpired:
                    rows.append({"model": model_name, "dataset": dataset, "batch": batch,
                                 "step_s": f"timeout>{args.timeout}s"})
                    print(f"{model_name} {dataset} b{batch}: timed out after {args.timeout}s", flush=True)
                    continue
                result = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
                if done.returncode != 0 or not result:
                    raise SystemExit(f"{model_name} {dataset} b{batch} failed:\n{done.stderr[-3000:]}")
                row = json.loads(result[-1][len("RESULT "):])
                rows.append(row)
                print(f"{model_name} {row['crop']} b{batch}: {row['step_s']} s/step, "
                      f"peak RSS {row['peak_rss_mib']} MiB", flush=True)
    print(f"\nTrain step on this CPU ({os.cpu_count()} cores, shared: timings are noisy), "
          f"median of {args.steps} steps after a warm-up step")
    print(format_table(rows, COLUMNS))
    fields = ["model", "dataset", "crop", "batch", "step_s", "min_step_s", "images_per_s", "first_step_s",
              "peak_rss_mib", "params_m"]
    write_csv(rows, args.out, fields)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
