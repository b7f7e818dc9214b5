"""Parameter and FLOP counts with the conventions of the paper / HRNet's summary tool (SPEC §5).

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

from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.resize import BilinearResize
from gsto_tf.layers.spatial_gate import SpatialGate


@dataclasses.dataclass
class ModelCounts:
    name: str
    input_size: tuple
    params: int
    paper_params: int
    conv_macs: int
    full_flops: int

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
    kernel = _numel(layer.kernel.shape)
    out_hw = _spatial(out_shape)
    macs = kernel * out_hw
    flops = 2 * macs + (int(out_shape[-1]) * out_hw if layer.use_bias else 0)
    return macs, flops


def _sublayer_costs(layer, in_shape):
    """Costs of composite layers whose inner convs have no recorded symbolic outputs."""
    macs = flops = 0
    if isinstance(layer, SpatialGate):
        out = tuple(in_shape[:-1]) + (1,)
        m, f = _conv_cost(layer.conv, out)
        macs, flops = m, f + (2 * _spatial(out) if layer.bn is not None else 0) + 5 * _spatial(out)
    elif isinstance(layer, GatedScaleTransfer):
        raise NotImplementedError("counting a model with GatedScaleTransfer layers is not supported yet")
    return macs, flops


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
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out = layer.output
        out_shapes = [t.shape for t in keras.tree.flatten(out)]
        if isinstance(layer, keras.layers.Conv2D):
            m, f = _conv_cost(layer, out_shapes[0])
            macs, flops = macs + m, flops + f
        elif isinstance(layer, (SpatialGate, GatedScaleTransfer)):
            m, f = _sublayer_costs(layer, layer.input.shape)
            macs, flops = macs + m, flops + f
        elif isinstance(layer, keras.layers.BatchNormalization):
            flops += 2 * _numel(out_shapes[0][1:])
        elif isinstance(layer, (keras.layers.Add, keras.layers.Multiply)):
            flops += _numel(out_shapes[0][1:]) * (len(layer.input) - 1)
        elif isinstance(layer, keras.layers.ReLU):
            flops += _numel(out_shapes[0][1:])
        elif isinstance(layer, keras.layers.Activation):
            flops += 4 * _numel(out_shapes[0][1:])
        elif isinstance(layer, BilinearResize):
            flops += 8 * _numel(out_shapes[0][1:])
    return ModelCounts(name or model.name, tuple(int(d) for d in in_shape[1:3]), params, paper_params, macs, flops)


def _leaves(layer):
    children = layer.layers if isinstance(layer, keras.Model) else getattr(layer, "_layers", [])
    if not children:
        yield layer
    for child in children:
        yield from _leaves(child)


def count_named_model(name, num_classes=19, input_size=(1024, 2048), **options):
    """Build ``name`` symbolically at ``input_size`` and count it (batch 1)."""
    from gsto_tf.models.factory import build

    model = build(name, num_classes, input_shape=(*input_size, 3), **options)
    counts = count_model(model, name)
    del model
    keras.backend.clear_session()
    return counts


# Official numbers (SPEC §5, measured by running the official code; 19 classes, 1024x2048). The GSTO `params`
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
