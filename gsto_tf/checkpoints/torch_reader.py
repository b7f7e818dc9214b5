"""Reading PyTorch checkpoints (``.pth`` zip archives, ``.npz``) into numpy arrays: no torch, no Keras.

:func:`read_state_dict` reads ``.pth`` files (PyTorch's zip format) **without torch and without executing pickled
code**: a restricted unpickler accepts only the handful of names a plain tensor state dict needs
(``torch._utils._rebuild_tensor_v2``, ``torch.*Storage``, ``collections.OrderedDict``) and rebuilds tensors as numpy
arrays from the archive's raw storages, each checked against its storage before a byte is read. Anything else (e.g.
a ``REDUCE`` to ``os.system``) is refused. Sizes are bounded before anything is allocated: total decompressed size,
compression ratio per entry, pickle depth, copies of non-contiguous views. ``.npz`` files with the same keys work
too.
"""

import collections
import dataclasses
import io
import math
import os
import pickle
import zipfile
import zlib

import numpy as np

from gsto_tf.user_input import shorten

# Keys in released checkpoints that are not part of the network.
_DROPPED_PREFIXES = ("loss.",)

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


def clean_state_dict(state_dict):
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
    return clean_state_dict(state)
