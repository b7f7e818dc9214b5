"""Command-line subcommands of ``experiments/run.py``.

Each subcommand lives in its own module ``gsto_tf.cli.<name>`` exposing ``add_arguments(parser)`` and
``main(args) -> int``. Modules are imported lazily so ``run.py --help`` stays fast.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help). `train` is the default when the first argument is an option.
SUBCOMMANDS = {
    "train": ("gsto_tf.cli.train", "train (and then evaluate) a model; the default subcommand"),
    "eval": ("gsto_tf.cli.evaluate", "evaluate a checkpoint (whole / slide / multi-scale + flip)"),
    "predict": ("gsto_tf.cli.predict", "predict label PNGs and colour overlays for images"),
    "export": ("gsto_tf.cli.export", "export a checkpoint to SavedModel or TFLite"),
    "convert": ("gsto_tf.cli.convert", "convert an official PyTorch checkpoint (.pth/.npz) to Keras weights"),
    "counts": ("gsto_tf.cli.counts", "print params / GFLOPs of models next to the paper's numbers"),
    "data": ("gsto_tf.cli.data", "dataset tools: verify, browse, prepare"),
    "visualize": ("gsto_tf.cli.visualize", "figures: predictions, gate maps, feature maps, curves"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="gsto_tf experiments. With no subcommand, `train` runs (on the built-in synthetic dataset "
        "unless --dataset is given).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # subcommand not available in this build
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train"] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        parser.error(f"subcommand '{args.command}' is not available")
    return int(module.main(args) or 0)
