"""Writing PyTorch zip checkpoints without torch, byte for byte in the structure ``torch.save`` uses.

``archive/data.pkl`` is a protocol-2 pickle of ``{key: _rebuild_tensor_v2((('storage', torch.FloatStorage, name,
'cpu', numel)), offset, size, stride, False, OrderedDict())}`` with the storages as persistent ids, and
``archive/data/<name>`` holds each storage's raw little-endian bytes. The pickle is written opcode by opcode, so
any argument (a wrong type, an out-of-range stride, an unknown dtype) can be put into a crafted file.
"""

import io
import pickle
import zipfile

import numpy as np


class Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """``fn(*args)`` as a pickle REDUCE."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args


class Storage:
    """A persistent id ``('storage', torch.<type>, name, 'cpu', numel)``; ``numel`` defaults to the data's."""

    def __init__(self, name, type_name="FloatStorage", numel=None, pid=None):
        self.name, self.type_name, self.numel, self.pid = name, type_name, numel, pid


def tensor(storage, offset, size, stride):
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride, False,
                Call(Global("collections", "OrderedDict")))


def _plain(value):
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.fast = True  # no memo: fragments can be concatenated
    pickler.dump(value)
    return buf.getvalue()[2:-1]  # without PROTO and STOP


def encode(value, numels):
    if isinstance(value, Global):
        return b"c" + value.module.encode() + b"\n" + value.name.encode() + b"\n"
    if isinstance(value, Call):
        return encode(value.fn, numels) + encode(tuple(value.args), numels) + b"R"
    if isinstance(value, Storage):
        pid = value.pid or ("storage", Global("torch", value.type_name), value.name, "cpu",
                            numels.get(value.name) if value.numel is None else value.numel)
        return encode(pid, numels) + b"Q"
    if isinstance(value, tuple):
        return b"(" + b"".join(encode(v, numels) for v in value) + b"t"
    if isinstance(value, dict):
        return b"}(" + b"".join(encode(k, numels) + encode(v, numels) for k, v in value.items()) + b"u"
    return _plain(value)


def write_pth(path, state, storages, prefix="archive", compression=zipfile.ZIP_STORED):
    """``state``: {key: tensor(...) or any value}; ``storages``: {name: numpy array (its raw bytes are written)}."""
    numels = {name: int(np.asarray(a).size) for name, a in storages.items()}
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr(f"{prefix}/data.pkl", b"\x80\x02" + encode(state, numels) + b".")
        z.writestr(f"{prefix}/byteorder", "little")
        for name, array in storages.items():
            z.writestr(f"{prefix}/data/{name}", np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                       .tobytes())
        z.writestr(f"{prefix}/version", "3\n")
    return path


def write_state_dict(path, arrays, prefix="archive"):
    """A well-formed file of contiguous float32 tensors, one storage each (what torch.save writes)."""
    state, storages = {}, {}
    for i, (key, array) in enumerate(arrays.items()):
        array = np.asarray(array, np.float32)
        strides = tuple(s // 4 for s in np.ascontiguousarray(array).strides)
        state[key] = tensor(Storage(str(i)), 0, tuple(array.shape), strides)
        storages[str(i)] = array
    return write_pth(path, state, storages, prefix)
