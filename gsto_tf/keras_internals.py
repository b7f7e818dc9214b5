"""Every use of Keras' private API in gsto_tf: the one module to read when Keras is upgraded.

Keras 3 has no public API for a few things gsto_tf needs: the children of a plain layer, the node graph of a
functional model in topological order, the node that produced a symbolic tensor, the shapes a layer was built
with, and a working ``model.fit`` under ``MultiWorkerMirroredStrategy``. This module wraps each behind a function;
no other module of gsto_tf reads an underscore attribute of a Keras object. The private names read here:

==================================  ===================================================================
``Layer._layers``                   the sublayers a layer tracks (a functional model's are ``.layers``)
``Functional._nodes_by_depth``      ``{depth: [Node]}``; larger depth = nearer the inputs
``Functional._operations``          present on functional models only (the is-functional test)
``Functional._inputs_struct``,      the nesting (dict / list) of the model's inputs and outputs
``Functional._outputs_struct``
``KerasTensor._keras_history``      ``(operation, node_index, tensor_index)`` of a symbolic tensor
``Operation._inbound_nodes``        the nodes of every call of a layer
``Layer._build_shapes_dict``        the shapes ``build()`` received (keyword names as in ``build``)
``Trainer._compile_loss``           the ``CompileLoss`` of a compiled model (``.built``, ``.build(y_true, y_pred)``)
``TensorFlowTrainer._maybe_symbolic_build`` (replaced; the replacement reads ``_distribute_strategy`` and calls
``_symbolic_build``), ``keras.src.backend.tensorflow.trainer.reduce_per_replica``,
``MultiWorkerMirroredStrategy.extended._in_multi_worker_mode()``: see :func:`enable_multi_worker_fit`.
==================================  ===================================================================

One private TensorFlow function is read here too, for the same reason: ``tensorflow.python.util._pywrap_util_port
.IsMklEnabled()``, whether TensorFlow runs its oneDNN kernels in this process (:func:`onednn_enabled`).

One private LiteRT method is read here as well: ``Interpreter._get_ops_details()``, the operators of a ``.tflite``
file (:func:`tflite_op_names`).

One fact of the ``.keras`` file format is used too: the archive's ``model.weights.h5`` member is a ``.weights.h5``
file (:data:`ARCHIVE_WEIGHTS`, :func:`copy_archive_weights`).

Checked on Keras ``CHECKED_KERAS`` (the pin in requirements.txt / setup.cfg follows it);
``tests/test_keras_internals.py`` fails with the name of the attribute when an upgrade removes or changes one.
"""

import shutil
import zipfile

import keras
import tensorflow as tf

CHECKED_KERAS = ("3.15.",)


# -- the layer tree ----------------------------------------------------------------------------------------------


def sublayers(layer):
    """The direct sublayers of ``layer``: a model's ``.layers`` (graph order for a functional model), a plain
    layer's tracked sublayers (those it holds in attributes or lists) otherwise."""
    return layer.layers if isinstance(layer, keras.Model) else list(layer._layers)


def walk_layers(layer):
    """Every layer nested in ``layer`` (not ``layer`` itself), depth first, parents before their children; a
    layer shared by two parents is listed once."""
    seen, order = set(), []

    def visit(parent):
        for child in sublayers(parent):
            if id(child) not in seen:
                seen.add(id(child))
                order.append(child)
                visit(child)

    visit(layer)
    return order


def is_functional(model):
    """True for a model with a functional graph (built with the functional API), False for a subclassed one."""
    return isinstance(model, keras.Model) and hasattr(model, "_operations") and hasattr(model, "_nodes_by_depth") \
        and bool(model.inputs)


# -- the node graph of a functional model ------------------------------------------------------------------------


def nodes_in_order(model):
    """The call nodes of a functional model in topological order (inputs first); input placeholders left out."""
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def producer_node(tensor):
    """The node whose call produced symbolic ``tensor``, or None (an input, a constant)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    return history.operation._inbound_nodes[history.node_index]


def call_count(layer):
    """How many times ``layer`` was called in a functional graph (its inbound nodes)."""
    return len(layer._inbound_nodes)


def pack_like_inputs(model, flat):
    """``flat`` tensors nested like ``model``'s inputs (a dict of inputs keeps its keys)."""
    return keras.tree.pack_sequence_as(model._inputs_struct, list(flat))


