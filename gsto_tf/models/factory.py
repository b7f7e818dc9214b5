"""Model registry: ``build("gsto_hrnet_w48", num_classes=19)``.

Model families register builders with :func:`register_model`; the registry is filled on first use by importing
the family modules (HRNet here, PPM/ASPP heads in :mod:`gsto_tf.models.context_heads`).
"""

import importlib
import importlib.util

import keras

from gsto_tf.models import outputs as out_names

_REGISTRY = {}
_FAMILY_MODULES = ("gsto_tf.models.hrnet_registry", "gsto_tf.models.context_heads")
_loaded = False


def register_model(name):
    """Decorator: register ``fn(num_classes, **options) -> keras.Model`` under ``name``."""

    def decorator(fn):
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def _load_families():
    global _loaded
    if _loaded:
        return
    for module in _FAMILY_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    _loaded = True


def available_models():
    """Sorted list of valid model names."""
    _load_families()
    return sorted(_REGISTRY)


def build(name, num_classes, **options):
    """Build a registered model. Options: ``input_shape``, ``aux``, ``sync_batchnorm``, family-specific ones."""
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](num_classes, **options)


def inference_model(model):
    """A model with the same input and one tensor output: the final logits (for evaluation and export)."""
    outputs = model.output
    if isinstance(outputs, dict):
        outputs = outputs[out_names.FINAL_LOGITS]
    elif isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    return keras.Model(model.input, outputs, name=f"{model.name}_inference")
