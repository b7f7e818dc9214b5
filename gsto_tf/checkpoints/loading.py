"""The front door for checkpoints: :func:`load_checkpoint` loads ``.keras`` / ``.weights.h5`` / ``.pth`` / ``.npz``
into a model (building it when needed) and checks what a wrong file would otherwise hide: the number of classes,
NaN / Inf weights.
"""

import os
import zipfile

import keras
import numpy as np

from gsto_tf.checkpoints.key_mapping import load_torch_weights
from gsto_tf.checkpoints.torch_reader import CheckpointError, read_state_dict
from gsto_tf.checkpoints.zoo import resolve_checkpoint, zoo_names
from gsto_tf.models.factory import available_models, build, inference_model


def nonfinite_weights(model):
    """Paths of ``model``'s weights that hold a NaN or an infinity (a diverged run, a damaged file), or a negative
    BatchNorm moving variance (a damaged or crafted file: the normalisation takes its square root)."""
    bad = []
    for w in model.weights:
        if not w.dtype.startswith(("float", "bfloat")):
            continue
        value = keras.ops.convert_to_numpy(w)
        if not np.all(np.isfinite(value)) or (w.path.endswith("moving_variance") and np.any(value < 0)):
            bad.append(w.path)
    return bad


def check_finite(model, source, allow_nonfinite=False):
    """Raise :class:`CheckpointError` when ``model`` has NaN / Inf weights, naming ``source`` and the first of
    them; a model with such weights predicts one class everywhere and exports without a word otherwise."""
    if allow_nonfinite:
        return
    bad = nonfinite_weights(model)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: weights hold NaN or Inf, or a negative BatchNorm variance ({bad[0]}{more}; "
                              "a training run that diverged, or a damaged file?); "
                              "pass --allow-nonfinite (allow_nonfinite=True) to use them anyway")


def _infer_num_classes(state):
    for key in ("last_layer.3.bias", "decode_head.conv_seg.bias", "classifier.bias"):
        if key in state:
            return int(state[key].shape[0])
    return None


def build_options_from_state(name, state):
    """Build options that a checkpoint fixes for model ``name``.

    mmseg's ASPPHead ends in a 3x3 bottleneck ConvModule where DeepLabV3 has a 1x1 one: for ``deeplabv3*``
    models the kernel is read from ``decode_head.bottleneck.conv.weight`` ([O, I, kh, kw]).
    """
    options = {}
    weight = state.get("decode_head.bottleneck.conv.weight")
    if name.startswith("deeplabv3") and weight is not None and np.ndim(weight) == 4:
        options["aspp_bottleneck_kernel"] = int(np.shape(weight)[-1])
    return options


def model_num_classes(model):
    """The number of classes of a model's final logits, or None for a model without a symbolic output."""
    try:
        return int(inference_model(model, fold_batch_norm=False).output.shape[-1])
    except (AttributeError, ValueError, TypeError):  # a subclassed model that was never called symbolically
        return None


def check_num_classes(model, num_classes, source, classes_of=None):
    """:class:`CheckpointError` when ``model`` predicts another number of classes than ``num_classes``.

    ``classes_of`` says where ``num_classes`` comes from (e.g. "dataset 'cityscapes'"): a 19-class checkpoint
    evaluated on an 8-class dataset would otherwise report a meaningless score.
    """
    _check_class_count(model_num_classes(model), num_classes, source, classes_of)


def _check_class_count(found, num_classes, source, classes_of):
    if num_classes is not None and found is not None and found != num_classes:
        where = f"{classes_of} has {num_classes}" if classes_of else f"{num_classes} were asked for"
        raise CheckpointError(f"{source}: the checkpoint predicts {found} classes, but {where}; use the dataset "
                              "(or --num-classes) the checkpoint was trained for")


