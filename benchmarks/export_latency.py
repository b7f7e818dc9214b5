#!/usr/bin/env python
"""Inference latency of one model as Keras vs SavedModel vs TFLite fp32 / fp16 / dynamic / int8, batch 1.

All variants are built first, warmed up, then timed *interleaved* (each round runs every variant once), so load
from other processes hits them alike; the table gives the median of --repeats rounds and the ratio to Keras.
Keras = the inference model inside a tf.function (logits at stride 4); SavedModel = the exported
``serving_normalized`` signature (also resizes logits to the input and computes argmax + softmax, as served);
TFLite = the LiteRT interpreter on the fixed-size file (logits at stride 4), plus the fp32 dynamic-size file
(``tflite_fp32_anysize``) run at the same size. int8 is calibrated on synthetic data-pipeline images. Random weights
unless --checkpoint; the ``tflite_delegate`` column says whether XNNPACK ran or was refused (``none``: plain
builtin kernels, which random-weight int8 models need). Writes benchmarks/results/export_latency.csv
(atomically).

    python benchmarks/export_latency.py [--model gsto_hrnet_w18_small_v2] [--input-size 512x1024] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from gsto_tf.user_input import parse_size  # noqa: E402
from gsto_tf.data import build_eval_dataset, ensure_synthetic  # noqa: E402
from gsto_tf.export import TFLiteRunner, export_saved_model, export_tflite  # noqa: E402
from gsto_tf.layers import resize_bilinear  # noqa: E402
from gsto_tf.models import build, inference_model# noqa: E402
from gsto_tf.checkpoints import load_checkpoint  # noqa: E402
from gsto_tf.tables import print_and_write  # noqa: E402


def build_variants(model, size, workdir, num_calibration, threads, failed, delegates):
    """name -> zero-argument callable running one batch-1 inference to a numpy result."""
    image = tf.clip_by_value(tf.random.normal((1, *size, 3), seed=0), -2.0, 2.0)  # within the normalised range
    image_np = image.numpy()
    infer = inference_model(model, fold_batch_norm=False)  # the model as trained (inference_model is idempotent)
    keras_fn = tf.function(lambda x: infer(x, training=False))
    variants = {"keras": lambda: keras_fn(image).numpy()}
    serving = tf.saved_model.load(export_saved_model(model, os.path.join(workdir, "saved_model")))
    serving_fn = serving.signatures["serving_normalized"]
    variants["saved_model"] = lambda: serving_fn(images=image)["labels"].numpy()
    data = ensure_synthetic(os.path.join(workdir, "data"), height=64, width=128, train=2, val=num_calibration)
    calibration = [resize_bilinear(s["image"], size).numpy()
                   for s in build_eval_dataset("synthetic", data).take(num_calibration)]
    # (quantize, fixed size?): the dynamic-size fp32 file shows what resize_tensor_input costs vs a fixed size.
    for quantize, fixed in (("none", True), ("none", False), ("fp16", True), ("dynamic", True), ("int8", True)):
        name = ("tflite_fp32" if quantize == "none" else f"tflite_{quantize}") + ("" if fixed else "_anysize")
        path = export_tflite(model, os.path.join(workdir, f"{name}.tflite"), size if fixed else None, quantize,
                             representative_images=calibration if quantize == "int8" else None)
        try:
            runner = TFLiteRunner(path, num_threads=threads)
        except RuntimeError as exc:
            print(f"{name}: the interpreter failed to load: {exc}", file=sys.stderr)
            failed[name] = str(exc).splitlines()[0]
            continue
        # "none" = plain builtin kernels: XNNPACK refused the model (e.g. degenerate int8 params of random weights).
        delegates[name] = runner.delegate
        variants[name] = (lambda r: lambda: r(image_np))(runner)
    return variants


def bench(variants, repeats, warmup=2):
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gsto_hrnet_w18_small_v2")
    parser.add_argument("--checkpoint", help=".keras checkpoint (default: random weights)")
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--input-size", type=parse_size, default="512x1024")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-calibration", type=int, default=2, help="int8 representative images")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="TFLite interpreter threads")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "export_latency.csv"))
    args = parser.parse_args()
    size = args.input_size
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, name=args.model, num_classes=args.num_classes)
    else:
        keras.utils.set_random_seed(0)
        model = build(args.model, args.num_classes)
    with tempfile.TemporaryDirectory(prefix="export_latency-") as workdir:
        failed, delegates = {}, {}
        variants = build_variants(model, size, workdir, args.num_calibration, args.threads, failed, delegates)
        medians = bench(variants, args.repeats)
    rows = [{"model": args.model, "input": f"{size[0]}x{size[1]}", "variant": name, "median_s": round(t, 4),
             "vs_keras": round(t / medians["keras"], 2), "tflite_delegate": delegates.get(name, ""),
             "repeats": args.repeats} for name, t in medians.items()]
    rows += [{"model": args.model, "input": f"{size[0]}x{size[1]}", "variant": name, "median_s": "failed",
              "vs_keras": "", "tflite_delegate": "", "repeats": 0} for name in failed]
    cols = list(rows[0])
    print_and_write(rows, args.out, f"batch 1, median of {args.repeats} interleaved rounds after 2 warm-up runs, "
                    f"{os.cpu_count()} CPU cores, TFLite threads {args.threads}, weights: "
                    f"{args.checkpoint or 'random'}", columns=cols)
    return 0


if __name__ == "__main__":
    sys.exit(main())
