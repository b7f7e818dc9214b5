"""`gsto-tf [train]`: train with a published recipe (or the synthetic default), then evaluate."""

import datetime
import os

from gsto_tf.cli.common import add_dataset_argument
from gsto_tf.training.config import MIXED_PRECISION_POLICIES, STRATEGIES, make_config


def add_arguments(parser):
    add_dataset_argument(parser, help="the dataset; its card's recipe is the run's default config")
    parser.add_argument("--model", help="model name (default: the recipe's; see `gsto-tf --help`)")
    parser.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    parser.add_argument("--run-dir", help="output folder (default runs/<dataset>-<model>-<time>); rerun the same "
                        "command with the same --run-dir to resume an interrupted run")
    parser.add_argument("--epochs", type=int, help="dataset epochs")
    parser.add_argument("--steps", type=int, help="optimiser steps (wins over --epochs)")
    parser.add_argument("--batch-size", type=int, help="GLOBAL batch size over all replicas")
    parser.add_argument("--config", help="YAML file with data/model/train/eval sections")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config value, e.g. --set train.lr=0.01 (repeatable)")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="multi_worker reads TF_CONFIG (one process per machine)")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISION_POLICIES,
                        help="Keras mixed-precision policy (default: float32); bf16 pays only on CPUs with bf16 "
                        "instructions (docs/precision.md)")
    parser.add_argument("--pretrained", help="official ImageNet HRNet checkpoint (.pth/.npz, backbone keys), or a "
                        "model trained here to fine-tune (.keras or a zoo name)")
    parser.add_argument("--seed", type=int, help="seed of initialisation, data order and augmentation (default 0)")
    parser.add_argument("--ss", action="store_true", help="evaluate single-scale only")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")


def config_from_args(args):
    overrides = {"data": {}, "model": {}, "train": {}, "eval": {}}
    for key, section, name in (("data_dir", "data", "data_dir"), ("model", "model", "name"),
                               ("epochs", "train", "epochs"), ("steps", "train", "steps"),
                               ("batch_size", "train", "global_batch_size"), ("strategy", "train", "strategy"),
                               ("mixed_precision", "train", "mixed_precision"), ("pretrained", "model", "pretrained"),
                               ("seed", "train", "seed")):
        value = getattr(args, key)
        if value is not None:
            overrides[section][name] = value
    if args.epochs is not None and args.steps is None:
        overrides["train"]["steps"] = None
    if args.ss:
        overrides["eval"]["single_scale"] = True
    return make_config(args.dataset, args.config, overrides, args.set)


def main(args):
    from gsto_tf.data import get_dataset_spec
    from gsto_tf.training.trainer import train

    config = config_from_args(args)  # ConfigError: one line, exit 2 (gsto_tf.cli.main)

    run_dir = args.run_dir or os.path.join(
        "runs", f"{get_dataset_spec(config.data.dataset).name}-{config.model.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    result = train(config, run_dir, evaluate_at_end=not args.no_eval)
    if result.stopped_on_nan_at is not None:
        return 3
    print(f"run dir: {result.run_dir} ({result.seconds / 60:.1f} min)")
    return 0
