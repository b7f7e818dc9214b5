"""BatchNorm folding: an inference-only copy of a functional model with every conv -> BN pair merged into one conv.

At inference a BatchNormalization is a per-channel affine map, ``y = (x - mean) * gamma / sqrt(var + eps) + beta``;
right after a convolution ``x = w * in + b`` it folds into that convolution exactly:

    s  = gamma / sqrt(var + eps)
    w' = w * s                      (per output channel)
    b' = (b - mean) * s + beta

so the folded model computes the same function with one pass over the activations less per BN, and no separate
BN op (which under a mixed-precision policy also means no bfloat16 -> float32 -> bfloat16 round trip around it).
The arithmetic is done in float64 and rounded to float32, the conv's variable dtype.

Under a mixed policy (``mixed_bfloat16`` / ``mixed_float16``: float32 variables, bfloat16 / float16 compute) the
folded model's layers get the compute dtype for their variables too (policy ``bfloat16`` / ``float16``), except
the BatchNormalizations it keeps (float32 statistics): a mixed layer casts each float32 kernel and bias to the
compute dtype at every call, one Cast op per variable (about 450 in GSTO-HRNet's inference graph; 1-4 % of its
bf16 inference time on an AMX CPU, docs/precision.md); here the same rounding (float32 -> bfloat16, round to
nearest even) happens once, so every output is the one the mixed model with the folded float32 weights computes.

:func:`fold_batch_norm` works on the functional graph, not on a model family: it walks the model's nodes in
topological order and rebuilds the graph on the same inputs. A BN node is folded when

* its layer is a ``keras.layers.BatchNormalization`` (``FusedBatchNormalization`` included) called once, on one
  tensor, not with ``training=True``, normalising the channel axis;
* that tensor is the output of a convolution: ``keras.layers.Conv1D/2D/3D`` (and subclasses such as
  ``UpsampleConcatConv1x1``) or ``DepthwiseConv1D/2D``, without activation, called once;
* the BN is the conv output's only consumer (and the conv output is not a model output).

Everything else is kept: a BN with two consumers, one after a pooling, an addition or an input. A composite layer
that holds a conv + BN inside opts in with a method ``fold_batch_norm()`` returning an equivalent new layer with
the BN folded (weights set); nested functional models are folded recursively. Every other layer is copied (same
config and weights, a new instance), so the folded model shares no variables with the original.

The result is for inference only: a folded model called with ``training=True`` has no batch statistics to use.
The model's inputs, output structure (a dict keeps its keys) and output dtypes (float32 logits under
``mixed_bfloat16``: the layers with a float32 policy keep it) are those of the original. A composite layer's
``fold_batch_norm()`` is called with ``dtype=`` (the policy of the folded layer, :func:`inference_dtype_policy`)
under a mixed policy, without arguments otherwise.
"""

import keras
from keras import tree

from gsto_tf.keras_internals import (
    call_count,
    is_functional,
    nodes_in_order,
    pack_like_inputs,
    pack_like_outputs,
    producer_node,
)
from gsto_tf.layers.batch_norm import DEPTHWISE_CONV_TYPES, folded_conv_weights

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def fold_batch_norm(model, name=None):
    """A new functional model computing ``model``'s inference outputs with BatchNorm folded into the convs.

    ``name``: the new model's name (default ``"<model name>_folded"``).

    Raises ValueError for a model without a functional graph (a subclassed model).
    """
    if not is_functional(model):
        raise ValueError(f"fold_batch_norm: model '{model.name}' has no functional graph (a subclassed model?); "
                         "only functional / Sequential models can be folded")
    plan = _plan(model)
    tensors = {id(x): x for x in model.inputs}
    for node in nodes_in_order(model):
        if any(id(x) not in tensors for x in node.input_tensors):
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        key = id(node)
        if key in plan.skip:  # a folded BN: its output is the folded conv's
            outputs = args[0]
        elif key in plan.bn_of_conv:
            conv = node.operation
            bn = plan.bn_of_conv[key].operation
            folded = _new_layer(conv, use_bias=True, name=plan.names.get(key, conv.name),
                                dtype=inference_dtype_policy(conv))
            outputs = folded(*args, **kwargs)
            _set_folded_weights(folded, conv, bn)
        else:
            outputs = _copy_call(node.operation, args, kwargs)
        for x, y in zip(node.outputs, tree.flatten(outputs)):
            tensors[id(x)] = y
    outputs = pack_like_outputs(model, [tensors[id(x)] for x in model.outputs])
    inputs = pack_like_inputs(model, model.inputs)
    return keras.Model(inputs, outputs, name=name or f"{model.name}_folded")


