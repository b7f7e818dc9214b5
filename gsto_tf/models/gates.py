"""Access to the gate maps of a GSTO model, for visualisation and analysis.

Every gate of a gsto_tf model lives in a :class:`~gsto_tf.layers.GatedScaleTransfer`; its map is what the layer's
:meth:`~gsto_tf.layers.GatedScaleTransfer.compute_gate` returns (= the last output with ``return_gate=True``).
:func:`gate_model` re-runs the model's graph on its own input with the same layers (shared weights;
``keras.models.clone_model`` with a ``call_function``) and, next to each gated layer, computes its gate from the
same inputs.
"""

import keras

from gsto_tf.keras_internals import is_functional
from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer


def _is_gated(layer):
    return isinstance(layer, GatedScaleTransfer) and layer.gate is not None


class _GateOf(keras.layers.Layer):
    """Weightless: the gate map of a GatedScaleTransfer (its own weights, inference mode) from ``[x]`` or
    ``[x, class_scores]``; built by :func:`gate_model` for visualisation, not serialisable."""

    def __init__(self, target, **kwargs):
        super().__init__(**kwargs)
        self.target = target

    def call(self, inputs):
        return self.target.compute_gate(inputs[0], class_scores=inputs[1] if len(inputs) > 1 else None,
                                        training=False)

    def compute_output_shape(self, input_shapes):
        if self.target.gate_layer.downsample:  # a class-map gate brings the class scores to x's scale itself
            return self.target.gate_layer.compute_output_shape(input_shapes[-1])
        return tuple(input_shapes[0][:-1]) + (1,)


def gate_layer_names(model):
    """Names of the gated :class:`~gsto_tf.layers.GatedScaleTransfer` layers, nested functional sub-models
    included: GSTO-HRNet's fusion gates (``stage{s}.{m}.att_layers.{i}.{j}``, output branch i, input branch j),
    its class-map gated transitions (``att2.2``, ``att3.3``) and the gated transfers of the PPM / ASPP heads."""
    names = []
    for layer in model.layers:
        if _is_gated(layer):
            names.append(layer.name)
        elif is_functional(layer):
            names.extend(gate_layer_names(layer))
    return names


def gate_model(model):
    """A model mapping the input image to ``{gate layer name: gate map [N, h, w, 1]}``.

    Raises ValueError for a model without gates (e.g. HRNetV2).
    """
    if not gate_layer_names(model):
        raise ValueError(f"model '{model.name}' has no GSTO gates")
    gates = {}

    def call(layer, *args, **kwargs):
        if _is_gated(layer):
            scores = kwargs.get("class_scores")
            gate_inputs = [args[0]] if scores is None else [args[0], scores]
            gates[layer.name] = _GateOf(layer, name=f"{layer.name}.gate_map")(gate_inputs)
        if is_functional(layer) and gate_layer_names(layer):
            gates.update(gate_model(layer)(*args, **kwargs))
        return layer(*args, **kwargs)

    keras.models.clone_model(model, input_tensors=model.input, clone_function=lambda layer: layer,
                             call_function=call)
    return keras.Model(model.input, gates, name=f"{model.name}_gates")
