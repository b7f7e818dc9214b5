#!/usr/bin/env python
"""Short CamVid pilot runs that choose a training recipe by its score on streets the model has not seen.

Every pilot trains on the ``train_dev`` split of the camvid card (train without the 101 frames of sequence 0006R0),
evaluates on ``dev`` (those 101 frames, an unseen street: what tuning reads) and then on ``val`` (frames of a
training sequence: reported beside it, never tuned on). A pilot is a name and config overrides in a YAML file
(``experiments/camvid_pilots.yaml``); each one is an ordinary, resumable run directory ``<out>/<name>``, and a
finished pilot is skipped on a rerun. One row per finished pilot goes to ``<out>/pilots.csv``: recipe, steps,
wall and CPU minutes of its training process, the CPU's bf16 flags, dev and val mIoU (single scale, 360x480).

    python experiments/camvid_pilots.py --data-dir path/to/CamVid --out runs/camvid_pilots [--only NAME ...]
    python experiments/camvid_pilots.py --out runs/camvid_pilots --report     # the table of docs/study.md
"""

import argparse
import csv
import importlib.util
import json
import os
import sys
import time

import yaml

# The CPU reader and the split evaluation of the zoo script (the same measurement as its cards).
_spec = importlib.util.spec_from_file_location("zoo_add", os.path.join(os.path.dirname(__file__), "zoo_add.py"))
zoo_add = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo_add)

FIELDS = ("pilot", "model", "recipe", "steps", "wall_min", "cpu_min", "cpu_bf16", "dev_miou", "val_miou")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="CamVid root (train/, trainannot/, val/, valannot/); not for --report")
    parser.add_argument("--out", default="runs/camvid_pilots", help="output folder (default: %(default)s)")
    parser.add_argument("--pilots", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "camvid_pilots.yaml"),
                        help="YAML file {name: {section: {key: value}}} (default: camvid_pilots.yaml beside this)")
    parser.add_argument("--only", nargs="+", help="run these pilots only (default: all, in file order)")
    parser.add_argument("--report", action="store_true", help="only print pilots.csv as a markdown table")
    args = parser.parse_args(argv)
    if not args.report and not args.data_dir:
        parser.error("--data-dir is required to run pilots")
    return args


def markdown(rows):
    """The pilots table of docs/study.md."""
    lines = ["| pilot | recipe (over the camvid card's) | steps | wall min | CPU min | bf16 | dev mIoU | val mIoU |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        recipe = r["recipe"].replace(" train.epochs=null", "").replace(' train.mixed_precision="mixed_bfloat16"', "")
        lines.append(f"| {r['pilot']} | `{recipe}` | {r['steps']} | {r['wall_min']} | {r['cpu_min']} | "
                     f"{r['cpu_bf16']} | {r['dev_miou']} | {r['val_miou']} |")
    return "\n".join(lines)


def pilot_config(overrides, data_dir):
    from gsto_tf.training.config import make_config

    base = {"data": {"data_dir": data_dir, "train_split": "train_dev", "val_split": "dev"}}
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    return make_config("camvid", overrides=base)


def describe(overrides):
    """The overrides as one ``section.key=value`` line (the recipe column)."""
    return " ".join(f"{s}.{k}={json.dumps(v, separators=(',', ':'))}"
                    for s, values in overrides.items() for k, v in values.items())


def val_miou(run_dir, data_dir):
    """Single-scale mIoU of the run's final.keras (PreciseBN statistics included) on CamVid val."""
    metrics = zoo_add.evaluate_split(os.path.join(run_dir, "checkpoints", "final.keras"), "camvid", data_dir, "val")
    metrics.save(os.path.join(run_dir, "eval"), "metrics_val")
    return metrics.miou


def run_pilot(name, overrides, args):
    from gsto_tf.training.trainer import train

    run_dir = os.path.join(args.out, name)
    timing_file = os.path.join(run_dir, "pilot_time.json")
    config = pilot_config(overrides, args.data_dir)
    if not os.path.isfile(timing_file):
        previous = {"wall_s": 0.0, "cpu_s": 0.0}  # a resumed pilot adds the time of its earlier processes
        partial = os.path.join(args.out, f".{name}_time.json")
        if os.path.isfile(partial):
            with open(partial) as f:
                previous = json.load(f)
        wall, cpu = time.time(), time.process_time()
        try:
            train(config, run_dir, verbose=2)
        finally:
            spent = {"wall_s": previous["wall_s"] + time.time() - wall,
                     "cpu_s": previous["cpu_s"] + time.process_time() - cpu}
            with open(partial, "w") as f:
                json.dump(spent, f)
        os.replace(partial, timing_file)
    with open(timing_file) as f:
        spent = json.load(f)
    with open(os.path.join(run_dir, "eval", "metrics.json")) as f:
        dev = json.load(f)["mIoU"]
    return {"pilot": name, "model": config.model.name, "recipe": describe(overrides),
            "steps": config.train.steps, "wall_min": f"{spent['wall_s'] / 60:.1f}",
            "cpu_min": f"{spent['cpu_s'] / 60:.1f}", "cpu_bf16": zoo_add.cpu_info()[1],
            "dev_miou": f"{100 * dev:.1f}", "val_miou": f"{100 * val_miou(run_dir, args.data_dir):.1f}"}


def main(argv=None):
    args = parse_args(argv)
    with open(args.pilots) as f:
        pilots = yaml.safe_load(f)
    names = args.only or list(pilots)
    unknown = [n for n in names if n not in pilots]
    if unknown:
        print(f"--only: unknown pilot(s) {unknown}; {args.pilots} has {list(pilots)}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    table = os.path.join(args.out, "pilots.csv")
    rows = {}
    if os.path.isfile(table):
        with open(table, newline="") as f:
            rows = {row["pilot"]: row for row in csv.DictReader(f)}
    if args.report:
        print(markdown(list(rows.values())))
        return 0
    for name in names:
        print(f"== pilot {name}: {describe(pilots[name])}", flush=True)
        rows[name] = run_pilot(name, pilots[name], args)
        with open(table, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows.values())
        print(rows[name], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
