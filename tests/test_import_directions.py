"""The import directions that keep the package layered: layers are the bottom floor (they never import models,
training, evaluation, export or the CLI), models never import the checkpoint wing built on them, and nothing
below the CLI imports the CLI. Checked on the source (ast),
imports inside functions included."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gsto_tf"

FORBIDDEN = {
    "layers": ("gsto_tf.models", "gsto_tf.training", "gsto_tf.evaluation", "gsto_tf.export", "gsto_tf.cli",
               "gsto_tf.data", "gsto_tf.visualize"),
    "data": ("gsto_tf.models", "gsto_tf.training", "gsto_tf.evaluation", "gsto_tf.export", "gsto_tf.cli"),
    "models": ("gsto_tf.checkpoints", "gsto_tf.training", "gsto_tf.evaluation", "gsto_tf.export", "gsto_tf.cli"),
    "checkpoints": ("gsto_tf.training", "gsto_tf.evaluation", "gsto_tf.export", "gsto_tf.cli", "gsto_tf.visualize"),
    "visualize": ("gsto_tf.training", "gsto_tf.export", "gsto_tf.cli"),
    "evaluation": ("gsto_tf.training", "gsto_tf.export", "gsto_tf.cli"),
    "training": ("gsto_tf.export", "gsto_tf.cli"),
    "export": ("gsto_tf.training", "gsto_tf.cli"),
}


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_floor_does_not_import_upwards(floor):
    wrong = [(str(path.relative_to(PACKAGE)), name) for path in sorted((PACKAGE / floor).rglob("*.py"))
             for name in _imports(path) if name.startswith(FORBIDDEN[floor])]
    assert not wrong, wrong


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from gsto_tf.models.folding import x\n")
    assert list(_imports(source)) == ["gsto_tf.models.folding"]


def test_checkpoint_reader_needs_no_keras():
    assert not [name for name in _imports(PACKAGE / "checkpoints" / "torch_reader.py")
                if name.startswith(("keras", "tensorflow", "gsto_tf.models"))]
