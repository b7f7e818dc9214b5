#!/usr/bin/env python
"""Slide table: HRNetV2 vs GSTO-HRNet params and GFLOPs at 1024x2048, ours next to the paper's and the exact
official counts (measured by running the official code; docs/reference.md), then every width. Prints the tables
and writes benchmarks/results/counts.csv.

    python benchmarks/counts.py [--slide-only]
"""

import argparse
import os

from gsto_tf.cli.counts import ALL_MODELS, SLIDE_MODELS, count_table, format_table
from gsto_tf.tables import write_csv

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slide-only", action="store_true", help="only the slide table's four models")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "counts.csv"))
    args = parser.parse_args()
    rows = count_table(SLIDE_MODELS if args.slide_only else ALL_MODELS)
    print("Slide table (1024x2048, 19 classes): HRNetV2 vs GSTO-HRNet, ours next to the official / slide numbers")
    print(format_table([r for r in rows if r["model"] in SLIDE_MODELS]))
    if not args.slide_only:
        print("\nAll widths")
        print(format_table(rows))
    write_csv(rows, args.out)
    print(f"wrote {args.out}")
