"""Reading official PyTorch checkpoints and loading any checkpoint into gsto_tf models.

* :func:`read_state_dict` reads ``.pth`` files (PyTorch's zip format) **without torch and without executing
  pickled code**: a restricted unpickler accepts only the handful of names a plain tensor state dict needs
  (``torch._utils._rebuild_tensor_v2``, ``torch.*Storage``, ``collections.OrderedDict``) and rebuilds tensors as
  numpy arrays from the archive's raw storages, each checked against its storage before a byte is read. Anything
  else (e.g. a ``REDUCE`` to ``os.system``) is refused.
  ``.npz`` files with the same keys work too.
* :func:`load_torch_weights` maps a state dict onto a model by layer names: every weight-bearing layer of a gsto_tf
  model is named like its PyTorch module path (see :mod:`gsto_tf.models.blocks`), nested layers joined with '.'.
* :func:`load_checkpoint` loads ``.keras`` / ``.weights.h5`` / ``.pth`` / ``.npz``.
"""

import collections
import dataclasses
import io
import math
import os
import pickle
import zipfile
import zlib

import keras
import numpy as np

from gsto_tf.user_input import shorten

# Keys in released checkpoints that are not part of the network.
_DROPPED_PREFIXES = ("loss.",)
# Official GSTO checkpoints hold `att1.*`, which the official forward pass never uses
# (official ``models/gsto_hrnet.py``).
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
_MAX_NDIM = 32  # numpy's limit is 64; no network weight comes near either
_MAX_DIM = 1 << 48  # per size / stride entry; the storage bounds the real extent
# A storage entry compressed more than this (and larger than 1 MiB) is a zip bomb: torch.save stores entries
# uncompressed, and float weights barely compress.
_MAX_COMPRESSION_RATIO = 20
_COMPRESSED_SIZE_FLOOR = 1 << 20
# The pickle of a state dict is a dict of tensors: a few levels deep. A deeper one is crafted (Python's repr and
# garbage collector recurse on it).
_MAX_PICKLE_DEPTH = 64


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


def nonfinite_weights(model):
    """Paths of ``model``'s weights that hold a NaN or an infinity (a diverged run, a damaged file)."""
    return [w.path for w in model.weights
            if w.dtype.startswith(("float", "bfloat")) and not np.all(np.isfinite(keras.ops.convert_to_numpy(w)))]


def check_finite(model, source, allow_nonfinite=False):
    """Raise :class:`CheckpointError` when ``model`` has NaN / Inf weights, naming ``source`` and the first of
    them; a model with such weights predicts one class everywhere and exports without a word otherwise."""
    if allow_nonfinite:
        return
    bad = nonfinite_weights(model)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: weights hold NaN or Inf ({bad[0]}{more}; a training run that diverged?); "
                              "pass --allow-nonfinite (allow_nonfinite=True) to use them anyway")


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str  # e.g. "FloatStorage"; a storage type without a numpy dtype is refused when a tensor uses it


class _Lazy:
    """What the unpickler returns for a storage or a tensor: the pickled arguments, unchecked and unread.

    Nothing is read or allocated while unpickling; :class:`_TensorBuilder` checks each tensor against its storage
    afterwards, when the state-dict key is known, so every error names the key.
    """

    def __init__(self, kind, args):
        self.kind = kind  # "storage" (a persistent id), "tensor" (_rebuild_tensor_v2), "parameter"
        self.args = args


def _rebuild_tensor(*args):
    return _Lazy("tensor", args)


