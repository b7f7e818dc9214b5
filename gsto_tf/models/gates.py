"""Access to the gate maps of a GSTO model, for visualisation and analysis."""

import keras

from gsto_tf.layers.spatial_gate import SpatialGate


def gate_layer_names(model):
    """Names of the gate-producing layers: fusion gates (``stage{s}.{m}.att_layers.{i}.{j}``, output branch i,
    input branch j) and the class-map gates of the transitions (``att2.2.sigmoid``, ``att3.3.sigmoid``)."""
    names = []
    for layer in model.layers:
        if isinstance(layer, SpatialGate) or (
            isinstance(layer, keras.layers.Activation) and layer.name.endswith(".sigmoid")
        ):
            names.append(layer.name)
    return names


def gate_model(model):
    """A model mapping the input image to ``{gate layer name: gate map [N, h, w, 1]}``.

    Raises ValueError for a model without gates (e.g. HRNetV2).
    """
    names = gate_layer_names(model)
    if not names:
        raise ValueError(f"model '{model.name}' has no GSTO gates")
    return keras.Model(model.input, {n: model.get_layer(n).output for n in names}, name=f"{model.name}_gates")
