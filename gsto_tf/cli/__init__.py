"""The ``gsto-tf`` command line (also ``python -m gsto_tf`` and ``python experiments/run.py``).

Each subcommand lives in its own module ``gsto_tf.cli.<name>`` exposing ``add_arguments(parser)`` and
``main(args) -> int``. Only the module of the subcommand that runs is imported, after TensorFlow's log level is
set: TensorFlow reads it once, when it loads.
"""

import argparse
import os
import sys
import textwrap
import traceback

from gsto_tf.cli.common import UsageError, native_info_hidden

# name -> (module, one-line help). `train` is the default when the first argument is an option.
SUBCOMMANDS = {
    "train": ("gsto_tf.cli.train", "train (and then evaluate) a model; the default subcommand"),
    "eval": ("gsto_tf.cli.evaluate", "evaluate a checkpoint (whole / slide / multi-scale + flip)"),
    "predict": ("gsto_tf.cli.predict", "predict label PNGs and colour overlays for images"),
    "export": ("gsto_tf.cli.export", "export a checkpoint to SavedModel or TFLite"),
    "convert": ("gsto_tf.cli.convert", "convert an official PyTorch checkpoint (.pth/.npz) to Keras weights"),
    "counts": ("gsto_tf.cli.counts", "print params / GFLOPs of models next to the paper's numbers"),
    "data": ("gsto_tf.cli.data", "dataset tools: verify, stats, browse, prepare"),
    "visualize": ("gsto_tf.cli.visualize", "figures: predictions, gate maps, feature maps, curves"),
    "zoo": ("gsto_tf.cli.zoo", "list the models trained here (usable by name as --checkpoint) with their scores"),
}

# Options of the whole command line, accepted anywhere on it: they are read before the parsers exist, because the
# log level has to be set before a subcommand module imports TensorFlow.
VERBOSE, DEBUG = "--verbose", "--debug"
DEBUG_ENV = "GSTO_TF_DEBUG"


def import_tensorflow_quietly(verbose=False):
    """Import TensorFlow without its start-up notices (oneDNN, cpu_feature_guard), and keep its later INFO / WARNING
    logs and absl / TensorFlow Python warnings off the terminal; ``verbose`` shows everything.

    ``TF_CPP_MIN_LOG_LEVEL`` is read when TensorFlow loads (a level the user exported is kept), but the oneDNN notice
    is logged before absl's log is initialised, where no level applies: the import runs under
    :func:`native_info_hidden`. No effect once TensorFlow is loaded.
    """
    if "tensorflow" in sys.modules:
        return
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # 2: errors only
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with native_info_hidden():
        import tensorflow  # noqa: F401
    from absl import logging as absl_logging  # a dependency of TensorFlow

    absl_logging.set_verbosity(absl_logging.ERROR)


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr (exit status 2), like the commands' own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _TopLevelParser(ArgumentParser):
    def format_help(self):
        # The catalogue imports the dataset and model registries (TensorFlow): only when the help is shown.
        self.epilog = catalogue(self.prog)
        return super().format_help()


def catalogue(prog):
    """The datasets and models the commands accept, for the top-level ``--help``."""
    from gsto_tf.checkpoints import zoo_names
    from gsto_tf.data import available_datasets
    from gsto_tf.models import available_models

    def wrap(text):
        return textwrap.fill(text, width=96, initial_indent="  ", subsequent_indent="    ")

    families = {}
    for name in available_models():
        families.setdefault(name.split("_")[0], []).append(name)
    models = [", ".join(names) if len(names) <= 8 else f"{family}_*: {len(names)} models, {names[0]} ... {names[-1]}"
              for family, names in families.items()]
    return "\n".join([
        f"datasets (--dataset NAME, or the path of your own dataset card .yaml, docs/data.md; `{prog} data verify` "
        "checks one on disk):", wrap(", ".join(available_datasets())), "",
        f"models (--model; every name: `{prog} --list-models`; params / GFLOPs: `{prog} counts --all`):",
        *map(wrap, models), "",
        f"trained models, usable by name wherever a checkpoint goes (`{prog} zoo` shows their scores):",
        wrap(", ".join(zoo_names()) or "none"), "",
        f"`{prog} COMMAND --help` gives a command's options. {VERBOSE} and {DEBUG} may stand anywhere on the line; "
        f"{DEBUG_ENV}=1 is the same as {DEBUG}.",
    ])


class _ListModels(argparse.Action):
    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from gsto_tf.models import available_models

        print("\n".join(available_models()))
        parser.exit()


def build_parser(prog=None, command=None):
    """The parser; only ``command``'s module is imported and gets its arguments (the others list their help)."""
    from gsto_tf import __version__

    parser = _TopLevelParser(
        prog=prog,
        description="GSTO-HRNet and HRNetV2 semantic segmentation (TensorFlow / Keras 3). With no subcommand, "
        "`train` runs (on the built-in synthetic dataset unless --dataset is given).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--list-models", action=_ListModels, help="print every model name and exit")
    parser.add_argument(VERBOSE, action="store_true", help="show TensorFlow's start-up and log messages")
    parser.add_argument(DEBUG, action="store_true", help="on an error, show the traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            import importlib

            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def _user_errors():
    """Exceptions that mean bad input rather than a bug, when a subcommand leaves them unwrapped."""
    from gsto_tf.atomic import StorageError
    from gsto_tf.checkpoints import CheckpointError
    from gsto_tf.data import DatasetError
    from gsto_tf.data.card import DatasetCardError
    from gsto_tf.training.config import ConfigError
    from gsto_tf.training.run_dir import RunDirError
    from gsto_tf.user_input import YAMLInputError

    return DatasetError, DatasetCardError, CheckpointError, ConfigError, RunDirError, StorageError, YAMLInputError


def main(argv=None, prog=None):
    """Run a command line (default ``sys.argv[1:]``) and return its exit status: 0 done, 2 bad input (one line on
    stderr; with ``--debug`` the traceback too), 3 training stopped on a non-finite loss."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    verbose = VERBOSE in argv
    argv = [a for a in argv if a not in (VERBOSE, DEBUG)]
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version", "--list-models"):
        argv = ["train"] + argv
    if argv[0] != "--version":
        try:
            import_tensorflow_quietly(verbose)
        except ImportError as exc:
            print(f"TensorFlow cannot be imported ({exc}); install it with the package: pip install 'gsto_tf[cpu]', "
                  "or 'gsto_tf[gpu]' on a machine with an NVIDIA GPU (see docs/install.md)", file=sys.stderr)
            return 2
    args = build_parser(prog, argv[0]).parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except Exception as exc:
        if isinstance(exc, UsageError):
            message = str(exc)
        elif isinstance(exc, _user_errors()):
            message = f"{args.command}: {exc}"
        else:
            raise
        if debug:
            traceback.print_exc()
        print(message, file=sys.stderr)
        return 2
