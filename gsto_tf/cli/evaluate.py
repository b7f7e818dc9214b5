"""`gsto-tf eval`: evaluate a checkpoint with the published test setting (and/or single-scale)."""

import os

import numpy as np

from gsto_tf.atomic import storage_errors
from gsto_tf.checkpoints import CheckpointError, load_checkpoint
from gsto_tf.cli.common import (
    UsageError,
    add_allow_nonfinite_argument,
    add_dataset_argument,
    add_fold_batch_norm_argument,
    dataset_spec,
)
from gsto_tf.data import DatasetError, build_eval_dataset, resolve_data_dir
from gsto_tf.evaluation import evaluate, test_setting
from gsto_tf.images import inference_problem, save_png
from gsto_tf.models import inference_model
from gsto_tf.user_input import int_in, parse_size


def add_arguments(parser):
    add_dataset_argument(parser, help="the evaluated dataset, its classes and its test setting")
    parser.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    parser.add_argument("--split", default="val", help="split of the dataset's card to evaluate (default: val)")
    parser.add_argument("--checkpoint", required=True, help=".keras, .weights.h5 (+ --model) or official .pth/.npz")
    parser.add_argument("--model", help="model name, for .weights.h5 and official checkpoints")
    parser.add_argument("--num-classes", type=int, help="default: the dataset's")
    parser.add_argument("--mode", choices=["whole", "slide"], help="default: the published setting's")
    parser.add_argument("--scales", type=float, nargs="+", help="default: the published setting's")
    parser.add_argument("--flip", action=__import__("argparse").BooleanOptionalAction, default=None,
                        help="average with the horizontally flipped image (default: the published setting's)")
    parser.add_argument("--crop-size", type=parse_size, help="slide window HxW")
    parser.add_argument("--ss", action="store_true", help="single-scale (one scale, no flip) only")
    parser.add_argument("--both", action="store_true", help="report single-scale and the published setting")
    parser.add_argument("--limit", type=int_in(1, 10**9), help="first N images only")
    parser.add_argument("--run-dir", default=None,
                        help="where metrics JSON/CSV go (default: RUN/eval for a checkpoint of a training run RUN, "
                        "else eval/ beside the checkpoint); files metrics[_SPLIT]_ss|_ms")
    parser.add_argument("--submission-dir", help="also write Cityscapes test-server PNGs (label ids) here")
    add_fold_batch_norm_argument(parser)
    add_allow_nonfinite_argument(parser)


def _setting(args, spec):
    base = test_setting(spec)
    changes = {}
    if args.mode:
        changes["mode"] = args.mode
    if args.scales:
        changes["scales"] = tuple(args.scales)
    if args.flip is not None:
        changes["flip"] = args.flip
    if args.crop_size:
        changes["crop_size"] = args.crop_size
    import dataclasses

    setting = dataclasses.replace(base, **changes)
    if setting.mode == "slide" and not setting.crop_size:
        raise UsageError("--mode slide needs --crop-size HxW")
    problem = inference_problem(setting.scales, setting.crop_size if setting.mode == "slide" else None,
                                setting.stride if setting.mode == "slide" else None)
    if problem:
        raise UsageError(f"eval: --scales / --crop-size: {problem}")
    return setting


def metrics_dir(checkpoint):
    """Where ``eval`` writes its metrics by default: for a checkpoint of a training run (``RUN/checkpoints/*``),
    ``RUN/eval``, beside the metrics that training wrote; for any other checkpoint, ``eval/`` beside it."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    run = os.path.dirname(folder)
    if os.path.basename(folder) == "checkpoints" and os.path.isfile(os.path.join(run, "config.yaml")):
        return os.path.join(run, "eval")
    return os.path.join(folder, "eval")


def submission_writer(spec, directory):
    """Cityscapes test server: label-id PNGs named like the input (<city>_<seq>_<frame>_leftImg8bit.png)."""
    with storage_errors(directory):
        os.makedirs(directory, exist_ok=True)

    def write(path, pred):
        save_png(os.path.join(directory, os.path.basename(path)), spec.unmap_labels(pred).astype(np.uint8))

    return write


def main(args):
    spec = dataset_spec(args.dataset)
    try:
        model, report = load_checkpoint(
            args.checkpoint, name=args.model, num_classes=args.num_classes or spec.num_classes,
            classes_of="--num-classes" if args.num_classes else f"dataset '{spec.name}'",
            allow_nonfinite=args.allow_nonfinite)
    except CheckpointError as exc:
        raise UsageError(f"eval: {exc}") from exc
    if report is not None:
        print(report.summary())
    model = inference_model(model, fold_batch_norm=args.fold_batch_norm)
    published = _setting(args, spec)
    settings = [published.single_scale()] if args.ss else [published]
    if args.both and not args.ss and published != published.single_scale():
        settings = [published.single_scale(), published]
    run_dir = args.run_dir or metrics_dir(args.checkpoint)
    with storage_errors(run_dir):  # an unwritable destination fails now, not after the evaluation
        os.makedirs(run_dir, exist_ok=True)
    try:
        data_dir = resolve_data_dir(spec, args.data_dir)
        for setting in settings:
            on_prediction = submission_writer(spec, args.submission_dir) if args.submission_dir else None
            metrics = evaluate(model, build_eval_dataset(spec, data_dir, split=args.split), spec,
                               setting=setting, limit=args.limit, on_prediction=on_prediction)
            stem = "metrics" + ("" if args.split == "val" else f"_{args.split}") + (
                "_ss" if setting == setting.single_scale() else "_ms")
            json_path, _ = metrics.save(run_dir, stem)
            print(metrics.table())
            print(f"saved {json_path}")
    except (DatasetError, CheckpointError) as exc:
        raise UsageError(f"eval: {exc}") from exc
    return 0
