"""The repository stands alone: its tests use only files inside it, and its docs are reachable from the README."""

import re
import subprocess

import pytest

from conftest import FIXTURES_DIR, REPO_ROOT


def _tracked_text_files():
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (the file list comes from git ls-files)")
    for name in names:
        path = REPO_ROOT / name
        if name == "LICENSE" or path.suffix in {".npz", ".pth", ".png", ".jpg", ".tflite", ".keras", ".h5"}:
            continue
        if path.is_file():
            yield name, path.read_text(encoding="utf-8", errors="replace")


def test_default_fixtures_are_inside_the_repository():
    assert FIXTURES_DIR.resolve().is_relative_to(REPO_ROOT.resolve())
    for case in ("hrnetv2_w18s1_c19", "gsto_hrnet_w18s1_c19"):
        for suffix in (".pth", "_io.npz", ".json", "_train3_sample.npz"):
            assert (FIXTURES_DIR / f"{case}{suffix}").is_file(), f"{case}{suffix}"


def test_no_file_points_outside_the_repository():
    """Facts are stated where they are used (with their paper / official source), not by reference to documents
    that only exist beside the development checkout."""
    pattern = re.compile(r"\bSPEC\b|\.\./shared|\b[Ii]ssues?\b")
    offenders = [f"{name}:{i + 1}: {line.strip()[:80]}" for name, text in _tracked_text_files()
                 for i, line in enumerate(text.splitlines()) if pattern.search(line)]
    assert not offenders, "\n".join(offenders[:20])


def test_readme_is_a_front_page_that_links_every_docs_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    pages = sorted(p.name for p in (REPO_ROOT / "docs").glob("*.md"))
    assert pages
    unlinked = [p for p in pages if f"docs/{p}" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_ci_runs_the_readme_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e ." in readme
    assert "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e ." in ci
    assert ".venv/bin/python -m pytest -q\n" in readme and ".venv/bin/python -m pytest -q\n" in ci
