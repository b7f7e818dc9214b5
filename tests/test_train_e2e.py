"""End-to-end training on the built-in synthetic dataset, through the real command."""

import json
import os
import subprocess
import sys

import yaml

from gsto_tf.cli import main as cli
from gsto_tf.data import augmentation, ensure_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_missing_data_gives_one_clear_message(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "run.py"), "--dataset", "cityscapes",
                          "--data-dir", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode != 0
    assert "train: dataset 'cityscapes'" in out.stderr and "leftImg8bit" in out.stderr and "cityscapes-dataset.com" in out.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_short_synthetic_run_trains_and_evaluates(tmp_path):
    data = ensure_synthetic(str(tmp_path / "data"), height=64, width=128, train=64, val=8)
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "run.py"), "--data-dir", data, "--run-dir", str(run),
         "--model", "hrnetv2_w18_small_v1", "--steps", "150", "--batch-size", "4", "--set",
         "data.crop_size=[64,64]", "--set", "train.checkpoint_every=50", "--set", "train.lr=0.05"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        preexec_fn=lambda: os.umask(0o002))  # a shared group folder: every folder of the run is group-writable
    assert out.returncode == 0, out.stderr[-3000:]
    folders = [run, *(p for p in run.rglob("*") if p.is_dir())]
    assert {"backup", "checkpoints", "logs", "train", "eval"} <= {p.name for p in folders}
    assert [(str(p), oct(p.stat().st_mode & 0o777)) for p in folders if p.stat().st_mode & 0o777 != 0o775] == []
    metrics = json.load(open(run / "eval" / "metrics.json"))
    # 8 classes: predicting one class everywhere scores mIoU <= 1/8 (measured here: ~0.27 mIoU, ~0.59 pixel
    # accuracy after these 150 steps of 64x64 crops; the full default run reaches ~0.70 mIoU).
    assert metrics["mIoU"] > 0.15
    assert metrics["pixel_accuracy"] > 0.45
    for name in ("latest.keras", "final.keras", "best.keras"):
        assert (run / "checkpoints" / name).exists()
    assert (run / "config.yaml").exists() and (run / "history.csv").exists()
    assert "mIoU" in out.stdout
    assert "PreciseBN applied" in out.stdout  # on in the synthetic recipe: final.keras carries re-estimated BN stats
    # config.yaml holds the values the run used: the card's scale range, not null
    saved = yaml.safe_load(open(run / "config.yaml"))["data"]
    assert (saved["crop_size"], saved["scale_range"]) == ([64, 64], list(augmentation("synthetic")[1]))
    # the real history.csv draws as curves (losses, lr and val mIoU against the step)
    assert cli(["visualize", "curves", "--run-dir", str(run), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    # eval of the run's checkpoint writes beside the metrics of training's own evaluation: one home, RUN/eval
    assert cli(["eval", "--checkpoint", str(run / "checkpoints" / "final.keras"), "--data-dir", data, "--ss"]) == 0
    assert (run / "eval" / "metrics_ss.json").exists() and not (run / "checkpoints" / "eval").exists()

    # A training checkpoint loads for inference in a process that never imports gsto_tf.training.
    script = ("import sys; from gsto_tf.checkpoints import load_checkpoint; "
              f"m, _ = load_checkpoint({str(run / 'checkpoints' / 'final.keras')!r}); "
              "assert 'gsto_tf.training' not in sys.modules; print('OK', m.output['logits'].shape[-1])")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO))
    assert "OK 8" in loaded.stdout, loaded.stderr[-3000:]
