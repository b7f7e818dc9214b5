#!/usr/bin/env python
"""Run a gsto_tf experiment: `python experiments/run.py [COMMAND] [options]` (see --help); the same command line
as `gsto-tf` (the package is installed by the Quick start: `pip install -r requirements.txt -e .`)."""

import sys

from gsto_tf.cli import main

if __name__ == "__main__":
    sys.exit(main())
