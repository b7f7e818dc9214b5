"""`gsto-tf convert`: official PyTorch checkpoint (.pth / .npz) -> Keras `.keras` (+ `.weights.h5`)."""

from gsto_tf.atomic import save_model_atomically
from gsto_tf.checkpoints import CheckpointError, load_checkpoint
from gsto_tf.cli.common import UsageError, add_allow_nonfinite_argument


def add_arguments(parser):
    parser.add_argument("checkpoint", help="official .pth (read without torch, no code executed) or .npz")
    parser.add_argument("--model", required=True, help="model name, e.g. gsto_hrnet_w48 (see `gsto-tf --help`)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: read from the checkpoint's head")
    parser.add_argument("--output", required=True, help="output .keras path (a .weights.h5 is written beside it)")
    parser.add_argument("--no-strict", action="store_true",
                        help="load what matches and report the rest instead of failing on any mismatch")
    parser.add_argument("--backbone-only", action="store_true",
                        help="the checkpoint is an ImageNet backbone (e.g. hrnetv2_w48_imagenet_pretrained.pth): "
                        "its classifier is ignored, the segmentation head / gates keep their initialisation "
                        "(then --num-classes is required)")
    add_allow_nonfinite_argument(parser)


def main(args):
    if not args.output.endswith(".keras"):
        raise UsageError(f"--output: expected a path ending in .keras, got {args.output!r}")
    try:
        model, report = load_checkpoint(args.checkpoint, name=args.model, num_classes=args.num_classes,
                                        strict=not args.no_strict, backbone_only=args.backbone_only,
                                        allow_nonfinite=args.allow_nonfinite)
    except CheckpointError as exc:
        raise UsageError(f"convert failed: {exc}") from exc
    print(report.summary())
    path, weights = save_model_atomically(model, args.output, weights_beside=True)
    print(f"wrote {path} and {weights}")
    return 0
