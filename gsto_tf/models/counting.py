"""Parameter and FLOP counts with the conventions of the paper / HRNet's summary tool (docs/reference.md).

* ``params``: all trainable weights (= PyTorch ``parameters()``, BN gamma/beta included);
* ``paper_params``: conv/dense weights and biases only (BN not counted), HRNet's summary-tool convention;
* ``paper_gflops``: conv multiply-adds ``kernel.numel * H_out * W_out`` (no bias) / 2^30 — what the paper and
  the slides call "GFLOPs";
* ``full_gflops``: real floating-point operations / 1e9 under this convention: 2 per conv multiply-add, 1 per
  bias add, 2 per BN element (inference: scale + shift), 1 per element of add / ReLU / multiply, 4 per sigmoid
  element, 8 per bilinear-resize output element (4 loads, 3 lerps).

Counting builds the model symbolically at the requested input size and reads every layer's output shape; it
never runs the network, so 1024x2048 counts of W48 are cheap.
"""

import dataclasses

import keras
import numpy as np

from gsto_tf.keras_internals import is_functional, sublayers, walk_layers
from gsto_tf.layers.adaptive_pooling import AdaptiveAveragePooling2D
from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.resize import BilinearResize
from gsto_tf.layers.upsample_concat_conv import UpsampleConcatConv1x1


@dataclasses.dataclass
class ModelCounts:
    name: str
    input_size: tuple
    params: int
    paper_params: int
    conv_macs: int
    full_flops: int
    # Multiply-adds the gsto_tf graph actually executes: ``conv_macs`` describes the model as the official code
    # computes it; layers that compute the same function with fewer multiply-adds (UpsampleConcatConv1x1) lower
    # this one. Speed benchmarks use it for achieved GFLOP/s.
    executed_macs: int = None

    @property
    def paper_gflops(self):
        return self.conv_macs / 2**30

    @property
    def full_gflops(self):
        return self.full_flops / 1e9


def _numel(shape):
    return int(np.prod([int(d) for d in shape]))


def _spatial(shape):
    return int(shape[1]) * int(shape[2])


def _conv_cost(layer, out_shape):
    """(multiply-adds, FLOPs) of a conv / dense leaf: ``kernel.numel * H_out * W_out`` multiply-adds, no bias."""
    kernel = _numel(layer.kernel.shape)
    out_hw = _spatial(out_shape) if len(out_shape) == 4 else 1
    macs = kernel * out_hw
    flops = 2 * macs + (int(out_shape[-1]) * out_hw if getattr(layer, "use_bias", False) else 0)
    return macs, flops


# Layer classes with internal convs whose output shapes are not recorded in the functional graph:
# class -> fn(layer, input_shape, output_shapes) -> (multiply-adds, FLOPs). Other modules add their own composite
# layers with :func:`register_layer_cost`; a weight-bearing layer without a rule is an error, never skipped.
_LAYER_COSTS = {}


def register_layer_cost(layer_cls):
    """Decorator: ``fn(layer, input_shape, output_shapes) -> (macs, flops)`` counts composite ``layer_cls``."""

    def decorator(fn):
        _LAYER_COSTS[layer_cls] = fn
        return fn

    return decorator


def _strided(shape, steps, stride=2):
    """Shape after ``steps`` 3x3 convs of ``stride`` with padding 1 (PyTorch: ``floor((n - 1) / stride) + 1``)."""
    h, w = int(shape[1]), int(shape[2])
    for _ in range(steps):
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
    return (shape[0], h, w, shape[3])


def _gate_cost(gate, in_shape):
    """A SpatialGate: per conv step, conv (+ BN + ReLU); then the sigmoid on the gate map."""
    macs = flops = 0
    shape = in_shape
    for n, conv in enumerate(gate.convs):
        out = _strided(tuple(shape[:-1]) + (1,), 1 if n else 0)
        m, f = _conv_cost(conv, out)
        hw = _spatial(out)
        macs, flops = macs + m, flops + f + (3 * hw if gate.bns else 0)  # BN (2) + ReLU (1) per element
        shape = out
    return macs, flops + 4 * _spatial(shape)  # sigmoid


@register_layer_cost(AdaptiveAveragePooling2D)
def _adaptive_pool_cost(layer, in_shape, out_shapes):
    """No multiply-adds (convention of the paper's GFLOPs); FLOPs: one add per input element (overlapping bins
    ignored) and one divide per output element, as a pooling pass."""
    out = out_shapes[0]
    return 0, _numel(in_shape[1:]) + _numel(out[1:])


