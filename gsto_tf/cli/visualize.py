"""`gsto-tf visualize KIND`: predictions, gates, features, confusion, curves -> PNG."""

import json

import numpy as np

from gsto_tf import visualize
from gsto_tf.checkpoints import CheckpointError, load_checkpoint
from gsto_tf.cli.common import UsageError, add_allow_nonfinite_argument, add_dataset_argument, dataset_spec
from gsto_tf.data import build_eval_dataset, resolve_data_dir
from gsto_tf.data.decode import read_checked
from gsto_tf.evaluation import Predictor, SegmentationMetrics, test_setting
from gsto_tf.models import gate_model, inference_model
from gsto_tf.user_input import int_in

KINDS = ("predictions", "gates", "features", "confusion", "curves")


def add_arguments(parser):
    parser.add_argument("kind", choices=KINDS, help="what to draw: " + ", ".join(KINDS))
    parser.add_argument("--output", required=True, help="PNG path")
    parser.add_argument("--checkpoint", nargs="+", help="model checkpoint(s); `features` compares several")
    parser.add_argument("--model", help="model name for .weights.h5 / official checkpoints")
    add_dataset_argument(parser, help="gives the images, classes and palette")
    parser.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    parser.add_argument("--index", type=int_in(0, 10**9), default=0, help="validation image used by gates / features")
    parser.add_argument("--num", type=int_in(1, 32), default=3,
                        help="images in the predictions grid (1..32), drawn over the split")
    parser.add_argument("--seed", type=int, default=0, help="which images the predictions grid draws (default: 0)")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in [0, 1]")
    parser.add_argument("--metrics", help="metrics JSON (confusion)")
    parser.add_argument("--run-dir", help="training run dir (curves)")
    add_allow_nonfinite_argument(parser)


def _models(args, spec):
    if not args.checkpoint:
        raise UsageError(f"visualize {args.kind}: --checkpoint is required")
    try:
        models = [load_checkpoint(p, name=args.model, num_classes=spec.num_classes,
                                  classes_of=f"dataset '{spec.name}'",
                                  allow_nonfinite=args.allow_nonfinite)[0] for p in args.checkpoint]
    except CheckpointError as exc:
        raise UsageError(f"visualize: {exc}") from exc
    # Row labels: the model names, made unique with the checkpoint path when two models share a name.
    names = [m.name for m in models]
    labels = [n if names.count(n) == 1 else f"{n} ({p})" for n, p in zip(names, args.checkpoint)]
    return list(zip(labels, models))


def _samples(spec, args, count=None):
    """The ``--index``-th validation image, or (``count``) that many drawn over the split with ``--seed``."""
    data_dir = resolve_data_dir(spec, args.data_dir)
    if count is None:
        ds = build_eval_dataset(spec, data_dir).skip(args.index).take(1)
    else:
        ds = build_eval_dataset(spec, data_dir, spread=count, seed=args.seed)
    samples = [(s["image"].numpy(), s["label"].numpy()) for s in read_checked(ds)]  # a bad file: one line naming it
    if not samples:
        raise UsageError(f"visualize {args.kind}: --index {args.index} is past the last validation image of "
                         f"dataset '{spec.name}'")
    return samples


def main(args):
    spec = dataset_spec(args.dataset)
    if args.kind == "curves":
        if not args.run_dir:
            raise UsageError("visualize curves: --run-dir is required")
        try:
            path = visualize.training_curves(args.run_dir, args.output)
        except (OSError, ValueError) as exc:
            raise UsageError(f"visualize curves: {exc}") from exc
    elif args.kind == "confusion":
        if not args.metrics:
            raise UsageError("visualize confusion: --metrics path/to/metrics.json is required")
        with open(args.metrics) as f:
            data = json.load(f)
        metrics = SegmentationMetrics.from_confusion(np.asarray(data["confusion_matrix"]),
                                                     list(data["per_class_iou"]), data.get("setting", ""))
        path = visualize.confusion_plot(metrics, args.output)
    elif args.kind == "predictions":
        (_, model), = _models(args, spec)[:1]
        # the setting `predict` uses by default: the dataset's published one, single-scale
        predictor = Predictor.from_setting(inference_model(model), test_setting(spec).single_scale(),
                                           spec.flip_pairs)
        rows = [(img, lab, predictor.predict(img).numpy()) for img, lab in _samples(spec, args, args.num)]
        path = visualize.prediction_grid(rows, spec, args.output, args.opacity)
    elif args.kind == "gates":
        (_, model), = _models(args, spec)[:1]
        image, _ = _samples(spec, args)[0]
        try:
            gates = gate_model(model)(image[None])
        except ValueError as exc:
            raise UsageError(f"visualize gates: {exc}") from exc
        path = visualize.gate_grid({k: np.asarray(v) for k, v in gates.items()}, image, args.output)
    else:  # features
        image, _ = _samples(spec, args)[0]
        feats = {name: [np.asarray(f) for f in visualize.branch_features(m)(image[None])]
                 for name, m in _models(args, spec)}
        path = visualize.branch_feature_grid(feats, image, args.output)
    print(f"wrote {path}")
    return 0