def load_checkpoint(path, model=None, name=None, num_classes=None, strict=True, backbone_only=False,
                    classes_of=None, allow_nonfinite=False, **build_options):
    """Load any gsto_tf checkpoint; returns ``(model, report)`` (report is None for Keras formats).

    ``num_classes``, when given, is also checked: a checkpoint that predicts another number of classes raises
    :class:`CheckpointError` naming both numbers (``classes_of`` names their source in the message, e.g.
    ``"dataset 'lip'"``).

    * ``.keras``: a full saved model (``model`` / ``name`` not needed); a zoo name (``gsto-tf zoo`` lists them) is
      its shipped ``.keras`` file;
    * ``.weights.h5``: Keras weights into ``model`` or into ``build(name, num_classes, **build_options)``;
    * ``.pth`` / ``.npz``: an official PyTorch state dict, converted on the fly into ``model`` or
      ``build(name, num_classes)`` (``num_classes`` is read from the head when not given, and so is what
      :func:`build_options_from_state` finds, e.g. the 3x3 ASPP bottleneck of an mmseg DeepLabV3). With
      ``backbone_only=True`` the file is an ImageNet backbone checkpoint: its classifier keys are ignored and the
      head / gate weights stay initialised (listed in the report, not errors even when ``strict``).

    Weights that hold NaN or Inf raise :class:`CheckpointError` unless ``allow_nonfinite``.
    """
    path = resolve_checkpoint(path)
    model, report = _load_checkpoint(path, model, name, num_classes, strict, backbone_only, classes_of,
                                     build_options)
    check_finite(model, path, allow_nonfinite)
    return model, report


def _load_checkpoint(path, model, name, num_classes, strict, backbone_only, classes_of, build_options):
    # Importing every model family registers its custom layers, which deserialising a .keras file needs.
    available_models()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path} (neither a file nor a zoo model: "
                              f"{', '.join(zoo_names()) or 'none shipped'})")
    if not os.path.isfile(path):  # a FIFO would block the reader, a device (/dev/zero) never end
        raise CheckpointError(f"{path}: not a regular file (a checkpoint is a file; this is a folder, a device or "
                              "a pipe)")
    if path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a Keras archive (a .keras file is a zip archive; this one is damaged "
                                  "or another kind of file)")
        try:
            # compile=False: a training checkpoint stores its optimizer (TorchSGD) and losses, which loading for
            # inference needs neither to import nor to rebuild; recompile to train further.
            loaded = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # keras raises many types for a corrupt archive
            raise CheckpointError(f"{path}: cannot load Keras model ({type(exc).__name__}: {exc}).") from None
        check_num_classes(loaded, num_classes, path, classes_of)
        return loaded, None
    if path.endswith(".weights.h5"):
        if model is None:
            if name is None or num_classes is None:
                raise CheckpointError(f"{path}: a .weights.h5 file needs `model`, or `name` and `num_classes`.")
            model = build(name, num_classes, **build_options)
        try:
            model.load_weights(path)
        except Exception as exc:
            raise CheckpointError(f"{path}: weights do not fit model '{model.name}' ({exc}).") from None
        return model, None
    if path.endswith((".pth", ".pt", ".npz", ".pth.tar", ".bin")):
        state = read_state_dict(path)
        if model is None:
            if name is None:
                raise CheckpointError(f"{path}: an official checkpoint needs `model` or a model `name`.")
            in_file = None if backbone_only else _infer_num_classes(state)
            _check_class_count(in_file, num_classes, path, classes_of)
            num_classes = num_classes or in_file
            if num_classes is None:
                raise CheckpointError(f"{path}: cannot infer the number of classes; pass `num_classes`.")
            model = build(name, num_classes, **{**build_options_from_state(name, state), **build_options})
        report = load_torch_weights(model, state, strict=strict, backbone_only=backbone_only, source=path)
        return model, report
    raise CheckpointError(f"{path}: unknown checkpoint format; expected .keras, .weights.h5, .pth or .npz.")


def load_pretrained(model, source):
    """Initialise ``model`` for training from ``source`` and return a summary line. ``source``: an official ImageNet
    trunk (``.pth`` / ``.npz``: its backbone keys, :func:`load_torch_weights` with ``backbone_only``), or a model
    trained here (a ``.keras`` file or a zoo name: every weight whose path and shape match, so a head for another
    class count stays initialised)."""
    source = resolve_checkpoint(source)
    if not source.endswith(".keras"):
        return load_torch_weights(model, source, backbone_only=True).summary()
    trained, _ = load_checkpoint(source)
    theirs = {w.path: w for w in trained.weights}
    skipped = []
    for weight in model.weights:
        found = theirs.get(weight.path)
        if found is not None and tuple(found.shape) == tuple(weight.shape):
            weight.assign(keras.ops.cast(found, weight.dtype))
        else:
            skipped.append(weight.path)
    if len(skipped) == len(model.weights):
        raise CheckpointError(f"{source}: no weight of model '{trained.name}' fits model '{model.name}' (another "
                              "architecture); a pretrained .keras must be the same model")
    summary = f"{source}: loaded {len(model.weights) - len(skipped)} of {len(model.weights)} weights"
    if skipped:
        summary += f"; left initialised: {', '.join(skipped[:8])}"
    if len(skipped) > 8:
        summary += f" and {len(skipped) - 8} more"
    return summary
