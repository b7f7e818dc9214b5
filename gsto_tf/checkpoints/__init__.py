"""Checkpoints: the PyTorch reader (no Keras), the torch <-> Keras key mapping, and the loading front door.

Floors, bottom up: :mod:`~gsto_tf.checkpoints.torch_reader` (files -> numpy), :mod:`~gsto_tf.checkpoints.key_mapping`
(numpy <-> a model's variables), :mod:`~gsto_tf.checkpoints.loading` (builds models, checks classes and finiteness);
:mod:`~gsto_tf.checkpoints.zoo`: the models trained here, by name.
:mod:`gsto_tf.models` never imports this package.
"""

from gsto_tf.checkpoints.key_mapping import (
    LoadReport,
    is_head_key,
    load_torch_weights,
    model_torch_keys,
    torch_state_dict,
)
from gsto_tf.checkpoints.loading import (
    check_finite,
    check_num_classes,
    load_checkpoint,
    load_pretrained,
    nonfinite_weights,
)
from gsto_tf.checkpoints.torch_reader import CheckpointError, read_state_dict
from gsto_tf.checkpoints.zoo import ZooEntry, resolve_checkpoint, zoo_entry, zoo_names

__all__ = [
    "CheckpointError",
    "LoadReport",
    "ZooEntry",
    "check_finite",
    "check_num_classes",
    "is_head_key",
    "load_checkpoint",
    "load_pretrained",
    "load_torch_weights",
    "model_torch_keys",
    "nonfinite_weights",
    "read_state_dict",
    "resolve_checkpoint",
    "torch_state_dict",
    "zoo_entry",
    "zoo_names",
]
