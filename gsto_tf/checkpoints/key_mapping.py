"""The mapping between PyTorch state-dict keys and the variables of a gsto_tf model, both ways, and its report.

Every weight-bearing layer of a gsto_tf model is named like its PyTorch module path (see
:mod:`gsto_tf.models.blocks`), nested layers joined with '.'; a composite layer with a ``checkpoint_sublayers()``
method (e.g. :class:`~gsto_tf.layers.GatedScaleTransfer`) places its sublayers itself. So one generic rule maps any
official checkpoint: no per-model table. :func:`load_torch_weights` assigns a state dict (every key accounted for in
a :class:`LoadReport`); :func:`torch_state_dict` is its inverse.
"""

import dataclasses
import os

import keras
import numpy as np

from gsto_tf.checkpoints.torch_reader import CheckpointError, clean_state_dict, read_state_dict
from gsto_tf.keras_internals import sublayers

# Official GSTO checkpoints hold `att1.*`, which the official forward pass never uses
# (official ``models/gsto_hrnet.py``).
_UNUSED_BY_DESIGN = ("att1.",)
# Layers that an ImageNet backbone checkpoint cannot provide: heads and GSTO's gates.
_HEAD_MARKERS = ("last_layer", "att2.", "att3.", ".att_layers.", "decode_head.", "auxiliary_head.")


@dataclasses.dataclass
class LoadReport:
    """What a load did: every model weight and checkpoint key is accounted for."""

    source: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)  # model weights without a key
    unexpected: list = dataclasses.field(default_factory=list)  # checkpoint keys the model does not have
    mismatched: list = dataclasses.field(default_factory=list)  # (key, checkpoint shape, expected shape)
    ignored: list = dataclasses.field(default_factory=list)  # keys skipped by design (e.g. GSTO's att1)
    allowed_missing: list = dataclasses.field(default_factory=list)  # head weights absent from a backbone file

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit=20):
        def fmt(items):
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        for label, items in (
            ("missing in checkpoint", self.missing),
            ("unexpected in checkpoint", self.unexpected),
            ("shape mismatch (key, checkpoint shape, expected shape)", self.mismatched),
            ("ignored by design", self.ignored),
            ("not in a backbone checkpoint (left initialised)", self.allowed_missing),
        ):
            if items:
                lines.append(f"  {label} [{len(items)}]: {fmt(items)}")
        return "\n".join(lines)


def _weight_layers(layer, prefix="", path=None):
    """Yield (torch module path, leaf layer) for every weight-bearing leaf layer.

    A layer's path is its parent's path (``prefix``) plus its name, unless ``path`` places it; a composite layer with
    a ``checkpoint_sublayers()`` method (e.g. :class:`~gsto_tf.layers.GatedScaleTransfer`) places its sublayers
    itself, at keys relative to its parent.
    """
    if path is None:
        path = f"{prefix}.{layer.name}" if prefix else layer.name
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization)):
        yield path, layer
        return
    if hasattr(layer, "checkpoint_sublayers"):
        for key, sublayer in layer.checkpoint_sublayers().items():
            yield from _weight_layers(sublayer, path=f"{prefix}.{key}" if prefix else key)
        return
    for child in sublayers(layer):
        yield from _weight_layers(child, path)


def torch_parameters(layer):
    """``[(torch suffix, keras variable, to_keras(array))]`` for one leaf layer."""
    if isinstance(layer, keras.layers.BatchNormalization):
        pairs = [("weight", layer.gamma), ("bias", layer.beta), ("running_mean", layer.moving_mean),
                 ("running_var", layer.moving_variance)]
        return [(k, v, lambda a: a) for k, v in pairs if v is not None]
    if isinstance(layer, keras.layers.Dense):
        kernel = (layer.kernel, lambda a: a.T)
    else:  # Conv2D: torch [O, I, kh, kw] -> keras [kh, kw, I, O]
        kernel = (layer.kernel, lambda a: np.transpose(a, (2, 3, 1, 0)))
    params = [("weight", kernel[0], kernel[1])]
    if getattr(layer, "use_bias", False):
        params.append(("bias", layer.bias, lambda a: a))
    return params


