"""`gsto-tf export`: SavedModel (serving signatures) or TFLite (fp32 / fp16 / dynamic / int8) with a parity report."""

from gsto_tf.cli.common import (
    UsageError,
    add_allow_nonfinite_argument,
    add_dataset_argument,
    add_fold_batch_norm_argument,
    dataset_spec,
    native_info_hidden,
)
from gsto_tf.data import DatasetError, build_eval_dataset, get_dataset_spec, resolve_data_dir
from gsto_tf.export import (
    DEFAULT_MAX_PIXELS,
    QUANTIZE_MODES,
    TFLiteRunner,
    export_saved_model,
    export_tflite,
    parity_report,
)
from gsto_tf.checkpoints import CheckpointError, load_checkpoint
from gsto_tf.layers.resize import resize_bilinear
from gsto_tf.user_input import int_in, parse_size


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, help=".keras, .weights.h5 (+ --model) or official .pth/.npz")
    parser.add_argument("--model", help="model name, for .weights.h5 and official checkpoints")
    parser.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model",
                        help="saved_model: a serving folder (TF Serving); tflite: one .tflite file for LiteRT")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none", help="TFLite only")
    parser.add_argument("--input-size", type=tflite_size, default="512x1024",
                        help="TFLite input HxW (default 512x1024), or 'dynamic' for any size (resized at run time)")
    parser.add_argument("--output", required=True, help="SavedModel folder or .tflite file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="SavedModel: refuse requests of more pixels (N x H x W) than this, to protect the "
                        f"server's memory (default {DEFAULT_MAX_PIXELS} = 4 x 1024x2048; 0 = no cap)")
    add_dataset_argument(parser, default=None, help="gives the images for int8 calibration and the parity report "
                         "(default: the built-in synthetic set); when given, the checkpoint must predict its classes")
    parser.add_argument("--data-dir", help="dataset root (synthetic: generated into the cache when omitted)")
    parser.add_argument("--num-images", type=int_in(1, 1000), default=8,
                        help="images for calibration / parity (default: 8)")
    add_fold_batch_norm_argument(parser)
    add_allow_nonfinite_argument(parser)


def tflite_size(text):
    """``--input-size``: ``"HxW"``, or ``"dynamic"`` (``None``) for a model that takes any size."""
    return None if text == "dynamic" else parse_size(text)


def sample_images(dataset, data_dir, size, count):
    """Normalised real images of ``dataset``'s val split, resized to ``size`` (``None``: kept at their own size)."""
    images = []
    for sample in build_eval_dataset(dataset, resolve_data_dir(dataset, data_dir)).take(count):
        image = sample["image"]
        images.append((image if size is None else resize_bilinear(image, size)).numpy())
    if not images:
        raise DatasetError(f"no images in dataset '{get_dataset_spec(dataset).name}' for calibration / parity")
    return images


def main(args):
    if args.format == "saved_model" and args.quantize != "none":
        raise UsageError(f"export: --quantize {args.quantize} is for --format tflite; a SavedModel keeps the "
                         "model's float weights")
    spec = dataset_spec(args.dataset or "synthetic")
    if args.dataset is None and args.checkpoint.endswith(".weights.h5"):
        raise UsageError("export: a .weights.h5 checkpoint needs --model and --dataset (which gives its classes)")
    try:
        model, _ = load_checkpoint(args.checkpoint, name=args.model,
                                   num_classes=spec.num_classes if args.dataset else None,
                                   classes_of=f"dataset '{spec.name}'", allow_nonfinite=args.allow_nonfinite)
    except CheckpointError as exc:
        raise UsageError(f"export: {exc}") from exc
    if args.format == "saved_model":
        try:
            path = export_saved_model(model, args.output, overwrite=args.overwrite, max_pixels=args.max_pixels,
                                      fold_batch_norm=args.fold_batch_norm, allow_nonfinite=args.allow_nonfinite)
        except (FileExistsError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        cap = f"at most {args.max_pixels} pixels per request" if args.max_pixels else "no pixel cap"
        print(f"wrote SavedModel {path} (signatures: serving_default uint8 images, serving_normalized float32; "
              f"{cap})")
        return 0
    size = args.input_size
    try:
        images = sample_images(spec, args.data_dir, size, args.num_images)
    except DatasetError as exc:
        raise UsageError(f"export: {exc}") from exc
    try:
        with native_info_hidden():  # the converter's quantizer settings line
            path = export_tflite(model, args.output, size, args.quantize, overwrite=args.overwrite,
                                 representative_images=images if args.quantize == "int8" else None,
                                 fold_batch_norm=args.fold_batch_norm, allow_nonfinite=args.allow_nonfinite)
    except FileExistsError as exc:
        raise UsageError(str(exc)) from exc
    with native_info_hidden():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate"
        runner = TFLiteRunner(path)
        report = parity_report(model, runner, images, args.quantize)
    shape = "x".join("?" if d is None else str(d) for d in runner.input_shape)
    print(f"wrote {path} (input {shape}; builtin ops in the file: {', '.join(runner.ops())}; the interpreter runs them "
          f"{'through the XNNPACK delegate' if runner.delegate == 'xnnpack' else 'with its builtin kernels'})")
    print(report)
    return 0
