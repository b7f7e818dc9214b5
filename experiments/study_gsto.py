#!/usr/bin/env python
"""Where does GSTO help? GSTO-HRNet vs HRNetV2 fine-tuned from the same pretrained trunk, over several seeds.

The paper fine-tunes from ImageNet-pretrained HRNet trunks for hundreds of epochs; the built-in main job trains
from scratch for 240 steps. This study puts the two models in the paper's regime on the built-in dataset:

1. pretrain: an HRNetV2 trunk is trained once on the built-in dataset (``--pretrain-steps``); its weights without
   the head are written as an official-layout state dict (``pretrain/trunk.npz``);
2. fine-tune: HRNetV2 and GSTO-HRNet start from that trunk (heads, GSTO's gates and auxiliary heads freshly
   initialised, as the paper does from ImageNet trunks) and train for the same budget (``--steps``), one run per
   seed, evaluated with PreciseBN every ``--eval-every`` steps;
3. scratch (optional, ``--scratch-steps``): both models from scratch on a longer schedule, same seeds.

Every run is an ordinary training run directory (resumable; finished runs are skipped on a rerun). The results
go to ``<out>/study.csv`` (one row per run and evaluation), ``<out>/summary.md`` (mean +- sd per model at each
evaluation) and ``<out>/study_gsto.png`` (mIoU vs step, mean +- sd band).

    python experiments/study_gsto.py --out runs/study_gsto
"""

import argparse
import csv
import os
import statistics
import sys

MODELS = ("hrnetv2", "gsto_hrnet")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/study_gsto", help="output folder (default: %(default)s)")
    parser.add_argument("--width", default="w18_small_v2", help="HRNet width of both models (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=int, default=240, help="trunk pretraining steps (default: 240)")
    parser.add_argument("--steps", type=int, default=240, help="fine-tuning steps per run (default: 240)")
    parser.add_argument("--scratch-steps", type=int, default=0,
                        help="also train both models from scratch for this many steps (0: skip; e.g. 960)")
    parser.add_argument("--eval-every", type=int, default=40, help="steps between evaluations (default: 40)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (default: 0 1 2)")
    parser.add_argument("--pretrain-seed", type=int, default=100, help="seed of the trunk pretraining run")
    parser.add_argument("--precise-bn-batches", type=int, default=40,
                        help="PreciseBN batches before each evaluation (default: 40)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N val images only")
    args = parser.parse_args(argv)
    for name in ("pretrain_steps", "steps", "eval_every", "precise_bn_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("steps", "scratch_steps"):
        if getattr(args, name) % args.eval_every:
            parser.error(f"--{name.replace('_', '-')} ({getattr(args, name)}) must be a multiple of --eval-every "
                         f"({args.eval_every})")
    return args


def run_config(args, model, steps, seed, pretrained=None):
    from gsto_tf.training.config import make_config

    return make_config("synthetic", overrides={
        "model": {"name": f"{model}_{args.width}", "pretrained": pretrained},
        "train": {"steps": steps, "seed": seed, "checkpoint_every": args.eval_every, "eval_every": 1},
        "eval": {"precise_bn_batches": args.precise_bn_batches, "limit": args.eval_limit},
    })


def train_once(config, run_dir):
    """Train unless ``run_dir`` already holds the finished run (its final metrics)."""
    from gsto_tf.training.trainer import train

    if not os.path.isfile(os.path.join(run_dir, "eval", "metrics.json")):
        train(config, run_dir, verbose=2)


def write_trunk(run_dir):
    """The pretrained HRNetV2's weights without its head, as an official-layout state dict."""
    import keras
    import numpy as np

    from gsto_tf.checkpoints import is_head_key, torch_state_dict

    path = os.path.join(run_dir, "trunk.npz")
    if not os.path.isfile(path):
        model = keras.saving.load_model(os.path.join(run_dir, "checkpoints", "final.keras"), compile=False)
        from gsto_tf.atomic import write_atomically

        state = torch_state_dict(model, include=lambda key: not is_head_key(key))
        write_atomically(path, lambda tmp: np.savez(tmp, **state))
    return path


def read_history(run_dir):
    """``[(step, val_miou)]`` of a run's evaluations (history.csv), plus the final evaluation."""
    import json

    rows = []
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val_miou"):
                rows.append((int(row["step"]), float(row["val_miou"])))
    with open(os.path.join(run_dir, "eval", "metrics.json")) as f:
        final = json.load(f)
    return rows, float(final["mIoU"])


def summarise(rows):
    """``{(schedule, model, step): (mean, sd, n)}`` over seeds."""
    groups = {}
    for schedule, model, _, step, miou in rows:
        groups.setdefault((schedule, model, step), []).append(miou)
    return {key: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for key, v in sorted(groups.items())}


def write_summary(path, summary, args):
    lines = [f"GSTO-HRNet vs HRNetV2 ({args.width}), built-in dataset, mIoU (%) with PreciseBN "
             f"({args.precise_bn_batches} batches), mean +- sd over seeds {' '.join(map(str, args.seeds))}.", ""]
    for schedule in sorted({k[0] for k in summary}):
        steps = sorted({k[2] for k in summary if k[0] == schedule})
        lines += [f"**{schedule}**", "", "| step | " + " | ".join(MODELS) + " |",
                  "|---:|" + "---:|" * len(MODELS)]
        for step in steps:
            cells = []
            for model in MODELS:
                mean, sd, n = summary.get((schedule, model, step), (float("nan"), float("nan"), 0))
                cells.append(f"{100 * mean:.1f} +- {100 * sd:.1f}")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(path, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedules = sorted({k[0] for k in summary})
    fig, axes = plt.subplots(1, len(schedules), figsize=(5 * len(schedules), 3.6), squeeze=False)
    for ax, schedule in zip(axes[0], schedules):
        for model, colour in zip(MODELS, ("tab:blue", "tab:orange")):
            keys = sorted(k for k in summary if k[0] == schedule and k[1] == model)
            steps = [k[2] for k in keys]
            mean = [100 * summary[k][0] for k in keys]
            sd = [100 * summary[k][1] for k in keys]
            ax.plot(steps, mean, marker="o", color=colour, label=model)
            ax.fill_between(steps, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=colour, alpha=0.2)
        ax.set_title(schedule)
        ax.set_xlabel("step")
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    pretrain_dir = os.path.join(args.out, "pretrain")
    train_once(run_config(args, "hrnetv2", args.pretrain_steps, args.pretrain_seed), pretrain_dir)
    trunk = write_trunk(pretrain_dir)

    schedules = [("fine-tune from trunk", "finetune", args.steps, trunk)]
    if args.scratch_steps:
        schedules.append(("from scratch", "scratch", args.scratch_steps, None))
    rows = []
    for title, folder, steps, pretrained in schedules:
        for model in MODELS:
            for seed in args.seeds:
                run_dir = os.path.join(args.out, folder, f"{model}_seed{seed}")
                print(f"== {title}: {model}_{args.width}, seed {seed}, {steps} steps -> {run_dir}", flush=True)
                train_once(run_config(args, model, steps, seed, pretrained), run_dir)
                history, final = read_history(run_dir)
                rows += [(title, model, seed, step, miou) for step, miou in history]
                if not history or history[-1][0] != steps:
                    rows.append((title, model, seed, steps, final))

    with open(os.path.join(args.out, "study.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["schedule", "model", "seed", "step", "miou"])
        writer.writerows(rows)
    summary = summarise(rows)
    write_summary(os.path.join(args.out, "summary.md"), summary, args)
    plot(os.path.join(args.out, "study_gsto.png"), summary)
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
