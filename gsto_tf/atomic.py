"""Atomic file writes: write to a temp file in the destination folder, then rename over the destination.

A reader (or a run killed mid-write) never sees half a checkpoint, table or label file.
"""

import contextlib
import errno
import os
import tempfile

TEMP_PREFIX = ".tmp-"
# What full-disk / file-size-limit failures look like: OSError errnos, and the text of TensorFlow's errors (its file
# writers raise tf.errors.* with the OS message inside).
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_NO_SPACE_TEXT = ("No space left on device", "File too large", "Disk quota exceeded")


class StorageError(OSError):
    """A file could not be written because the disk (or the process's file-size limit) is full."""

    def __str__(self):
        return self.strerror


@contextlib.contextmanager
def storage_errors(target):
    """Turn a full-disk failure while writing ``target`` into one :class:`StorageError` sentence; other errors pass.

    Writers here replace files atomically, so what was written before the failure is intact.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # OSError from Python writers, tf.errors.OpError from TensorFlow's
        text = str(exc)
        if getattr(exc, "errno", None) in _NO_SPACE_ERRNOS or any(t in text for t in _NO_SPACE_TEXT):
            reason = next((t for t in _NO_SPACE_TEXT if t in text), os.strerror(exc.errno) if getattr(
                exc, "errno", None) else text.splitlines()[0])
            raise StorageError(
                errno.ENOSPC,
                f"cannot write {target}: {reason}. Files written before are intact; free space (or raise the file "
                "size limit) and rerun the same command",
            ) from None
        raise


def remove_temp_files(directory):
    """Delete the temp files of atomic writes that a killed process left in ``directory`` (not recursive)."""
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(TEMP_PREFIX) and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def write_atomically(path, write):
    """Call ``write(tmp_path)`` and rename ``tmp_path`` to ``path``. The temp file keeps the full extension of
    ``path`` (``.keras``, ``.weights.h5``, ``.csv``), which writers such as Keras' ``save`` check."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    suffix = base[base.index("."):] if "." in base else ""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=suffix)
    os.close(fd)
    try:
        with storage_errors(path):
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
