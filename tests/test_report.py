"""benchmarks/report.py: docs tables rendered from the benchmark CSVs, and --check catching stale pages."""

import importlib.util
import io
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_module_spec = importlib.util.spec_from_file_location("benchmarks_report", REPO / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_module_spec)
_module_spec.loader.exec_module(report)


@pytest.fixture
def tree(tmp_path):
    """A copy of the docs pages and benchmark CSVs, laid out as in the repository."""
    shutil.copytree(REPO / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("images"))
    shutil.copytree(REPO / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    return tmp_path


def _run(root, check):
    out = io.StringIO()
    return report.run(str(root), check=check, out=out), out.getvalue()


def test_repository_docs_are_up_to_date():
    rc, text = _run(REPO, check=True)
    assert rc == 0, text


def test_changed_csv_makes_docs_stale_until_rendered(tree):
    csv_path = tree / "benchmarks" / "results" / "data_pipeline.csv"
    lines = csv_path.read_text().splitlines()
    old_case = lines[1].split(",")[0]
    lines[1] = lines[1].replace(old_case, "a new case", 1)
    crop, batch, pipeline_img_s = lines[1].split(",")[1:4]
    csv_path.write_text("\n".join(lines) + "\n")
    page = tree / "docs" / "performance.md"

    rc, text = _run(tree, check=True)
    assert rc == 1 and "stale: docs/performance.md" in text
    assert "a new case" not in page.read_text()  # --check changes nothing

    rc, text = _run(tree, check=False)
    assert rc == 0 and "rewrote docs/performance.md" in text
    assert f"| a new case | {crop} | {batch} | {pipeline_img_s} |" in page.read_text()
    assert f"| {old_case} |" not in page.read_text()
    assert _run(tree, check=True)[0] == 0
    # rendering is idempotent
    before = page.read_text()
    _run(tree, check=False)
    assert page.read_text() == before


def test_columns_and_where_select_and_order(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n1,x,p|q\n2,y,r\n3,x,s\n")
    table = report.render_table(path, columns=["c", "a"], where=[("b", "x")])
    assert table == "| c | a |\n|---|---|\n| p\\|q | 1 |\n| s | 3 |\n"


def test_csv_rendered_nowhere_fails_the_check(tree):
    shutil.copy(tree / "benchmarks" / "results" / "speed.csv", tree / "benchmarks" / "results" / "speed_new.csv")
    rc, text = _run(tree, check=True)
    assert rc == 1 and "benchmarks/results/speed_new.csv is rendered by no page" in text


@pytest.mark.parametrize("marker, message", [
    ("<!-- begin: benchmarks/results/speed.csv columns=nope -->\n<!-- end: benchmarks/results/speed.csv -->",
     "has no column 'nope'"),
    ("<!-- begin: benchmarks/results/missing.csv -->\n<!-- end: benchmarks/results/missing.csv -->",
     "missing.csv not found"),
    ("<!-- begin: benchmarks/results/speed.csv rows=3 -->\n<!-- end: benchmarks/results/speed.csv -->",
     "unknown option 'rows'"),
])
def test_bad_marker_is_an_error_naming_page_and_table(tree, marker, message):
    (tree / "docs" / "extra.md").write_text(f"# extra\n\n{marker}\n")
    rc, text = _run(tree, check=True)
    assert rc == 2 and "docs/extra.md" in text and message in text


def test_command_line_check(tree):
    ok = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), "--check", "--root", str(tree)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    page = tree / "docs" / "performance.md"
    first_case = (tree / "benchmarks" / "results" / "data_pipeline.csv").read_text().splitlines()[1].split(",")[0]
    assert f"| {first_case} |" in page.read_text()
    page.write_text(page.read_text().replace(f"| {first_case} |", "| an edited cell |", 1))
    stale = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), "--check", "--root", str(tree)],
                           capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "stale: docs/performance.md" in stale.stdout
