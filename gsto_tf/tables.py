"""Result tables of the commands and benchmarks: printed as aligned text, written as CSV atomically."""

import csv

from gsto_tf.atomic import write_atomically


def format_table(rows, columns=None):
    """Rows (dicts) as left-aligned text columns with a header and a rule."""
    columns = list(columns or rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def csv_cell(value):
    """A text cell a spreadsheet shows as text: one starting with ``= + - @`` (or a tab / carriage return) that is
    not a number would be run as a formula (a class named ``=HYPERLINK(...)``), so it gets a leading ``'``."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def write_csv(rows, path, columns=None):
    """Write rows to ``path`` through a temp file + rename (a reader never sees half a file); text cells through
    :func:`csv_cell`."""

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns or rows[0]), extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)

    return write_atomically(path, write)


def print_and_write(rows, path, title=None, columns=None):
    """What every benchmark ends with: an optional title line, the table, the CSV at ``path`` and where it went."""
    if title:
        print(title)
    print(format_table(rows, columns))
    write_csv(rows, path, columns)
    print(f"wrote {path}")
