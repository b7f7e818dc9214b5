"""What the subcommands share: the error for bad user input, the argument types, the C++ log filter."""

import contextlib
import os
import re
import sys
import threading


class UsageError(Exception):
    """Bad user input (a wrong value, a missing file, a checkpoint of another model): the command prints the
    message as one line on stderr and exits with status 2; ``--debug`` (or ``GSTO_TF_DEBUG=1``) adds the traceback.
    Raise it ``from`` the original exception so that the traceback shows where the problem was found."""


# INFO lines that TensorFlow's and LiteRT's C++ code writes straight to the stderr file: absl's format
# (``I0000 00:00:...``), the older one (``2024-01-11 05:40:05.061907: I ...``), LiteRT's (``INFO: Created TensorFlow
# Lite XNNPACK delegate``), absl's note before its log is initialised, the continuation of cpu_feature_guard's and the
# quantizer's settings line, which the LiteRT converter prints without any prefix.
_NATIVE_INFO = re.compile(r"I\d{4} |\d{4}-\d\d-\d\d [\d:.]+: I |INFO: |WARNING: All log messages before absl::"
                          r"InitializeLog\(\)|To enable the following instructions: |fully_quantize: \d+, inference_type: ")


@contextlib.contextmanager
def native_info_hidden():
    """Drop the C++ INFO lines written to stderr inside the block while ``TF_CPP_MIN_LOG_LEVEL`` hides INFO; the
    other lines pass as they come (a thread forwards them, so a crash's last words are not held back). Some INFO
    lines are logged where that level does not apply: TensorFlow's oneDNN notice before absl's log is initialised,
    LiteRT's delegate notice by its own logger."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not _NATIVE_INFO.match(line.decode(errors="replace")):
                    os.write(terminal, line)

    forwarder = threading.Thread(target=forward, name="native_info_hidden", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end: the forwarder reads to the end and stops
        forwarder.join()
        os.close(terminal)


def add_dataset_argument(parser, default="synthetic", help=None):
    """``--dataset NAME|CARD.yaml`` of every command that reads a dataset's facts."""
    from gsto_tf.data import available_datasets

    text = (f"a built-in dataset ({', '.join(available_datasets())}) or the path of a dataset card .yaml "
            "(docs/data.md)" + (f"; default: {default}" if default else ""))
    parser.add_argument("--dataset", default=default, metavar="NAME|CARD", help=f"{help}: {text}" if help else text)


def dataset_spec(dataset):
    """The DatasetSpec of ``--dataset``; an unknown name or a bad card is a UsageError naming it."""
    from gsto_tf.data import get_dataset_spec

    try:
        return get_dataset_spec(dataset)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def add_allow_nonfinite_argument(parser):
    """``--allow-nonfinite`` (``args.allow_nonfinite``): load a checkpoint whose weights hold NaN / Inf."""
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load a checkpoint whose weights hold NaN or Inf (refused by default: such a model "
                        "predicts one class everywhere)")


def add_fold_batch_norm_argument(parser):
    """``--no-fold-batch-norm`` (``args.fold_batch_norm``, default True) of the inference commands."""
    parser.add_argument("--no-fold-batch-norm", dest="fold_batch_norm", action="store_false",
                        help="keep BatchNorm as separate ops (default: folded into the preceding convolutions: the "
                        "same outputs with fewer ops, see docs/precision.md)")
