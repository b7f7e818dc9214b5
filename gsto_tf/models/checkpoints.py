"""Reading official PyTorch checkpoints and loading any checkpoint into gsto_tf models.

* :func:`read_state_dict` reads ``.pth`` files (PyTorch's zip format) **without torch and without executing
  pickled code**: a restricted unpickler accepts only the handful of names a plain tensor state dict needs
  (``torch._utils._rebuild_tensor_v2``, ``torch.*Storage``, ``collections.OrderedDict``) and rebuilds tensors as
  numpy arrays from the archive's raw storages. Anything else (e.g. a ``REDUCE`` to ``os.system``) is refused.
  ``.npz`` files with the same keys work too.
* :func:`load_torch_weights` maps a state dict onto a model by layer names: every weight-bearing layer of a gsto_tf
  model is named like its PyTorch module path (see :mod:`gsto_tf.models.blocks`), nested layers joined with '.'.
* :func:`load_checkpoint` loads ``.keras`` / ``.weights.h5`` / ``.pth`` / ``.npz``.
"""

import collections
import dataclasses
import os
import pickle
import zipfile

import keras
import numpy as np

# Keys in released checkpoints that are not part of the network.
_DROPPED_PREFIXES = ("loss.",)
# Official GSTO checkpoints hold `att1.*`, which the official forward pass never uses (SPEC §2).
_UNUSED_BY_DESIGN = ("att1.",)
# Layers that an ImageNet backbone checkpoint cannot provide: heads and GSTO's gates.
_HEAD_MARKERS = ("last_layer", "att2.", "att3.", ".att_layers.", "decode_head.", "auxiliary_head.")

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: type


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    itemsize = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    ).copy()


def _rebuild_parameter(data, *_unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for tensor state dicts only; refuses every global it does not know."""

    def __init__(self, file, archive, prefix, path):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._path = path

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(
            f"{self._path}: refusing to unpickle '{module}.{name}': only plain tensor state dicts are read "
            "(no code is executed). Re-save the checkpoint as a state dict, or convert it to .npz."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r} in checkpoint.")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._path}: unsupported storage type {storage_type!r}.")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))


def _read_pth(path):
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (torch.save since 1.6 writes zip files). Legacy or "
            "non-PyTorch files are not read; re-save it with torch.save(state_dict) or convert it to .npz."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}.")
        prefix = pickles[0].rsplit("/", 1)[0] if "/" in pickles[0] else ""
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported.")
        with archive.open(pickles[0]) as f:
            obj = _RestrictedUnpickler(f, archive, prefix, path).load()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict).")
    return dict(obj)


def _clean(state_dict):
    """Strip the `model.` wrapper prefix and drop non-network entries (loss weights, BN batch counters)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("model."):
            key = key[len("model."):]
        if key.startswith(_DROPPED_PREFIXES) or key.endswith("num_batches_tracked"):
            continue
        out[key] = np.asarray(value)
    return out


def read_state_dict(path):
    """Read an official checkpoint (``.pth`` zip or ``.npz``) into ``{key: float numpy array}``.

    The ``model.`` prefix of released checkpoints is stripped; ``loss.*`` and ``num_batches_tracked`` are dropped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{path}: not a readable .npz file of arrays ({exc}).") from None
    elif path.endswith((".pth", ".pt", ".pth.tar", ".bin")):
        try:
            state = _read_pth(path)
        except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{path}: corrupt PyTorch checkpoint ({exc}).") from None
    else:
        raise CheckpointError(f"{path}: unknown checkpoint extension; expected .pth or .npz.")
    return _clean(state)


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


def _weight_layers(layer, prefix=""):
    """Yield (torch module path, leaf layer) for every weight-bearing leaf layer."""
    children = layer.layers if isinstance(layer, keras.Model) else getattr(layer, "_layers", [])
    path = f"{prefix}.{layer.name}" if prefix else layer.name
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.BatchNormalization)):
        yield path, layer
        return
    for child in children:
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
        state = _clean(state_dict_or_path)
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
        value = np.asarray(state[key], np.float32)
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


def _torch_shape(keras_shape, ndim):
    """The PyTorch-layout shape a checkpoint tensor must have for a Keras variable (conv: [O, I, kh, kw])."""
    shape = tuple(int(d) for d in keras_shape)
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _infer_num_classes(state):
    for key in ("last_layer.3.bias", "decode_head.conv_seg.bias", "classifier.bias"):
        if key in state:
            return int(state[key].shape[0])
    return None


def load_checkpoint(path, model=None, name=None, num_classes=None, strict=True, backbone_only=False,
                    **build_options):
    """Load any gsto_tf checkpoint; returns ``(model, report)`` (report is None for Keras formats).

    * ``.keras``: a full saved model (``model`` / ``name`` not needed);
    * ``.weights.h5``: Keras weights into ``model`` or into ``build(name, num_classes, **build_options)``;
    * ``.pth`` / ``.npz``: an official PyTorch state dict, converted on the fly into ``model`` or
      ``build(name, num_classes)`` (``num_classes`` is read from the head when not given). With
      ``backbone_only=True`` the file is an ImageNet backbone checkpoint: its classifier keys are ignored and the
      head / gate weights stay initialised (listed in the report, not errors even when ``strict``).
    """
    from gsto_tf.models.factory import available_models, build

    # Importing every model family registers its custom layers, which deserialising a .keras file needs.
    available_models()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.endswith(".keras"):
        try:
            # compile=False: a training checkpoint stores its optimizer (TorchSGD) and losses, which loading for
            # inference needs neither to import nor to rebuild; recompile to train further.
            return keras.saving.load_model(path, compile=False), None
        except Exception as exc:  # keras raises many types for a corrupt archive
            raise CheckpointError(f"{path}: cannot load Keras model ({type(exc).__name__}: {exc}).") from None
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
            num_classes = num_classes or (None if backbone_only else _infer_num_classes(state))
            if num_classes is None:
                raise CheckpointError(f"{path}: cannot infer the number of classes; pass `num_classes`.")
            model = build(name, num_classes, **build_options)
        report = load_torch_weights(model, state, strict=strict, backbone_only=backbone_only, source=path)
        return model, report
    raise CheckpointError(f"{path}: unknown checkpoint format; expected .keras, .weights.h5, .pth or .npz.")
