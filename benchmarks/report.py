#!/usr/bin/env python
"""Render the benchmark CSVs into the tables of the docs pages: the CSVs are the one source of the numbers.

A table in a page (``docs/*.md``) is the text between two marker comments naming its CSV (relative to the
repository root), with optional column and row selections::

    <!-- begin: benchmarks/results/speed.csv columns=width,step,model,median_s where=precision:fp32 -->
    (generated table, replaced on every run)
    <!-- end: benchmarks/results/speed.csv -->

``columns=a,b`` keeps those columns in that order (default: all, in the CSV's order); ``where=col:value`` keeps the
rows whose cell equals ``value`` (repeat for several conditions). Cells are copied as the CSV holds them.

    python benchmarks/report.py           # rewrite the tables of every page
    python benchmarks/report.py --check   # exit status 1 if a page is stale or a CSV is rendered nowhere

Every CSV under ``benchmarks/results/`` must be rendered by at least one page; a marker naming a missing CSV or
column is an error. Run it after a benchmark script has written its CSV.
"""

import argparse
import csv
import glob
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"<!-- begin: (?P<csv>[^\s>]+\.csv)(?P<options>[^>]*?)\s*-->\n(?P<body>.*?)"
                    r"<!-- end: (?P=csv) -->", re.S)


class ReportError(ValueError):
    """A marker that cannot be rendered (missing CSV, unknown column or option)."""


def _parse_options(text, where_from):
    columns, where = None, []
    for option in text.split():
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise ReportError(f"{where_from}: option {option!r} is not key=value")
        if key == "columns":
            columns = value.split(",")
        elif key == "where":
            column, sep, wanted = value.partition(":")
            if not sep:
                raise ReportError(f"{where_from}: where={value!r} is not column:value")
            where.append((column, wanted))
        else:
            raise ReportError(f"{where_from}: unknown option {key!r} (columns=..., where=column:value)")
    return columns, where


def _escape(cell):
    return cell.replace("|", "\\|")


def render_table(csv_path, columns=None, where=(), where_from=""):
    """The Markdown table of ``csv_path`` (columns in order, rows filtered by ``where``), ending with a newline."""
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise ReportError(f"{where_from}: {csv_path} not found (run its benchmark script first)") from None
    columns = columns or header
    unknown = [c for c in list(columns) + [c for c, _ in where] if c not in header]
    if unknown:
        raise ReportError(f"{where_from}: {csv_path} has no column {', '.join(map(repr, unknown))} "
                          f"(columns: {', '.join(header)})")
    rows = [r for r in rows if all(r[c] == v for c, v in where)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_escape(r[c] or "") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_page(text, root=REPO, page=""):
    """``(new text, [CSV paths rendered])`` with every marked table of ``text`` regenerated from its CSV."""
    used = []

    def replace(match):
        name = match.group("csv")
        where_from = f"{page}: table {name}"
        columns, where = _parse_options(match.group("options"), where_from)
        used.append(os.path.normpath(name))
        table = render_table(os.path.join(root, name), columns, where, where_from)
        return match.group(0)[: match.start("body") - match.start(0)] + table + f"<!-- end: {name} -->"

    return MARKER.sub(replace, text), used


def run(root=REPO, check=False, out=sys.stdout):
    """Render (or with ``check`` only compare) every page of ``root/docs``. Returns the exit status."""
    pages = sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    rendered, stale = set(), []
    for page in pages:
        rel = os.path.relpath(page, root)
        with open(page) as f:
            text = f.read()
        try:
            new, used = render_page(text, root, rel)
        except ReportError as exc:
            print(f"error: {exc}", file=out)
            return 2
        rendered.update(used)
        if new != text:
            stale.append(rel)
            if not check:
                tmp = f"{page}.tmp-report"
                with open(tmp, "w") as f:
                    f.write(new)
                os.replace(tmp, page)
    csvs = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "benchmarks", "results", "*.csv")))
    orphans = [c for c in csvs if os.path.normpath(c) not in rendered]
    for c in orphans:
        print(f"error: {c} is rendered by no page: add a '<!-- begin: {c} -->' / '<!-- end: {c} -->' pair",
              file=out)
    if check:
        for rel in stale:
            print(f"stale: {rel} (run python benchmarks/report.py)", file=out)
        if not stale and not orphans:
            print(f"up to date: {len(rendered)} CSVs in {len(pages)} pages", file=out)
        return 1 if stale or orphans else 0
    for rel in stale:
        print(f"rewrote {rel}", file=out)
    return 1 if orphans else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any page is stale")
    parser.add_argument("--root", default=REPO, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    return run(os.path.abspath(args.root), check=args.check)


if __name__ == "__main__":
    sys.exit(main())
