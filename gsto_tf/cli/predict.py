"""`gsto-tf predict`: label PNGs and colour overlays for an image, a folder or a glob."""

from gsto_tf.cli.common import (
    UsageError,
    add_allow_nonfinite_argument,
    add_dataset_argument,
    add_fold_batch_norm_argument,
    dataset_spec,
)
from gsto_tf.checkpoints import CheckpointError, load_checkpoint
from gsto_tf.evaluation.predict import expand_inputs, predict_files
from gsto_tf.evaluation.settings import test_setting
from gsto_tf.models import inference_model


def add_arguments(parser):
    parser.add_argument("inputs", help="an image, a folder of images or a glob (quote it)")
    parser.add_argument("--checkpoint", required=True, help=".keras, .weights.h5 (+ --model) or official .pth/.npz")
    parser.add_argument("--model", help="model name, for .weights.h5 and official checkpoints")
    add_dataset_argument(parser, help="gives the classes and the palette")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace label / overlay PNGs that exist already")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in [0, 1]")
    parser.add_argument("--ms", action="store_true", help="use the dataset's published multi-scale + flip setting")
    add_fold_batch_norm_argument(parser)
    add_allow_nonfinite_argument(parser)


def main(args):
    spec = dataset_spec(args.dataset)
    try:
        paths = expand_inputs(args.inputs)
        model, _ = load_checkpoint(args.checkpoint, name=args.model, num_classes=spec.num_classes,
                                   classes_of=f"dataset '{spec.name}'",
                                   allow_nonfinite=args.allow_nonfinite)
    except (FileNotFoundError, CheckpointError) as exc:
        raise UsageError(str(exc)) from exc
    setting = test_setting(spec) if args.ms else test_setting(spec).single_scale()
    try:
        infer = inference_model(model, fold_batch_norm=args.fold_batch_norm)
        written = predict_files(infer, paths, args.output, spec.palette, setting=setting,
                                opacity=args.opacity, flip_pairs=spec.flip_pairs, overwrite=args.overwrite)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(f"wrote {len(written)} files to {args.output}")
    return 0
