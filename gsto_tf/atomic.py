"""Atomic file writes: write to a temp file in the destination folder, then rename over the destination.

A reader (or a run killed mid-write) never sees half a checkpoint, table or label file. Temp files and folders
are created private (``mkstemp`` / ``mkdtemp`` use 0600 / 0700); what is renamed into place gets the permissions
any new file would get (0666 / 0777 minus the umask), so a server running as another user can read an export.
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
# Folders that cannot be written at all: read-only file systems, missing permissions, a file where a folder belongs.
_NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_WRITABLE_TEXT = ("Read-only file system", "Permission denied")
# os.makedirs(exist_ok=True) meets a file where a folder belongs: EEXIST for the file itself, ENOTDIR below it.
_FILE_IN_PATH_ERRNOS = (errno.ENOTDIR, errno.EEXIST)


class StorageError(OSError):
    """A file could not be written: the disk (or the process's file-size limit) is full, the folder is read-only,
    not writable by this user or not a folder, the target is a folder, or a name is too long."""

    def __str__(self):
        return self.strerror


@contextlib.contextmanager
def storage_errors(target):
    """Turn a failure to write ``target`` (full disk, read-only or forbidden folder, a file in the path) into one
    :class:`StorageError` sentence; other errors pass.

    Writers here replace files atomically, so what was written before the failure is intact.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # OSError from Python writers, tf.errors.OpError from TensorFlow's
        text = str(exc)
        code = getattr(exc, "errno", None)
        if code in _NO_SPACE_ERRNOS or any(t in text for t in _NO_SPACE_TEXT):
            reason = _reason(exc, text, _NO_SPACE_TEXT)
            raise StorageError(errno.ENOSPC, f"cannot write {target}: {reason}. Files written before are intact; "
                               "free space (or raise the file size limit) and rerun the same command") from None
        if code == errno.EISDIR:
            raise StorageError(errno.EISDIR, f"cannot write {target}: it is a folder; give a file path") from None
        if code == errno.ENAMETOOLONG or "File name too long" in text:
            raise StorageError(errno.ENAMETOOLONG, f"cannot write {target}: a file or folder name is longer than the "
                               f"file system allows ({_name_max(target)} bytes); choose a shorter one") from None
        if code in _FILE_IN_PATH_ERRNOS or "Not a directory" in text:
            raise StorageError(errno.ENOTDIR, f"cannot write {target}: a part of the path is a file, not a "
                               "folder") from None
        if code in _NOT_WRITABLE_ERRNOS or any(t in text for t in _NOT_WRITABLE_TEXT):
            reason = _reason(exc, text, _NOT_WRITABLE_TEXT)
            raise StorageError(code or errno.EACCES, f"cannot write {target}: {reason}; choose a folder this user "
                               "can write") from None
        raise


def _name_max(target):
    """The longest file name the file system of ``target``'s nearest existing folder allows."""
    folder = os.path.abspath(str(target))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _reason(exc, text, known):
    code = getattr(exc, "errno", None)
    return next((t for t in known if t in text), os.strerror(code) if code else text.splitlines()[0])


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


def _umask():
    """The process umask, read from /proc where possible (setting it to read it back is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_permissions(path, recursive=False):
    """Give ``path`` (and with ``recursive`` everything below it) the mode a newly created file (0666) or folder
    (0777) gets under the umask. TensorFlow, for one, creates the folders of a SavedModel 0755 whatever the umask."""
    mask = _umask()
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)
    if recursive:
        for folder, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def make_temp_dir(parent, prefix):
    """A new folder in ``parent`` for an atomic folder write, with the usual (umask) permissions."""
    path = tempfile.mkdtemp(dir=parent, prefix=prefix)
    default_permissions(path)
    return path


def write_atomically(path, write):
    """Call ``write(tmp_path)`` and rename ``tmp_path`` to ``path``. The temp file keeps the full extension of
    ``path`` (``.keras``, ``.weights.h5``, ``.csv``), which writers such as Keras' ``save`` check."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = base[base.index("."):] if "." in base else ""
    with storage_errors(path):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=suffix)
        os.close(fd)
        try:
            write(tmp)
            default_permissions(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def save_model_atomically(model, path, weights_beside=False):
    """``model.save(path)`` (a ``.keras`` file) through a temp file in the same folder + rename, so a reader never
    sees half a file. ``weights_beside``: also the weights alone, as ``model.save_weights`` would write them, to
    the same path with ``.weights.h5``. Returns the written paths: ``(path,)`` or ``(path, weights_path)``."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"save_model_atomically: expected a path ending in .keras, got {path!r}")
    write_atomically(path, model.save)
    if not weights_beside:
        return (path,)
    from gsto_tf.keras_internals import copy_archive_weights  # TensorFlow only for the writers that need it

    # Copied out of the .keras file rather than written by model.save_weights: when the HDF5 library's own writes
    # hit a full disk, freeing the half-written file's objects crashes the interpreter (SIGSEGV).
    weights_path = path[: -len(".keras")] + ".weights.h5"
    write_atomically(weights_path, lambda tmp: copy_archive_weights(path, tmp))
    return path, weights_path

