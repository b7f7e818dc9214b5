"""Every command family ends an unwritable destination in one line and exit 2: a path through a file (ENOTDIR, the
case a root user meets too; read-only folders cannot be made for root) and the StorageError sentences. Full disks:
here for `convert`, in tests/test_run_dir.py for training."""

import errno
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO_ROOT
from data_utils import write_png
from helpers import file_size_limit
from gsto_tf.atomic import StorageError, storage_errors
from gsto_tf.cli import main
from gsto_tf.data import ensure_synthetic


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    inp = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(8, 1, kernel_initializer=keras.initializers.RandomNormal(seed=1))(inp)
    path = tmp_path_factory.mktemp("ckpt") / "pointwise.keras"
    keras.Model(inp, {"logits": out}).save(path)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_synthetic(str(tmp_path_factory.mktemp("data")), height=16, width=32, train=2, val=2)


def _commands(tmp_path, checkpoint, data, under=None):
    """Each writing command with its destination at ``under`` (default: a path below a file)."""
    if under is None:
        blocked = tmp_path / "a_file"
        blocked.write_text("not a folder")
        under = str(blocked / "sub")
    image = tmp_path / "x.png"
    write_png(str(image), np.zeros((8, 8, 3), np.uint8))
    return {
        "train": ["train", "--dataset", "synthetic", "--data-dir", data, "--steps", "1", "--batch-size", "2",
                  "--run-dir", under],
        "eval": ["eval", "--dataset", "synthetic", "--data-dir", data, "--checkpoint", checkpoint, "--ss",
                 "--run-dir", under],
        "predict": ["predict", str(image), "--checkpoint", checkpoint, "--dataset", "synthetic", "--output", under],
        "export saved_model": ["export", "--checkpoint", checkpoint, "--output", os.path.join(under, "sm")],
        "export tflite": ["export", "--checkpoint", checkpoint, "--format", "tflite", "--input-size", "16x32",
                          "--data-dir", data, "--num-images", "1", "--output", os.path.join(under, "m.tflite")],
    }


@pytest.mark.parametrize("name", ["train", "eval", "predict", "export saved_model", "export tflite"])
def test_destination_under_a_file_is_one_line_and_exit_2(tmp_path, checkpoint, data, capsys, name):
    args = _commands(tmp_path, checkpoint, data)[name]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "a_file" in err and "a part of the path is a file" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["train", "eval", "predict", "export saved_model", "export tflite"])
def test_destination_name_too_long_is_one_line_and_exit_2(tmp_path, checkpoint, data, capsys, name):
    args = _commands(tmp_path, checkpoint, data, under=str(tmp_path / ("n" * 300)))[name]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "a file or folder name is longer than the file system allows (255 bytes); choose a shorter one" in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_output_that_is_a_folder_is_one_line_and_exit_2(tmp_path, data, capsys):
    assert main(["data", "browse", "--dataset", "synthetic", "--data-dir", data, "--num", "2",
                 "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"data: cannot write {tmp_path}: it is a folder; give a file path"


def test_convert_destination_under_a_file(tmp_path, capsys):
    from torch_zip import write_state_dict  # the project's own torch-format writer for tests

    state = tmp_path / "m.pth"
    write_state_dict(state, {"conv1.weight": np.zeros((64, 3, 3, 3), np.float32)})
    (tmp_path / "a_file").write_text("x")
    rc = main(["convert", str(state), "--model", "hrnetv2_w18_small_v1", "--num-classes", "3", "--no-strict",
               "--output", str(tmp_path / "a_file" / "m.keras")])
    err = capsys.readouterr().err
    assert rc == 2 and "a part of the path is a file" in err and "Traceback" not in err, err


def test_convert_on_a_full_disk_is_one_line_and_no_crash(tmp_path, fixtures_dir):
    # A file-size limit below the checkpoint's size fails the writes as a full disk does. When HDF5 wrote the
    # weights file itself, freeing the half-written file crashed Python (SIGSEGV).
    out = tmp_path / "out" / "m.keras"
    done = subprocess.run([sys.executable, "-m", "gsto_tf", "convert", str(fixtures_dir / "hrnetv2_w18s1_c19.pth"),
                           "--model", "hrnetv2_w18_small_v1", "--num-classes", "19", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(1_000_000),
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"convert: cannot write {out}: File too large"), lines
    assert os.listdir(out.parent) == []  # no temp file left behind


@pytest.mark.parametrize("code, words", [
    (errno.EROFS, "Read-only file system; choose a folder this user can write"),
    (errno.EACCES, "Permission denied; choose a folder this user can write"),
    (errno.ENOSPC, "No space left on device. Files written before are intact"),
])
def test_storage_error_sentences(code, words):
    with pytest.raises(StorageError) as info:
        with storage_errors("/some/out.keras"):
            raise OSError(code, os.strerror(code))
    assert str(info.value) == f"cannot write /some/out.keras: {words}" + (
        "; free space (or raise the file size limit) and rerun the same command" if code == errno.ENOSPC else "")
    with pytest.raises(KeyError):  # other errors pass unchanged
        with storage_errors("x"):
            raise KeyError("k")