@register_layer_cost(UpsampleConcatConv1x1)
def _upsample_concat_conv_cost(layer, in_shape, out_shapes):
    """Counted as the official head computes it: resize inputs 1..n to input 0's size, concat, conv1x1.

    The layer evaluates the conv per input before resizing (fewer multiply-adds), but the counts describe the
    model, so they stay comparable with the paper's and the official code's.
    """
    out_shape = out_shapes[0]
    macs, flops = _conv_cost(layer, out_shape)
    resized_channels = sum(layer.input_channels[1:])
    return macs, flops + 8 * _spatial(out_shape) * resized_channels


def _upsample_concat_conv_executed(layer, in_shapes):
    """Per input: a 1x1 conv from its channels to ``filters`` at its own resolution (resizes are not MACs)."""
    return sum(c * layer.filters * _spatial(shape) for c, shape in zip(layer.input_channels, in_shapes))


# Layer class -> fn(layer, input_shapes) -> multiply-adds executed, for layers whose ``conv_macs`` rule counts the
# official form of a computation they evaluate more cheaply.
_EXECUTED_MACS = {UpsampleConcatConv1x1: _upsample_concat_conv_executed}


def _executed_macs_saving(model):
    """Official minus executed multiply-adds over every leaf layer with an ``_EXECUTED_MACS`` rule."""
    saving = 0
    for layer in _leaves(model):
        rule = _EXECUTED_MACS.get(type(layer))
        if rule is not None:
            official = _layer_costs(layer)[0]
            saving += official - rule(layer, _static_shapes(layer, layer.input))
    return saving


@register_layer_cost(GatedScaleTransfer)
def _gated_scale_transfer_cost(layer, in_shape, out_shapes):
    """Gate (+ class-score conv), gating multiply, channel transform steps (+BN, ReLU between steps, act),
    pooling / resize."""
    macs = flops = 0
    if layer.gate_layer is not None:
        if layer.class_score_layer is not None:
            scores_shape = tuple(in_shape[:-1]) + (layer.num_classes,)
            m, f = _conv_cost(layer.class_score_layer, scores_shape)
            macs, flops = macs + m, flops + f
        gate_in = in_shape
        if layer.gate_layer.downsample:  # a class-map gate: computed from the given (larger) class scores
            gate_in = _static_shapes(layer, layer.input)[1]
        gate_in = tuple(gate_in[:-1]) + (int(layer.gate_layer.conv.kernel.shape[2]),)
        m, f = _gate_cost(layer.gate_layer, gate_in)
        macs, flops = macs + m, flops + f + _numel(in_shape[1:])  # + the gating multiply
    shape = in_shape
    steps = layer.steps
    for k, (pad, conv, bn) in enumerate(steps):
        shape = _strided(shape, 1 if pad is not None else 0, conv.strides[0])
        shape = tuple(shape[:-1]) + (int(conv.kernel.shape[-1]),)
        m, f = _conv_cost(conv, shape)
        numel = _numel(shape[1:])
        macs, flops = macs + m, flops + f + (2 * numel if bn is not None else 0) + (numel if k < len(steps) - 1 else 0)
    if steps and layer.activation_name is not None:
        flops += _numel(shape[1:])
    out_shape = out_shapes[0]
    if layer.pool is not None:
        flops += _numel(out_shape[1:]) * layer.factor**2
    if layer.scale == "up":
        flops += 8 * _numel(out_shape[1:])
    return macs, flops


def _static_shapes(layer, tensors):
    shapes = [tuple(t.shape) for t in keras.tree.flatten(tensors)]
    for shape in shapes:
        if any(d is None for d in shape[1:]):
            raise ValueError(
                f"count_model: layer '{layer.name}' has an unknown spatial size {shape}; build the whole model "
                "(including any nested sub-model) at a fixed input size."
            )
    return shapes