def _rebuild_parameter(*args):
    return _Lazy("parameter", args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for tensor state dicts only; refuses every global it does not know."""

    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage") and name.isidentifier():
            return _StorageType(name)
        raise CheckpointError(
            f"{self._path}: refusing to unpickle '{module}.{name}': only plain tensor state dicts are read "
            "(no code is executed). Re-save the checkpoint as a state dict, or convert it to .npz."
        )

    def persistent_load(self, pid):
        return _Lazy("storage", pid)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class _TensorBuilder:
    """Checks lazily unpickled tensors against the archive's storages, then builds numpy arrays.

    Per tensor, before any byte is read: the storage reference is well formed and of a known dtype, its archive
    entry holds exactly the declared number of elements (a short entry is refused), the offset is an int and the
    size / stride are equally long tuples of non-negative ints, and the last element the tensor reaches
    (``offset + sum((size - 1) * stride)``) lies inside the storage. A tensor never holds more elements than its
    storage (a broadcast view is not a state-dict weight), so the arrays built from a file never exceed the bytes
    stored in it, plus one copy of each non-contiguous tensor. Contiguous tensors are views of their storage
    (tensors that share a storage share memory, as in torch).
    """

    def __init__(self, archive, prefix, path):
        self.archive = archive
        self.prefix = prefix
        self.path = path
        self._storages = {}  # archive key -> 1-D numpy array
        self._views = {}  # (storage entry, offset, size, stride) -> the array built for it: built once
        self._copied_bytes = 0  # bytes of non-contiguous tensors copied out of their storages

    def _fail(self, key, what):
        return CheckpointError(f"{self.path}: tensor '{key}': {what}")

    def _storage(self, key, ref):
        pid = ref.args
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self._fail(key, f"unsupported storage reference {shorten(pid)} (expected ('storage', type, key, "
                                  "location, number of elements) as torch.save writes)")
        _, storage_type, name, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise self._fail(key, f"unsupported storage type {shorten(storage_type)}")
        if storage_type.name not in _STORAGE_DTYPES:
            raise self._fail(key, f"dtype of torch.{storage_type.name} is not supported (supported: "
                                  f"{', '.join(sorted(_STORAGE_DTYPES))}); save it as float32")
        if not isinstance(name, str) or not _is_int(numel) or numel < 0:
            raise self._fail(key, f"malformed storage reference {shorten(pid)} (expected a string key and a "
                                  "non-negative element count)")
        dtype = np.dtype(_STORAGE_DTYPES[storage_type.name]).newbyteorder("<")
        entry = f"{self.prefix}/data/{name}" if self.prefix else f"data/{name}"
        cached = self._storages.get(entry)
        if cached is not None:
            if cached.dtype != dtype or cached.size != numel:
                raise self._fail(key, f"storage data/{name} is referenced with two different types or sizes")
            return cached
        try:
            info = self.archive.getinfo(entry)
        except KeyError:
            raise self._fail(key, f"storage entry {entry} is missing from the archive (truncated or corrupt "
                                  "file)") from None
        if info.file_size != numel * dtype.itemsize:
            raise self._fail(key, f"storage entry {entry} holds {info.file_size} bytes, but the checkpoint "
                                  f"declares {numel} x {dtype.itemsize}-byte elements = {numel * dtype.itemsize} "
                                  "bytes (truncated or corrupt file)")
        raw = bytearray(self.archive.read(entry))  # writable, so the arrays built on it are too
        storage = np.frombuffer(raw, dtype=dtype)
        self._storages[entry] = storage
        return storage

    def build(self, key, value):
        if isinstance(value, _Lazy) and value.kind == "parameter":
            if not value.args:
                raise self._fail(key, "torch._utils._rebuild_parameter without data")
            value = value.args[0]
        if not (isinstance(value, _Lazy) and value.kind == "tensor"):
            raise self._fail(key, f"expected a tensor, got {shorten(value)} (a state dict maps names to tensors)")
        args = value.args
        if len(args) < 4:
            raise self._fail(key, f"_rebuild_tensor_v2 with {len(args)} arguments, expected (storage, offset, "
                                  "size, stride, ...)")
        ref, offset, size, stride = args[:4]
        if not isinstance(ref, _Lazy) or ref.kind != "storage":
            raise self._fail(key, f"the tensor's storage is {shorten(ref)}, not a storage of the archive")
        if not _is_int(offset) or offset < 0:
            raise self._fail(key, f"storage offset {shorten(offset)}, expected a non-negative int")
        for what, dims in (("size", size), ("stride", stride)):
            if not isinstance(dims, (tuple, list)) or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in dims):
                raise self._fail(key, f"{what} {shorten(dims)}, expected a tuple of non-negative ints "
                                      f"(at most {_MAX_DIM})")
        if len(size) != len(stride) or len(size) > _MAX_NDIM:
            raise self._fail(key, f"size {tuple(size)} and stride {tuple(stride)}: expected equally long tuples "
                                  f"of at most {_MAX_NDIM} dimensions")
        storage = self._storage(key, ref)
        view_key = (ref.args[2], offset, tuple(size), tuple(stride))
        if view_key in self._views:  # the same tensor under several keys: one array, as torch shares it
            return self._views[view_key]
        array = self._view(key, storage, offset, size, stride)
        self._views[view_key] = array
        return array

    def _view(self, key, storage, offset, size, stride):
        numel = math.prod(size)
        if numel == 0:
            if offset > storage.size:
                raise self._fail(key, f"storage offset {offset} is past the end of its storage of {storage.size} "
                                      "elements")
            return np.zeros(tuple(size), storage.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise self._fail(key, f"size {tuple(size)}, stride {tuple(stride)} and offset {offset} reach element "
                                  f"{last}, but its storage holds {storage.size} elements (out of range)")
        if numel > storage.size:
            raise self._fail(key, f"size {tuple(size)} has {numel} elements, more than its storage's "
                                  f"{storage.size} (an overlapping or broadcast view; save a .clone())")
        itemsize = storage.itemsize
        # The stride of a dimension of size 1 is never used; 0 keeps numpy's byte strides small.
        array = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                                strides=tuple(0 if n == 1 else s * itemsize
                                                              for n, s in zip(size, stride)))
        if array.flags.c_contiguous:
            return array
        # Copies are bounded by what the file stores: n distinct strided views of one storage would otherwise
        # cost n times its size.
        stored = sum(a.nbytes for a in self._storages.values())
        self._copied_bytes += array.nbytes
        if self._copied_bytes > max(stored, _COMPRESSED_SIZE_FLOOR):
            raise self._fail(key, f"non-contiguous tensors would take {self._copied_bytes} bytes, more than the "
                                  f"{stored} bytes the file stores (overlapping views; save .clone()s)")
        return array.copy()


def _too_deep(obj, limit=_MAX_PICKLE_DEPTH):
    """Whether ``obj`` (an unpickled state dict) nests containers more than ``limit`` deep; iterative."""
    stack, seen = [(obj, 1)], set()
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, _Lazy):
            children = (value.args,)
        elif isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = value
        else:
            continue
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_total_size(archive, path):
    """Refuse, before reading an entry, an archive whose entries expand to more than the ratio allows in total:
    many entries just under the per-entry check would otherwise add up (1 MB of zip to 1 GB of memory)."""
    for info in archive.infolist():
        _check_compression(info, path)
    size = os.path.getsize(path)
    total = sum(info.file_size for info in archive.infolist())
    if total > max(_MAX_COMPRESSION_RATIO * size, _COMPRESSED_SIZE_FLOOR):
        raise CheckpointError(f"{path}: the archive's entries expand from {size} to {total} bytes in all (more than "
                              f"{_MAX_COMPRESSION_RATIO}:1; torch.save stores entries uncompressed): refused")


def _check_compression(info, path):
    if (info.compress_type != zipfile.ZIP_STORED and info.file_size > _COMPRESSED_SIZE_FLOOR
            and info.file_size > _MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
        raise CheckpointError(
            f"{path}: archive entry {info.filename} expands from {info.compress_size} to {info.file_size} bytes "
            f"(more than {_MAX_COMPRESSION_RATIO}:1; torch.save stores entries uncompressed): refused")


def _read_pth(path):
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":  # a zip's first entry, but no readable directory at the end
            raise CheckpointError(f"{path}: truncated or corrupt zip archive (the zip directory at its end is "
                                  "missing); download or copy it again.")
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (torch.save since 1.6 writes zip files). Legacy or "
            "non-PyTorch files are not read; re-save it with torch.save(state_dict) or convert it to .npz."
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}.")
        prefix = pickles[0].rsplit("/", 1)[0] if "/" in pickles[0] else ""
        byteorder = f"{prefix}/byteorder" if prefix else "byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported.")
        _check_total_size(archive, path)  # every entry, the pickle and each storage, before any is read
        try:
            obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path).load()
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(f"{path}: data.pkl nests deeper than Python can read; a state dict is a flat "
                                  "dict of tensors: refused") from None
        except Exception as exc:  # a corrupt pickle raises many types (EOFError, TypeError, KeyError, ...)
            raise CheckpointError(f"{path}: corrupt PyTorch checkpoint: data.pkl does not unpickle "
                                  f"({type(exc).__name__}: {exc}).") from None
        if _too_deep(obj):
            raise CheckpointError(f"{path}: data.pkl nests containers more than {_MAX_PICKLE_DEPTH} deep; a state "
                                  "dict is a flat dict of tensors: refused")
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}.")
        builder = _TensorBuilder(archive, prefix, path)
        state = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{path}: state-dict key {shorten(key)} is not a string.")
            state[key] = builder.build(key, value)
    return state


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
    A ``.pth`` is read without torch and without running pickled code, and every tensor is checked against its
    storage before a byte of it is read (see :class:`_TensorBuilder`): a malformed, truncated or hostile file
    raises :class:`CheckpointError` naming the file and the tensor's key.
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
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:  # an entry fails its CRC / inflate
            raise CheckpointError(f"{path}: truncated or corrupt zip archive ({exc}).") from None
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
    children = layer.layers if isinstance(layer, keras.Model) else getattr(layer, "_layers", [])
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
    from gsto_tf.models.factory import inference_model

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

    * ``.keras``: a full saved model (``model`` / ``name`` not needed);
    * ``.weights.h5``: Keras weights into ``model`` or into ``build(name, num_classes, **build_options)``;
    * ``.pth`` / ``.npz``: an official PyTorch state dict, converted on the fly into ``model`` or
      ``build(name, num_classes)`` (``num_classes`` is read from the head when not given, and so is what
      :func:`build_options_from_state` finds, e.g. the 3x3 ASPP bottleneck of an mmseg DeepLabV3). With
      ``backbone_only=True`` the file is an ImageNet backbone checkpoint: its classifier keys are ignored and the
      head / gate weights stay initialised (listed in the report, not errors even when ``strict``).

    Weights that hold NaN or Inf raise :class:`CheckpointError` unless ``allow_nonfinite``.
    """
    model, report = _load_checkpoint(path, model, name, num_classes, strict, backbone_only, classes_of,
                                     build_options)
    check_finite(model, os.fspath(path), allow_nonfinite)
    return model, report


def _load_checkpoint(path, model, name, num_classes, strict, backbone_only, classes_of, build_options):
    from gsto_tf.models.factory import available_models, build

    # Importing every model family registers its custom layers, which deserialising a .keras file needs.
    available_models()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
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