def folded_pairs(model):
    """``[(conv layer name, BN layer name)]`` that :func:`fold_batch_norm` merges at the top level of ``model``."""
    plan = _plan(model)
    return [(node.operation.name, plan.bn_of_conv[key].operation.name)
            for node in nodes_in_order(model) for key in [id(node)] if key in plan.bn_of_conv]


# -- graph analysis ----------------------------------------------------------------------------------------------


class _Plan:
    def __init__(self):
        self.bn_of_conv = {}  # id(conv node) -> BN node folded into it
        self.skip = set()  # ids of folded BN nodes
        self.names = {}  # id(conv node) -> name of the folded layer, when it must not be the conv's


def _plan(model):
    nodes = list(nodes_in_order(model))
    member = {id(n) for n in nodes}
    consumers = {}
    for node in nodes:
        for x in node.input_tensors:
            consumers[id(x)] = consumers.get(id(x), 0) + 1
    model_outputs = {id(x) for x in model.outputs}
    plan = _Plan()
    for node in nodes:
        bn = node.operation
        if not _is_foldable_bn(bn, node):
            continue
        x = node.input_tensors[0]
        conv_node = producer_node(x)
        if conv_node is None or id(conv_node) not in member or id(conv_node) in plan.bn_of_conv:
            continue
        conv = conv_node.operation
        if not _is_foldable_conv(conv, bn):
            continue
        if consumers.get(id(x), 0) != 1 or id(x) in model_outputs or len(conv_node.outputs) != 1:
            continue
        plan.bn_of_conv[id(conv_node)] = node
        plan.skip.add(id(node))
        if any(id(y) in model_outputs for y in node.outputs):
            plan.names[id(conv_node)] = bn.name  # the output keeps the name of the layer that produced it
    return plan


def _is_foldable_bn(bn, node):
    if not isinstance(bn, keras.layers.BatchNormalization) or call_count(bn) != 1:
        return False
    if getattr(bn, "renorm", False) or node.arguments.kwargs.get("training") is True:
        return False
    args = node.arguments.args
    return len(args) == 1 and len(node.input_tensors) == 1 and args[0] is node.input_tensors[0] \
        and not node.arguments.kwargs.get("mask")


def _is_foldable_conv(conv, bn):
    if not isinstance(conv, _CONV_TYPES + DEPTHWISE_CONV_TYPES) or call_count(conv) != 1:
        return False
    if conv.activation not in (None, keras.activations.linear):
        return False
    rank = len(conv.kernel.shape)  # spatial dims + 2
    channel_axis = rank - 1 if conv.data_format == "channels_last" else 1
    return bn.axis in (channel_axis, channel_axis - rank)


# -- rebuilding --------------------------------------------------------------------------------------------------

_MIXED_POLICIES = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def inference_dtype_policy(layer):
    """The dtype policy of ``layer``'s copy in a folded model: a mixed policy becomes its compute dtype (variables
    stored rounded, no cast per call), except on a BatchNormalization; every other policy is kept."""
    policy = layer.dtype_policy
    if isinstance(layer, keras.layers.BatchNormalization) or policy.name not in _MIXED_POLICIES:
        return policy
    return keras.DTypePolicy(_MIXED_POLICIES[policy.name])


def _new_layer(layer, **changes):
    """A new, unbuilt instance of ``layer``'s class with its config (plus ``changes``)."""
    config = layer.get_config()
    config.update(changes)
    return layer.__class__.from_config(config)


def _copy_call(operation, args, kwargs):
    """Call a copy of ``operation`` (its folded form where it has one) on the rebuilt tensors."""
    if isinstance(operation, keras.Model) and is_functional(operation):
        return fold_batch_norm(operation)(*args, **kwargs)
    if callable(getattr(operation, "fold_batch_norm", None)):
        policy = inference_dtype_policy(operation)  # passed only where it changes: fold_batch_norm() suffices else
        changes = {"dtype": policy} if policy is not operation.dtype_policy else {}
        return operation.fold_batch_norm(**changes)(*args, **kwargs)
    if not isinstance(operation, keras.layers.Layer):
        return operation(*args, **kwargs)  # a stateless keras.ops operation
    try:
        copy = _new_layer(operation, dtype=inference_dtype_policy(operation))
    except (TypeError, ValueError, NotImplementedError):
        return operation(*args, **kwargs)  # cannot be re-created from its config: shared with the original
    outputs = copy(*args, **kwargs)
    if operation.weights:
        copy.set_weights(operation.get_weights())
    return outputs


def _set_folded_weights(folded, conv, bn):
    new_kernel, new_bias = folded_conv_weights(conv, bn)
    weights = {id(folded.kernel): new_kernel, id(folded.bias): new_bias}
    folded.set_weights([weights.get(id(v), v.numpy()) for v in folded.weights])
