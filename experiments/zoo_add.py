#!/usr/bin/env python
"""Make a model-zoo folder (``gsto_tf/zoo/<name>/``) from a finished training run directory.

Writes ``model.keras`` (the run's final.keras without its optimizer state, in float32 compute, BatchNorm not folded),
``history.csv`` (the run's) and ``card.yaml``: the run's config, steps, wall time (``--wall-minutes``, or the run's
``pilot_time.json``), the CPU, and single-scale mIoU with per-class IoU on each ``--splits`` split, measured here
with the same code as ``gsto-tf eval --checkpoint <name> --split SPLIT --ss``.

    python experiments/zoo_add.py runs/camvid_gsto camvid_gsto_hrnet_w18_small_v2 --data-dir CamVid --splits dev val
    python experiments/zoo_add.py --report camvid_gsto_hrnet_w18_small_v2     # its tables for docs/study.md
"""

import argparse
import csv
import json
import os
import shutil
import sys

import yaml


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a finished training run (config.yaml, history.csv, "
                        "checkpoints/final.keras)")
    parser.add_argument("name", help="zoo name (a plain name: letters, digits, '_')")
    parser.add_argument("--report", action="store_true", help="only print the shipped model's tables (markdown): "
                        "per-class IoU and the evaluations during training")
    parser.add_argument("--data-dir", help="the dataset root, for the scores")
    parser.add_argument("--splits", nargs="+", default=["val"], help="splits to score (default: val)")
    parser.add_argument("--wall-minutes", type=float, help="training wall time (default: from pilot_time.json)")
    parser.add_argument("--note", default="", help="one sentence on how the model was made")
    args = parser.parse_args(argv)
    if not args.report and not (args.run_dir and args.data_dir):
        parser.error("a run directory and --data-dir are needed to add a model (or --report NAME)")
    return args


def report(name):
    """Markdown: per-class IoU of each scored split, and the evaluations during training from the history."""
    from gsto_tf.checkpoints import zoo_entry

    entry = zoo_entry(name)
    card, classes = entry.card, entry.card["classes"]
    lines = [f"| {name} | mIoU | pixel acc. | " + " | ".join(classes) + " |", "|---|---:|---:|" + "---:|" * len(classes)]
    for split, s in card["scores"].items():
        cells = ["n/a" if s["per_class_iou"][c] is None else f"{s['per_class_iou'][c]:.1f}" for c in classes]
        lines.append(f"| {split} | {s['miou']:.1f} | {s['pixel_accuracy']:.1f} | " + " | ".join(cells) + " |")
    val_split = card["config"]["data"]["val_split"]
    with open(entry.history, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_miou")]
    lines += ["", f"| step | {val_split} mIoU during training (PreciseBN) | loss |", "|---:|---:|---:|"]
    lines += [f"| {r['step']} | {100 * float(r['val_miou']):.1f} | {float(r['loss']):.3f} |" for r in rows]
    return "\n".join(lines)


def cpu_info():
    """(model name, bf16 instructions such as ``avx512_bf16`` / ``amx_bf16`` joined by '+', or ``none``), as
    /proc/cpuinfo says."""
    name, flags = "unknown CPU", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    return name, "+".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def evaluate_split(checkpoint, dataset, data_dir, split):
    """SegmentationMetrics of ``checkpoint`` on ``split``, single scale (as ``gsto-tf eval --split SPLIT --ss``)."""
    from gsto_tf.checkpoints import load_checkpoint
    from gsto_tf.data import build_eval_dataset, get_dataset_spec
    from gsto_tf.evaluation import evaluate, test_setting
    from gsto_tf.models import inference_model

    spec = get_dataset_spec(dataset)
    model, _ = load_checkpoint(checkpoint, num_classes=spec.num_classes)
    return evaluate(inference_model(model), build_eval_dataset(spec, data_dir, split=split), spec,
                    setting=test_setting(spec).single_scale(), progress=False)


def score(checkpoint, dataset, data_dir, split):
    """The card's scores of one split: mIoU, pixel accuracy and per-class IoU in %."""
    metrics = evaluate_split(checkpoint, dataset, data_dir, split)
    return {"miou": round(100 * float(metrics.miou), 2), "pixel_accuracy": round(100 * float(metrics.pixel_accuracy), 2),
            "per_class_iou": {name: None if iou != iou else round(100 * float(iou), 2)
                              for name, iou in zip(metrics.class_names, metrics.per_class_iou)}}


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(report(args.name))
        return 0
    from gsto_tf.checkpoints import load_checkpoint
    from gsto_tf.checkpoints.zoo import CARD_FILE, HISTORY_FILE, MODEL_FILE, ZOO_DIR

    with open(os.path.join(args.run_dir, "config.yaml")) as f:
        config = yaml.safe_load(f)
    with open(os.path.join(args.run_dir, "history.csv"), newline="") as f:
        history = list(csv.DictReader(f))
    wall = args.wall_minutes
    if wall is None:
        with open(os.path.join(args.run_dir, "pilot_time.json")) as f:
            wall = json.load(f)["wall_s"] / 60
    folder = os.path.join(ZOO_DIR, args.name)
    os.makedirs(folder, exist_ok=True)
    trained, _ = load_checkpoint(os.path.join(args.run_dir, "checkpoints", "final.keras"))
    # Rebuilt in float32: a run under mixed_bfloat16 saves bf16 compute in its layers, which is slow on CPUs without
    # bf16 instructions. The variables are float32 either way; no optimizer state is copied.
    from gsto_tf.models import build

    model = build(config["model"]["name"], trained.output["logits"].shape[-1], **config["model"]["options"])
    model.set_weights(trained.get_weights())
    model.save(os.path.join(folder, MODEL_FILE))
    shutil.copyfile(os.path.join(args.run_dir, "history.csv"), os.path.join(folder, HISTORY_FILE))
    dataset = config["data"]["dataset"]
    config["data"]["data_dir"] = None  # the machine's folder is no fact of the model
    scores = {split: score(os.path.join(folder, MODEL_FILE), dataset, args.data_dir, split) for split in args.splits}
    cpu_name, bf16 = cpu_info()
    card = {
        "name": args.name, "model": config["model"]["name"], "dataset": dataset,
        "classes": list(scores[args.splits[0]]["per_class_iou"]),
        "note": args.note,
        "steps": int(history[-1]["step"]), "final_loss": round(float(history[-1]["loss"]), 4),
        "wall_minutes": round(wall, 1), "cpu": f"{cpu_name}, {os.cpu_count()} cores, {bf16}",
        "scores": scores,
        "measure": {split: f"gsto-tf eval --dataset {dataset} --data-dir DIR --split {split} --checkpoint {args.name}"
                    " --ss" for split in args.splits},
        "config": config,
    }
    with open(os.path.join(folder, CARD_FILE), "w") as f:
        yaml.safe_dump(card, f, sort_keys=False, width=110)
    size = os.path.getsize(os.path.join(folder, MODEL_FILE)) / 2**20
    print(f"wrote {folder} ({size:.1f} MB model): " + ", ".join(f"{s} {v['miou']:.2f}" for s, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
