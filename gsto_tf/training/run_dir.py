"""The run directory is a contract: one configuration per folder.

``train(config, run_dir)`` resumes an interrupted run when ``run_dir`` already holds one. Resuming with another
configuration (more steps, another batch, model, dataset or learning rate) would continue at the wrong step with an
already decayed learning rate and overwrite ``config.yaml``, so :func:`claim_run_dir` refuses it, naming every key
that differs, before anything is written.

A live run holds an OS lock on ``run_dir/.lock`` (``fcntl.flock``): a second run into the same folder is refused
with the holder's pid and host instead of deleting the live run's temp files. The OS drops the lock when the
holder exits or is killed, so a stale ``.lock`` file never blocks a rerun. The workers of a multi-worker run
(``TF_CONFIG``) share a folder, each with its own lock (``.lock-worker1``). (On a system without ``fcntl`` the
folder is not locked.)
"""

import json
import os
import socket

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder is not locked
    fcntl = None

import yaml

from gsto_tf.atomic import remove_temp_files, storage_errors
from gsto_tf.user_input import not_utf8

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
# Keys that may change between the runs of one folder: where the same data lives, and how it is evaluated.
FREE_KEYS = ("data.data_dir", "eval.")
# Keys that config.yaml holds resolved (the card's or the default augmentation) where earlier versions saved null.
RESOLVED_KEYS = ("data.crop_size", "data.scale_range", "data.base_size")
# Sub-folders whose files are written atomically (a killed write leaves a temp file there).
_ATOMIC_DIRS = ("", "checkpoints", "eval")


class RunDirError(ValueError):
    """``--run-dir`` cannot be used for this run (another configuration, not a run folder, not a folder)."""


def _flatten(mapping, prefix=""):
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_saved(config):
    """The config as it reads back from ``config.yaml`` (tuples become lists, and so on)."""
    return yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_differences(saved, config):
    """``[(key, saved value, new value)]`` for every key of the training configuration that differs."""
    old, new = _flatten(saved or {}), _flatten(_as_saved(config))
    missing = object()
    defaults = _flatten(_as_saved(type(config)()))
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(FREE_KEYS):
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        # A run saved by an earlier version: a key it did not have yet, at its default, and an augmentation value
        # saved as null (then: "the card's"), now written out resolved, are the same configuration.
        if (a is missing and b == defaults.get(key, missing)) or (a is None and key in RESOLVED_KEYS):
            continue
        if a != b:
            diffs.append((key, "(absent)" if a is missing else a, "(absent)" if b is missing else b))
    return diffs


def _lock_name():
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    except (ValueError, AttributeError):
        task = {}
    if not task or task.get("type") in (None, "chief") or (task.get("type") == "worker" and not task.get("index")):
        return LOCK_FILE
    return f"{LOCK_FILE}-{task.get('type')}{task.get('index', 0)}"


class RunDirLock:
    """The OS lock of a run folder, held from :func:`claim_run_dir` until :meth:`release` (or the process's end)."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, _lock_name())
        self._fd = None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"--run-dir {run_dir} is in use by a running training ({holder}); wait for it to end "
                              "or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode())
        self._fd = fd

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self):  # a lock nobody keeps is released with it
        self.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim_run_dir(run_dir, config):
    """Make ``run_dir`` this run's folder: lock it, create it and write ``config.yaml``, or check that it holds a
    run of the same configuration. Removes the temp files of atomic writes that a killed run left behind. Returns
    the :class:`RunDirLock`; release it when the run ends.

    Raises :class:`RunDirError` (nothing written) when another live run holds the folder, the folder holds another
    configuration, is not empty but holds no run, or cannot be a folder; :class:`~gsto_tf.atomic.StorageError`
    when it cannot be written (read-only, another user's, a full disk).
    """
    run_dir = os.fspath(run_dir)
    if not_utf8(run_dir):
        raise RunDirError(f"--run-dir {run_dir!r}: the path is not UTF-8, which TensorFlow's checkpoint writers need; "
                          "choose a UTF-8 path")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"--run-dir {run_dir}: exists and is a file, not a folder")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"--run-dir {run_dir}: cannot create it, a part of the path is a file") from None
    except OSError:
        with storage_errors(f"--run-dir {run_dir}"):
            raise
    _refuse_a_folder_that_is_no_run(run_dir)  # before the lock file is put into somebody's folder
    with storage_errors(f"--run-dir {run_dir}"):
        lock = RunDirLock(run_dir)
    try:
        with storage_errors(f"--run-dir {run_dir}"):
            _check_and_write_config(run_dir, config)
    except BaseException:
        lock.release()
        raise
    return lock


def _refuse_a_folder_that_is_no_run(run_dir):
    if os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        return
    if any(not name.startswith(LOCK_FILE) for name in os.listdir(run_dir)):
        raise RunDirError(f"--run-dir {run_dir}: the folder is not empty and holds no {CONFIG_FILE}, so it is not "
                          "a gsto_tf run; choose a new or empty folder")


def _check_and_write_config(run_dir, config):
    for sub in _ATOMIC_DIRS:
        remove_temp_files(os.path.join(run_dir, sub))
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        _refuse_a_folder_that_is_no_run(run_dir)  # again, under the lock
        config.save(path)
        return
    try:
        with open(path) as f:
            saved = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise RunDirError(f"{path}: not a readable YAML config ({exc.__class__.__name__})") from None
    diffs = config_differences(saved, config)
    if diffs:
        listed = "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in diffs)
        raise RunDirError(f"--run-dir {run_dir} holds a run with another configuration ({listed}). Rerun with the "
                          f"configuration in {path} to resume it, or choose a new --run-dir")