def model_torch_keys(model):
    """The torch state-dict keys a model expects, with their Keras variables (in model order)."""
    keys = {}
    for path, layer in _model_weight_layers(model):
        for suffix, variable, convert in torch_parameters(layer):
            keys[f"{path}.{suffix}"] = (variable, convert)
    return keys


def _model_weight_layers(model):
    for layer in model.layers:
        yield from _weight_layers(layer)


def load_torch_weights(model, state_dict_or_path, strict=False, backbone_only=False, source=None):
    """Assign an official (PyTorch-layout) state dict to ``model`` by layer names.

    Args:
        state_dict_or_path: a dict of arrays (keys as in the checkpoint) or a ``.pth`` / ``.npz`` path.
        strict: raise :class:`CheckpointError` on any missing, unexpected or shape-mismatched key.
        backbone_only: the file is an ImageNet backbone checkpoint: head / gate weights may be missing and the
            file's classification-head keys are ignored.
        source: name of the checkpoint in the report and errors (default: the path, or "<state dict>").

    Returns a :class:`LoadReport`.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        state = read_state_dict(state_dict_or_path)
        source = source or os.fspath(state_dict_or_path)
    else:
        source = source or "<state dict>"
        state = clean_state_dict(state_dict_or_path)
    if backbone_only and not any(k.startswith("backbone.") for k in state):
        # A bare trunk checkpoint (torchvision / mmseg ImageNet ResNet, HRNet ImageNet) for a model whose trunk
        # is a nested sub-model named `backbone` (the PPM / ASPP models): load into that sub-model.
        nested = [l for l in model.layers if isinstance(l, keras.Model) and l.name == "backbone"]
        if nested:
            model = nested[0]
    report = LoadReport(source=source)
    expected = model_torch_keys(model)
    assignments = []
    for key in sorted(set(state) - set(expected)):
        if key.startswith(_UNUSED_BY_DESIGN) or backbone_only:
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    for key, (variable, convert) in expected.items():
        if key not in state:
            if backbone_only and any(m in key for m in _HEAD_MARKERS):
                report.allowed_missing.append(key)
            else:
                report.missing.append(key)
            continue
        value = np.asarray(state[key])
        if not np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float64)
        # The stored precision is kept until the one cast to the variable's dtype below: float64 into a float64
        # model is exact, float32 into float32 unchanged.
        expected_shape = _torch_shape(variable.shape, value.ndim)
        if tuple(value.shape) != expected_shape:
            report.mismatched.append((key, tuple(value.shape), expected_shape))
            continue
        assignments.append((variable, convert(value)))
        report.loaded.append(key)
    if strict and not report.ok:
        # Checked before assigning anything: a failed strict load leaves the model untouched.
        raise CheckpointError(
            f"checkpoint does not match model '{model.name}' (strict load; nothing was assigned):\n"
            + report.summary()
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return report


def torch_state_dict(model, include=None):
    """The model's weights as an official-layout state dict ``{key: array}`` (conv kernels ``[O, I, kh, kw]``),
    the inverse of :func:`load_torch_weights`. ``include(key) -> bool`` keeps a subset (e.g. a trunk without
    its head); save it with ``numpy.savez`` and load it back with ``load_torch_weights`` / ``model.pretrained``."""
    state = {}
    for key, (variable, _) in model_torch_keys(model).items():
        if include is not None and not include(key):
            continue
        value = np.asarray(variable.numpy())
        if value.ndim == 4:  # keras [kh, kw, I, O] -> torch [O, I, kh, kw]
            value = np.transpose(value, (3, 2, 0, 1))
        elif value.ndim == 2:  # Dense [I, O] -> torch Linear [O, I]
            value = value.T
        state[key] = np.ascontiguousarray(value)
    return state


def is_head_key(key):
    """True for the keys an ImageNet trunk checkpoint does not provide (heads, GSTO's gates)."""
    return any(m in key for m in _HEAD_MARKERS)


def _torch_shape(keras_shape, ndim):
    """The PyTorch-layout shape a checkpoint tensor must have for a Keras variable (conv: [O, I, kh, kw])."""
    shape = tuple(int(d) for d in keras_shape)
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape
