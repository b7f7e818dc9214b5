"""``python -m gsto_tf``: the ``gsto-tf`` command line."""

import sys

from gsto_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m gsto_tf"))
