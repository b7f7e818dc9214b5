"""Atomic file writes: write to a temp file in the destination folder, then rename over the destination.

A reader (or a run killed mid-write) never sees half a checkpoint, table or label file.
"""

import os
import tempfile


def write_atomically(path, write):
    """Call ``write(tmp_path)`` and rename ``tmp_path`` to ``path``. The temp file keeps the full extension of
    ``path`` (``.keras``, ``.weights.h5``, ``.csv``), which writers such as Keras' ``save`` check."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    suffix = base[base.index("."):] if "." in base else ""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_png(path, array):
    """Write a uint8 array (``[H, W]`` label map or ``[H, W, 3]`` RGB) as a PNG, atomically."""
    from PIL import Image

    return write_atomically(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
