#!/usr/bin/env python
"""Run a gsto_tf experiment: `python experiments/run.py [COMMAND] [options]` (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gsto_tf.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
