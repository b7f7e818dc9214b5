"""Model registry: ``build("gsto_hrnet_w48", num_classes=19)``.

Every model family registers its named variants the same way, at the bottom of its module:
``register_variant(name, builder, **fixed)`` (HRNet widths in :mod:`gsto_tf.models.hrnet`, head x backbone in
:mod:`gsto_tf.models.context_models`); :func:`register_model` registers any other callable. The registry is filled
on first use by importing the family modules.
"""

import contextlib
import importlib

import keras

from gsto_tf.models import outputs as out_names

_REGISTRY = {}
_FAMILY_MODULES = ("gsto_tf.models.hrnet", "gsto_tf.models.context_models")
_loaded = False
# Names the synchronized-BN flag has elsewhere (Keras' BatchNormalization argument, a short form); ours is one.
_OTHER_SYNC_NAMES = {"sync", "synchronized", "sync_bn"}


def register_model(name):
    """Decorator: register ``fn(num_classes, **options) -> keras.Model`` under ``name``."""

    def decorator(fn):
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def register_variant(name, builder, **fixed):
    """Register ``name`` as ``builder(num_classes=..., name=name, **fixed, **options)``: one builder function
    serving many named variants (the ``fixed`` keyword arguments tell them apart; ``name`` is the model's default
    Keras name)."""

    def build_variant(num_classes, **options):
        options.setdefault("name", name)
        return builder(num_classes=num_classes, **fixed, **options)

    build_variant.__name__ = f"build_{name}"
    return register_model(name)(build_variant)


def _load_families():
    global _loaded
    if _loaded:
        return
    for module in _FAMILY_MODULES:
        importlib.import_module(module)
    _loaded = True


def available_models():
    """Sorted list of valid model names."""
    _load_families()
    return sorted(_REGISTRY)


def build(name, num_classes, dtype=None, **options):
    """Build a registered model. Options: ``input_shape``, ``aux``, ``sync_batchnorm``, family-specific ones.

    ``dtype``: a Keras dtype policy name (``"float32"``, ``"mixed_bfloat16"``, ``"float64"``) for this model's layers
    and input, instead of the global policy. ``"float64"`` gives a model that runs in float64 end to end (input,
    every layer, logits); to train it, also set ``keras.config.set_floatx("float64")`` before compiling (Keras'
    compiled loss and its loss metrics compute in floatx).
    """
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    for old in _OTHER_SYNC_NAMES.intersection(options):
        raise ValueError(f"build: the synchronized-BatchNorm option is `sync_batchnorm` (got `{old}`)")
    if dtype is None:
        return _REGISTRY[name](num_classes, **options)
    with _default_dtype(dtype):
        return _REGISTRY[name](num_classes, **options)


@contextlib.contextmanager
def _default_dtype(dtype):
    """Global dtype policy ``dtype`` (and floatx = its variable dtype, which ``keras.Input`` takes) inside the block."""
    try:
        policy = keras.dtype_policies.get(dtype)
    except (ValueError, TypeError):
        policy = None
    if policy is None or policy.variable_dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise ValueError(f"build: `dtype` must be a floating Keras dtype policy such as 'float32', 'mixed_bfloat16' "
                         f"or 'float64', got {dtype!r}")
    previous_policy, previous_floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(policy.variable_dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


def inference_model(model, fold_batch_norm=True):
    """A model with the same input and one tensor output: the final logits (for evaluation, prediction and export).

    ``fold_batch_norm`` (default): BatchNorm folded into the preceding convolutions
    (:func:`gsto_tf.models.folding.fold_batch_norm`): the same function with fewer ops, for inference only, and a
    model independent of ``model``'s variables (copied weights). ``False``: a view of ``model`` sharing its layers
    (cheap to build: use it where only the output's shape matters, or to keep training the same weights);
    idempotent: a model whose output already is one tensor is returned as it is.
    """
    logits = model
    if isinstance(model.output, (dict, list, tuple)):
        logits = keras.Model(model.input, out_names.final_logits(model.output), name=f"{model.name}_inference")
    if not fold_batch_norm:
        return logits
    from gsto_tf.models.folding import fold_batch_norm as fold

    return fold(logits, name=logits.name)
