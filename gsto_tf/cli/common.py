"""What the subcommands share: the error for bad user input and the argument types."""

import argparse


class UsageError(Exception):
    """Bad user input (a wrong value, a missing file, a checkpoint of another model): the command prints the
    message as one line on stderr and exits with status 2; ``--debug`` (or ``GSTO_TF_DEBUG=1``) adds the traceback.
    Raise it ``from`` the original exception so that the traceback shows where the problem was found."""


def parse_size(text):
    """``"HxW"`` -> ``(H, W)``, both positive integers. Meant as an argparse ``type=``: argparse then names the
    argument in the error (``argument --input-size: expected HxW ...``)."""
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        height = width = 0
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW with positive integers (e.g. 1024x2048), got {text!r}")
    return height, width
