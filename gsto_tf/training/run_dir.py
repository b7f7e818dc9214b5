"""The run directory is a contract: one configuration per folder.

``train(config, run_dir)`` resumes an interrupted run when ``run_dir`` already holds one. Resuming with another
configuration (more steps, another batch, model, dataset or learning rate) would continue at the wrong step with an
already decayed learning rate and overwrite ``config.yaml``, so :func:`claim_run_dir` refuses it, naming every key
that differs, before anything is written.
"""

import os

import yaml

from gsto_tf.atomic import remove_temp_files

CONFIG_FILE = "config.yaml"
# Keys that may change between the runs of one folder: where the same data lives, and how it is evaluated.
FREE_KEYS = ("data.data_dir", "eval.")
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
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(FREE_KEYS):
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            diffs.append((key, "(absent)" if a is missing else a, "(absent)" if b is missing else b))
    return diffs


def claim_run_dir(run_dir, config):
    """Make ``run_dir`` this run's folder: create it and write ``config.yaml``, or check that it holds a run of the
    same configuration. Removes the temp files of atomic writes that a killed run left behind.

    Raises :class:`RunDirError` (nothing written) when the folder holds another configuration, is not empty but
    holds no run, or cannot be a folder.
    """
    run_dir = os.fspath(run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"--run-dir {run_dir}: exists and is a file, not a folder")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"--run-dir {run_dir}: cannot create it, a part of the path is a file") from None
    for sub in _ATOMIC_DIRS:
        remove_temp_files(os.path.join(run_dir, sub))
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        if os.listdir(run_dir):
            raise RunDirError(f"--run-dir {run_dir}: the folder is not empty and holds no {CONFIG_FILE}, so it is not "
                              "a gsto_tf run; choose a new or empty folder")
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
