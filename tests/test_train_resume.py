"""Runs that survive: a training process killed with SIGKILL and restarted ends with the same weights."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np

from gsto_tf.data import ensure_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(data_dir, run_dir, steps):
    return [sys.executable, os.path.join(REPO, "experiments", "run.py"), "train", "--dataset", "synthetic",
            "--data-dir", data_dir, "--run-dir", run_dir, "--model", "hrnetv2_w18_small_v1", "--steps", str(steps),
            "--batch-size", "2", "--no-eval", "--set", "train.checkpoint_every=2", "--set", "data.crop_size=[32,32]"]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["TF_DETERMINISTIC_OPS"] = "1"
    return env


def _weights(run_dir):
    import keras

    import gsto_tf.training  # noqa: F401  registers TorchSGD / SegmentationLoss, compiled into the .keras file

    model = keras.saving.load_model(os.path.join(run_dir, "checkpoints", "final.keras"))
    return {w.path: w.numpy() for w in model.weights}


def test_killed_run_resumes_to_identical_weights(tmp_path):
    data = ensure_synthetic(str(tmp_path / "data"), height=32, width=64, train=8, val=2)
    steps = 8
    reference = str(tmp_path / "reference")
    subprocess.run(_command(data, reference, steps), check=True, env=_env(), timeout=600, capture_output=True)

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_command(data, killed, steps), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    backup = os.path.join(killed, "backup", "checkpoint")
    deadline = time.time() + 600
    while not os.path.exists(backup) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "checkpoints", "final.keras"))

    out = subprocess.run(_command(data, killed, steps), env=_env(), timeout=600, capture_output=True, text=True)
    assert out.returncode == 0 and "resuming from step" in out.stdout, out.stdout + out.stderr
    # Bit for bit, every variable: kernels, BN moving statistics (those of listed sub-layers included).
    reference_weights, killed_weights = _weights(reference), _weights(killed)
    assert any("moving_mean" in name for name in reference_weights)
    assert list(reference_weights) == list(killed_weights)
    for name in reference_weights:
        np.testing.assert_array_equal(killed_weights[name], reference_weights[name], err_msg=name)
    # One history row per chunk, none lost or repeated by the kill, the same losses as the uninterrupted run.
    history = [_history(run) for run in (reference, killed)]
    assert [row["chunk"] for row in history[1]] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in history[1]] == [r["loss"] for r in history[0]]


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))