def pack_like_outputs(model, flat):
    """``flat`` tensors nested like ``model``'s outputs."""
    return keras.tree.pack_sequence_as(model._outputs_struct, list(flat))


# -- building ----------------------------------------------------------------------------------------------------


def build_shapes(layer):
    """The keyword arguments ``layer.build`` was called with (``{"x_shape": ..., ...}``), to build a copy alike."""
    return dict(layer._build_shapes_dict)


def build_compiled_loss(model, y_true):
    """Build the loss ``model.compile`` made (``model._compile_loss``) for labels like ``y_true`` (a structure of
    ``keras.KerasTensor``); no-op when built or not compiled with a loss.

    Keras builds it lazily, inside the first traced training step, and for a model with several outputs the build
    creates one ``Mean`` loss tracker (two variables) per output; a variable created during a trace makes
    ``tf.function`` trace the whole step a second time. Built here first, the step is traced once."""
    compiled = getattr(model, "_compile_loss", None)
    if compiled is not None and not compiled.built:
        compiled.build(y_true, model.output)


# -- model.fit under MultiWorkerMirroredStrategy -----------------------------------------------------------------

_MULTI_WORKER_PATCHED = False


def in_multi_worker_mode(strategy):
    """True when ``strategy`` is a MultiWorkerMirroredStrategy that spans several workers."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def enable_multi_worker_fit():
    """Make ``model.fit`` work under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585); idempotent.

    Keras 3.15's TensorFlow trainer fails there in two places, which this patches, only for ``CHECKED_KERAS``:

    1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first distributed batch with a cross-replica
       ``strategy.reduce("MEAN", batch, axis=None)`` just to learn its shapes: a cross-worker collective on the
       input batch outside the training function (PerReplica errors). Only shapes are needed, so the first local
       replica's values are used instead: no communication.
    2. ``reduce_per_replica(..., reduction="mean")`` calls ``strategy.reduce("MEAN", v, axis=0)`` in multi-worker
       mode; the per-step logs (losses, metrics) are scalars, which have no axis 0. The intended reduction is the
       mean *across replicas*, i.e. ``axis=None``.

    Single-worker behaviour is unchanged (both patches defer to the originals there).
    """
    global _MULTI_WORKER_PATCHED
    if _MULTI_WORKER_PATCHED:
        return
    if not keras.__version__.startswith(CHECKED_KERAS):
        raise RuntimeError(
            f"gsto_tf's multi-worker fix targets Keras {CHECKED_KERAS}, found {keras.__version__}: check whether "
            "keras-team/keras#20585 is fixed there and update gsto_tf/keras_internals.py"
        )
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = tf_trainer.reduce_per_replica
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and in_multi_worker_mode(strategy):
            def mean_across_replicas(v):
                if isinstance(v, tf.distribute.DistributedValues):
                    return strategy.reduce("MEAN", v, axis=None)
                return v

            return keras.tree.map_structure(mean_across_replicas, values)
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not in_multi_worker_mode(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = keras.tree.map_structure(
                lambda x: strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x,
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _MULTI_WORKER_PATCHED = True


# -- TensorFlow's kernels ---------------------------------------------------------------------------------------


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels in this process: on by default on x86 CPUs with AVX512-VNNI,
    AVX512_BF16 or AMX, and wherever ``TF_ENABLE_ONEDNN_OPTS=1``; off with ``TF_ENABLE_ONEDNN_OPTS=0``. False where
    the query is missing (another TensorFlow build)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(getattr(_pywrap_util_port, "IsMklEnabled", lambda: False)())


# -- the .keras archive -------------------------------------------------------------------------------------------

ARCHIVE_WEIGHTS = "model.weights.h5"  # keras/src/saving/saving_lib.py: _VARS_FNAME_H5


def copy_archive_weights(keras_path, weights_path):
    """Write the weights member of the ``.keras`` file ``keras_path`` to ``weights_path``: a ``.weights.h5`` file
    equal to what ``model.save_weights`` writes, copied with plain file I/O (no HDF5 library writing to disk)."""
    with zipfile.ZipFile(keras_path) as archive, archive.open(ARCHIVE_WEIGHTS) as src, \
            open(weights_path, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def tflite_op_names(path):
    """The sorted builtin operator names of the ``.tflite`` file at ``path``: the file's own operators, read
    through an interpreter without delegates (with XNNPACK, the ops it takes over are listed as one ``DELEGATE``)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})

