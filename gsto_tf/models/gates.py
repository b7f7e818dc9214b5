"""Access to the gate maps of a GSTO model, for visualisation and analysis."""

import keras

from gsto_tf.layers.gated_scale_transfer import GatedScaleTransfer
from gsto_tf.layers.spatial_gate import SpatialGate


def _is_gate_layer(layer):
    if isinstance(layer, SpatialGate):
        return True
    if isinstance(layer, GatedScaleTransfer):
        return layer.gate is not None
    return isinstance(layer, keras.layers.Activation) and layer.name.endswith(".sigmoid")


def gate_layer_names(model):
    """Names of the gate-producing layers: fusion gates (``stage{s}.{m}.att_layers.{i}.{j}``, output branch i,
    input branch j), the class-map gates of the transitions (``att2.2.sigmoid``, ``att3.3.sigmoid``) and every
    gated :class:`~gsto_tf.layers.GatedScaleTransfer` (e.g. in the PPM / ASPP heads)."""
    return [layer.name for layer in model.layers if _is_gate_layer(layer)]


class _GateOf(keras.layers.Layer):
    """Weightless wrapper computing a GatedScaleTransfer's gate with that layer's own weights (for gate_model;
    not serialisable, visualisation only)."""

    def __init__(self, target, **kwargs):
        super().__init__(**kwargs)
        self.target = target

    def call(self, x, class_scores=None):
        return self.target.compute_gate(x, class_scores=class_scores, training=False)

    def compute_output_shape(self, x_shape, class_scores_shape=None):
        return tuple(x_shape[:-1]) + (1,)


def _gate_tensor(layer):
    if not isinstance(layer, GatedScaleTransfer):
        return layer.output
    # The gate is internal to the layer: recompute it from the layer's recorded inputs with its own weights.
    node = layer._inbound_nodes[0]
    x = node.arguments.args[0]
    class_scores = node.arguments.kwargs.get("class_scores")
    return _GateOf(layer, name=f"{layer.name}.gate_map")(x, class_scores=class_scores)


def gate_model(model):
    """A model mapping the input image to ``{gate layer name: gate map [N, h, w, 1]}``.

    Raises ValueError for a model without gates (e.g. HRNetV2).
    """
    names = gate_layer_names(model)
    if not names:
        raise ValueError(f"model '{model.name}' has no GSTO gates")
    outputs = {n: _gate_tensor(model.get_layer(n)) for n in names}
    return keras.Model(model.input, outputs, name=f"{model.name}_gates")
