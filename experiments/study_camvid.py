#!/usr/bin/env python
"""Real photographs: HRNetV2 and GSTO-HRNet trained from scratch on CamVid train with one recipe and budget,
evaluated on CamVid val (mIoU, per-class IoU, learning curves, PreciseBN as in the main job).

Each model is an ordinary training run directory under ``--out`` (resumable; a finished run is skipped on a rerun),
so the models can be trained one after the other or side by side (``--models hrnetv2`` in one process,
``--models gsto_hrnet`` in another), then summarised with ``--report``. The results go to ``<out>/study.csv`` (one
row per run and evaluation), ``<out>/summary.md`` (mIoU and per-class IoU tables) and ``<out>/study_camvid.png``
(val mIoU vs step).

    python experiments/study_camvid.py --data-dir path/to/CamVid --out runs/study_camvid
"""

import argparse
import csv
import importlib.util
import json
import os
import sys

# The shared study helpers (train a run unless finished, read its history, mean +- sd, the curves figure).
_spec = importlib.util.spec_from_file_location("study_gsto", os.path.join(os.path.dirname(__file__), "study_gsto.py"))
study_gsto = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study_gsto)
plot, read_history, summarise, train_once = (study_gsto.plot, study_gsto.read_history, study_gsto.summarise,
                                             study_gsto.train_once)

MODELS = ("hrnetv2", "gsto_hrnet")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="CamVid root (train/, trainannot/, val/, valannot/)")
    parser.add_argument("--dataset", default="camvid", help="built-in name or card file (default: camvid)")
    parser.add_argument("--out", default="runs/study_camvid", help="output folder (default: %(default)s)")
    parser.add_argument("--width", default="w18_small_v2", help="HRNet width of both models (default: %(default)s)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per run (default: 400)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (default: 8)")
    parser.add_argument("--crop-size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                        help="training crop (default: 256 256; the card's recipe uses 360 480)")
    parser.add_argument("--lr", type=float, default=0.02, help="initial learning rate (default: 0.02)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations (default: 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    parser.add_argument("--precise-bn-batches", type=int, default=20,
                        help="PreciseBN batches before each evaluation (default: 20)")
    parser.add_argument("--report", action="store_true", help="only summarise the finished runs under --out")
    args = parser.parse_args(argv)
    if args.steps % args.eval_every:
        parser.error(f"--steps ({args.steps}) must be a multiple of --eval-every ({args.eval_every})")
    return args


def run_config(args, model, seed):
    from gsto_tf.training.config import make_config

    return make_config(args.dataset, overrides={
        "data": {"data_dir": args.data_dir, "crop_size": list(args.crop_size)},
        "model": {"name": f"{model}_{args.width}"},
        "train": {"steps": args.steps, "epochs": None, "seed": seed, "global_batch_size": args.batch_size,
                  "lr": args.lr, "checkpoint_every": args.eval_every, "eval_every": 1},
        "eval": {"precise_bn_batches": args.precise_bn_batches},
    })


def run_dir_of(args, model, seed):
    return os.path.join(args.out, f"{model}_seed{seed}")


def final_metrics(run_dir):
    with open(os.path.join(run_dir, "eval", "metrics.json")) as f:
        return json.load(f)


def write_summary(path, args, finals, summary):
    """mIoU per model (mean over seeds) and the per-class IoU of each run."""
    done = [(model, seed) for model in MODELS for seed in args.seeds if (model, seed) in finals]
    classes = list(finals[done[0]]["per_class_iou"]) if done else []
    lines = [f"CamVid val (101 images, 360x480, single scale), {args.width} from scratch: {args.steps} steps, batch "
             f"{args.batch_size}, crop {args.crop_size[0]}x{args.crop_size[1]}, lr {args.lr}, median-frequency "
             f"class weights, PreciseBN ({args.precise_bn_batches} batches). IoU in %.", "",
             "| run | mIoU | pixel acc. | " + " | ".join(classes) + " |",
             "|---|---:|---:|" + "---:|" * len(classes)]
    for model, seed in done:
        m = finals[(model, seed)]
        cells = [f"{100 * (m['per_class_iou'][c] or 0):.1f}" for c in classes]
        lines.append(f"| {model} seed {seed} | {100 * m['mIoU']:.1f} | {100 * m['pixel_accuracy']:.1f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "val mIoU (%) during training (PreciseBN before each evaluation):", "",
              "| step | " + " | ".join(MODELS) + " |", "|---:|" + "---:|" * len(MODELS)]
    for step in sorted({k[2] for k in summary}):
        cells = []
        for model in MODELS:
            mean, sd, n = summary.get(("from scratch", model, step), (float("nan"), 0.0, 0))
            cells.append(f"{100 * mean:.1f}" + (f" +- {100 * sd:.1f}" if n > 1 else ""))
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.report:
        for model in args.models:
            for seed in args.seeds:
                run_dir = run_dir_of(args, model, seed)
                print(f"== {model}_{args.width}, seed {seed}, {args.steps} steps -> {run_dir}", flush=True)
                train_once(run_config(args, model, seed), run_dir)
    rows, finals = [], {}
    for model in MODELS:
        for seed in args.seeds:
            run_dir = run_dir_of(args, model, seed)
            if not os.path.isfile(os.path.join(run_dir, "eval", "metrics.json")):
                continue
            history, final = read_history(run_dir)
            rows += [("from scratch", model, seed, step, miou) for step, miou in history]
            if not history or history[-1][0] != args.steps:
                rows.append(("from scratch", model, seed, args.steps, final))
            finals[(model, seed)] = final_metrics(run_dir)
    if not finals:
        print("no finished run yet")
        return 1
    with open(os.path.join(args.out, "study.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["schedule", "model", "seed", "step", "miou"])
        writer.writerows(rows)
    summary = summarise(rows)
    write_summary(os.path.join(args.out, "summary.md"), args, finals, summary)
    plot(os.path.join(args.out, "study_camvid.png"), summary)
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