def _layer_costs(layer):
    """(multiply-adds, FLOPs) of one layer of a functional graph (nested functional models are walked)."""
    if isinstance(layer, keras.layers.InputLayer):
        return 0, 0
    if isinstance(layer, keras.Sequential) or is_functional(layer):
        macs = flops = 0
        for inner in layer.layers:
            m, f = _layer_costs(inner)
            macs, flops = macs + m, flops + f
        return macs, flops
    out_shapes = _static_shapes(layer, layer.output)
    for cls in type(layer).__mro__:
        if cls in _LAYER_COSTS:
            in_shape = _static_shapes(layer, layer.input)[0]
            return _LAYER_COSTS[cls](layer, in_shape, out_shapes)
    out_numel = _numel(out_shapes[0][1:])
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        return _conv_cost(layer, out_shapes[0])
    if isinstance(layer, keras.layers.BatchNormalization):
        return 0, 2 * out_numel
    if layer.weights:
        raise ValueError(
            f"count_model: no cost rule for weight-bearing layer '{layer.name}' ({type(layer).__name__}); "
            "register one with gsto_tf.models.counting.register_layer_cost."
        )
    if isinstance(layer, (keras.layers.Add, keras.layers.Multiply)):
        return 0, out_numel * (len(layer.input) - 1)
    if isinstance(layer, keras.layers.ReLU):
        return 0, out_numel
    if isinstance(layer, keras.layers.Activation):
        return 0, 4 * out_numel
    if isinstance(layer, BilinearResize):
        return 0, 8 * out_numel
    return 0, 0  # weightless reshaping layers (concat, padding, casts): no arithmetic


def count_model(model, name=None):
    """Counts for a model built with a fully defined input shape (see :func:`count_named_model`)."""
    in_shape = model.inputs[0].shape
    if any(d is None for d in in_shape[1:3]):
        raise ValueError("count_model needs a model built with a fixed input size, e.g. input_shape=(1024, 2048, 3)")
    params = sum(_numel(w.shape) for w in model.trainable_weights)
    paper_params = sum(
        _numel(w.shape)
        for layer in _leaves(model)
        if not isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.trainable_weights
    )
    macs = flops = 0
    for layer in model.layers:
        m, f = _layer_costs(layer)
        macs, flops = macs + m, flops + f
    return ModelCounts(name or model.name, tuple(int(d) for d in in_shape[1:3]), params, paper_params, macs, flops,
                       executed_macs=macs - _executed_macs_saving(model))


def _leaves(model):
    """The layers of ``model`` without sublayers (convs, BNs, ...), nested ones included."""
    return [layer for layer in walk_layers(model) if not sublayers(layer)]


def count_named_model(name, num_classes=19, input_size=(1024, 2048), **options):
    """Build ``name`` symbolically at ``input_size`` and count it (batch 1)."""
    from gsto_tf.models.factory import build

    model = build(name, num_classes, input_shape=(*input_size, 3), **options)
    counts = count_model(model, name)
    del model
    keras.backend.clear_session()
    return counts


# Official numbers (docs/reference.md, measured by running the official code; 19 classes, 1024x2048). The GSTO `params`
# include the 173 parameters of the unused `att1`, which our models do not build; `paper_params` and GFLOPs come
# from HRNet's summary tool, which hooks executed layers only, so they never counted `att1`.
OFFICIAL_COUNTS = {
    "hrnetv2_w18_small_v1": {"params": 1_540_819, "paper_params": 1_533_587, "paper_gflops": 31.10},
    "hrnetv2_w18_small_v2": {"params": 3_939_579, "paper_params": 3_923_091, "paper_gflops": 71.58},
    "gsto_hrnet_w18_small_v2": {"params": 3_966_449, "paper_params": 3_949_292, "paper_gflops": 74.41},
    "hrnetv2_w18": {"params": 9_641_119, "paper_params": 9_606_643, "paper_gflops": 137.28},
    "hrnetv2_w32": {"params": 29_546_515, "paper_params": 29_488_211, "paper_gflops": 336.42},
    "hrnetv2_w48": {"params": 65_859_379, "paper_params": 65_773_843, "paper_gflops": 696.18},
    "gsto_hrnet_w48": {"params": 66_017_297, "paper_params": 65_930_442, "paper_gflops": 713.92},
}
# The slides' numbers ("HRNetV2-W18" there is w18_small_v2).
SLIDE_COUNTS = {
    "hrnetv2_w18_small_v2": {"paper_params_m": 3.92, "paper_gflops": 71.6},
    "gsto_hrnet_w18_small_v2": {"paper_params_m": 3.95, "paper_gflops": 74.4},
    "hrnetv2_w48": {"paper_params_m": 65.78, "paper_gflops": 696.2},
    "gsto_hrnet_w48": {"paper_params_m": 65.93, "paper_gflops": 714.0},
}
# Parameters of GSTO's unused `att1` (conv 1x19x3x3 + BN gamma/beta) in the official `params` totals.
UNUSED_ATT1_PARAMS = 173
