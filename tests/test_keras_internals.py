"""The private Keras API gsto_tf relies on, all of it behind gsto_tf/keras_internals.py: each function checked on
a small functional model with a nested sub-model and a composite layer, so a Keras upgrade that renames or changes
an attribute fails here, naming it, rather than deep inside folding, counting or checkpoint loading."""

import ast
import pathlib
import re

import keras
import numpy as np
import pytest

from gsto_tf import keras_internals as ki
from gsto_tf.layers import GatedScaleTransfer

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gsto_tf"
# The Keras-private attributes the module docstring lists; used through gsto_tf.keras_internals only.
PRIVATE = ("_inbound_nodes", "_outbound_nodes", "_nodes_by_depth", "_keras_history", "_flatten_layers", "_layers",
           "_outputs_struct", "_inputs_struct", "_build_shapes_dict", "_operations", "_maybe_symbolic_build",
           "_in_multi_worker_mode", "_symbolic_build", "_distribute_strategy", "_compile_loss")


def _model():
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 1, name="inner_conv")(inner_in), name="inner")
    x_in = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x_in)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = inner(x)
    y = GatedScaleTransfer(6, gate="unsupervised", name="gst")(x)
    return keras.Model({"image": x_in}, {"out": y, "mid": x}, name="outer")


def test_the_checked_keras_version_is_the_installed_one():
    assert keras.__version__.startswith(ki.CHECKED_KERAS), (
        f"Keras {keras.__version__} is installed; gsto_tf/keras_internals.py was checked on {ki.CHECKED_KERAS}: "
        "re-check every private attribute its docstring lists, then update CHECKED_KERAS and the pin")


@pytest.mark.parametrize("attribute", ["_nodes_by_depth", "_operations", "_inputs_struct", "_outputs_struct",
                                       "_layers"])
def test_functional_models_still_have(attribute):
    assert hasattr(_model(), attribute), f"keras.Model no longer has {attribute}: update gsto_tf/keras_internals.py"


def test_layer_tree_walk_reaches_nested_and_composite_sublayers():
    model = _model()
    names = [layer.name for layer in ki.walk_layers(model)]
    assert names.index("inner") < names.index("inner_conv")  # parents before children
    gst = model.get_layer("gst")
    assert [layer.name for layer in ki.sublayers(gst)][:1] == ["gate"]  # a plain layer's tracked sublayers
    assert {"gate", "transform", "bn", "conv"} <= set(names)
    assert len(names) == len(set(map(id, ki.walk_layers(model))))
    assert ki.walk_layers(gst) and gst not in ki.walk_layers(gst)


def test_is_functional_tells_functional_from_subclassed():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert ki.is_functional(_model())
    assert not ki.is_functional(Subclassed())
    assert not ki.is_functional(keras.layers.Dense(2))


def test_nodes_come_in_topological_order_and_producers_are_found():
    model = _model()
    order = [node.operation.name for node in ki.nodes_in_order(model)]
    assert order == ["conv", "bn", "inner", "gst"]
    bn_node = [n for n in ki.nodes_in_order(model) if n.operation.name == "bn"][0]
    assert ki.producer_node(bn_node.input_tensors[0]).operation.name == "conv"
    assert ki.producer_node(model.inputs[0]) is None or ki.producer_node(model.inputs[0]).is_input
    assert ki.call_count(model.get_layer("bn")) == 1


def test_packing_keeps_the_input_and_output_structure():
    model = _model()
    assert isinstance(ki.pack_like_inputs(model, model.inputs), dict)
    packed = ki.pack_like_outputs(model, model.outputs)
    assert set(packed) == {"out", "mid"}


def test_build_shapes_are_those_build_received():
    layer = GatedScaleTransfer(6, gate="unsupervised")
    layer(np.zeros((1, 5, 7, 3), np.float32))
    shapes = ki.build_shapes(layer)
    assert list(shapes) == ["x_shape"] and tuple(shapes["x_shape"]) == (1, 5, 7, 3)


def test_multi_worker_patch_targets_exist():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    assert callable(getattr(tf_trainer, "reduce_per_replica", None))
    assert callable(getattr(tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build", None))


def test_a_built_compiled_loss_lets_the_first_step_trace_once():
    # A multi-output model's per-output loss trackers are variables; created inside the first traced step, they
    # make tf.function trace the step a second time. Built beforehand, the step creates no variable.
    import tensorflow as tf

    model = _model()
    model.compile(optimizer="sgd", loss={"out": "mse", "mid": "mse"})
    model.optimizer.build(model.trainable_variables)
    ki.build_compiled_loss(model, {"out": keras.KerasTensor((None, 8, 8, 6)),
                                   "mid": keras.KerasTensor((None, 8, 8, 4))})
    created = []

    def record(next_creator, **kwargs):
        created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    x = {"image": np.ones((2, 8, 8, 3), np.float32)}
    y = {"out": np.zeros((2, 8, 8, 6), np.float32), "mid": np.zeros((2, 8, 8, 4), np.float32)}
    with tf.variable_creator_scope(record):
        logs = model.train_on_batch(x, y, return_dict=True)
    assert created == []
    assert {"out_loss", "mid_loss"} <= set(logs)  # the trackers are there, and were updated by the step
    ki.build_compiled_loss(model, None)  # built: nothing to do


def _private_reads(path):
    """(line, name) of every ``something._name`` attribute read of a name in PRIVATE, and getattr/hasattr strings."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            yield node.lineno, node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PRIVATE:
            yield node.lineno, node.value


def test_no_other_module_reads_keras_internals():
    wrong = [(str(path.relative_to(PACKAGE)), line, name) for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "keras_internals.py" for line, name in _private_reads(path)]
    assert not wrong, wrong


def test_the_scan_sees_attribute_reads_and_attribute_strings(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("a = model._layers\nb = getattr(layer, '_inbound_nodes', [])\nc = self._own\n")
    assert list(_private_reads(source)) == [(1, "_layers"), (2, "_inbound_nodes")]


def test_the_docstring_names_every_private_attribute_read():
    doc = ki.__doc__
    read = {name for _, name in _private_reads(PACKAGE / "keras_internals.py")}
    missing = [name for name in read if not re.search(re.escape(name) + r"\b", doc)]
    assert not missing, missing
