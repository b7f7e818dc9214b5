"""A run directory is a contract: config checks before anything is written, one configuration per folder, the
best model and the history survive a resume, leftovers of killed writes are cleaned, a full disk is one message."""

import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import file_size_limit

from gsto_tf.atomic import StorageError, remove_temp_files, write_atomically
from gsto_tf.data import ensure_synthetic
from gsto_tf.training.callbacks import HistoryLog, LatestAndBestCheckpoint, ResumeCallback, ResumeState
from gsto_tf.training.config import ConfigError, make_config
from gsto_tf.training.run_dir import RunDirError, claim_run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "experiments", "run.py")


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


@pytest.mark.parametrize("setting, message", [
    ("train.lr=-0.1", "train.lr must be a positive number, got -0.1"),
    ("train.global_batch_size=0", "train.global_batch_size must be an integer in [1, 4096], got 0"),
    ("train.global_batch_size=100000", "train.global_batch_size must be an integer in [1, 4096], got 100000"),
    ("train.seed=4294967296", "train.seed must be an integer in [0, 2**32), got 4294967296"),
    ("data.crop_size=[512,1000000]", "data.crop_size must be two integers [h, w] in [1, 8192], got [512, 1000000]"),
    ("train.lr=[1,", "--set train.lr: not valid YAML (while parsing a flow node"),
    ("train.lr=" + "9" * 500, "--set train.lr: not valid YAML (an integer of 500 digits (at most 30)"),
    ("train.lr=" + "9" * 500 + ".0", "train.lr must be a finite number, got inf"),
    ("train.global_batch_size=2.5", "train.global_batch_size must be an integer, got 2.5"),
    ("train.steps=0", "train.steps must be an integer >= 1 (or null), got 0"),
    ("train.steps=-5", "train.steps must be an integer >= 1 (or null), got -5"),
    ("train.lr=fast", "train.lr must be a number, got 'fast'"),
    ("train.momentum=1.5", "train.momentum must be a number in [0, 1), got 1.5"),
    ("model.name=gsto_hrnet_w18_smal_v2", "unknown model 'gsto_hrnet_w18_smal_v2'; did you mean gsto_hrnet_w18_small_v2"),
    ("data.crop_size=[64]", "data.crop_size must be two integers [h, w] in [1, 8192], got [64]"),
    ("data.scale_range=[2.0,0.5]", "data.scale_range must be [lo, hi] with 0 < lo <= hi, got [2.0, 0.5]"),
    ("train.strategy=tpu", "train.strategy must be one of auto, default, mirrored, multi_worker, got 'tpu'"),
    ("train.ohem=yes please", "train.ohem must be true or false, got 'yes please'"),
    ("data.crop_size=256by256", "data.crop_size must be HxW or [h, w] (positive integers), got '256by256'"),
    ("data.crop_size=256x0", "data.crop_size must be HxW or [h, w] (positive integers), got '256x0'"),
    ("train.weight_deacy=0.1", "unknown key train.weight_deacy; did you mean weight_decay? valid:"),
    ("training.lr=0.1", "unknown config section 'training'; did you mean train? valid: data, model, train, eval"),
])
def test_config_values_are_checked_when_the_config_is_built(setting, message):
    with pytest.raises(ConfigError) as info:
        make_config("synthetic", sets=[setting])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sizes_are_written_hxw_in_set_and_config_files(tmp_path):
    assert make_config("synthetic", sets=["data.crop_size=256x320"]).data.crop_size == [256, 320]
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  crop_size: 96x128\n")
    assert make_config("synthetic", str(path)).data.crop_size == [96, 128]


def test_yaml_scientific_notation_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string; the config turns it into the number it means.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    config = make_config("synthetic", str(path))
    assert config.train.lr == 0.001 and isinstance(config.train.lr, float)
    assert config.train.weight_decay == 0.0005


def test_every_bad_value_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        make_config("synthetic", sets=["train.lr=-1", "train.global_batch_size=0"])
    assert str(info.value) == ("train.global_batch_size must be an integer in [1, 4096], got 0; "
                               "train.lr must be a positive number, got -1.0")


def test_cli_config_error_is_one_line_exit_2_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, RUN, "--run-dir", str(run), "--set", "train.lr=-1"],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1] == "train: train.lr must be a positive number, got -1.0", out.stderr
    assert "Traceback" not in out.stderr
    assert not run.exists()


_ALIAS_BOMB = "model:\n  options:\n    a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    {chr(98 + k)}: &{chr(98 + k)} [*{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}, *{chr(97 + k)}]\n"
    for k in range(12))


@pytest.mark.parametrize("config_text, message", [
    ("train:\n  lr: [0.01\n", "not valid YAML (while parsing a flow sequence"),
    (_ALIAS_BOMB, "not valid YAML (aliases (*name) are not allowed"),
    ("train: [1, 2]\n", "section 'train' must be a mapping, got [1, 2]"),
])
def test_config_file_errors_are_one_line_and_write_nothing(tmp_path, capsys, config_text, message):
    from gsto_tf.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(config_text)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and len(err) < 600, err
    assert not run.exists()


def test_model_options_the_model_refuses_are_a_config_error_before_anything_is_written(tmp_path, capsys):
    from gsto_tf.cli import main

    data = ensure_synthetic(str(tmp_path / "data"), height=16, width=32, train=2, val=2)
    run = tmp_path / "run"
    for option, words in (("gate_styl=paper", "unexpected keyword argument 'gate_styl'"),
                          ("gate_style=3", "model.options (gate_style=3) refused by model")):
        assert main(["train", "--data-dir", data, "--run-dir", str(run), "--model", "gsto_hrnet_w18_small_v1",
                     "--steps", "1", "--batch-size", "2", "--set", f"model.options.{option}"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "Traceback" not in err and "\n" not in err, err
        assert not run.exists()


def _config(**sets):
    return make_config("synthetic", sets=[f"{k}={v}" for k, v in sets.items()])


def test_a_run_dir_holds_one_configuration(tmp_path):
    run = tmp_path / "run"
    claim_run_dir(run, _config())
    saved = (run / "config.yaml").read_text()
    claim_run_dir(run, _config())  # the same configuration resumes
    # where the data lives and how it is evaluated may change between the runs of a folder
    claim_run_dir(run, _config(**{"data.data_dir": str(tmp_path), "eval.limit": 3}))
    with pytest.raises(RunDirError) as info:
        claim_run_dir(run, _config(**{"train.steps": 480, "train.lr": 0.05, "model.options.gate_style": "paper"}))
    text = str(info.value)
    for part in ("train.steps: 240 -> 480", "train.lr: 0.02 -> 0.05", "model.options.gate_style: '(absent)' -> "
                 "'paper'", "choose a new --run-dir"):
        assert part in text, text
    assert (run / "config.yaml").read_text() == saved  # not overwritten


def test_run_dir_that_is_not_a_run_or_not_a_folder_is_refused(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(RunDirError, match="not empty and holds no config.yaml"):
        claim_run_dir(other, _config())
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(RunDirError, match="exists and is a file"):
        claim_run_dir(regular, _config())
    with pytest.raises(RunDirError, match="a part of the path is a file"):
        claim_run_dir(regular / "run", _config())
    assert sorted(os.listdir(other)) == ["a.jpg"]


def test_leftovers_of_killed_writes_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    claim_run_dir(run, _config())
    (run / "checkpoints").mkdir()
    leftovers = [run / "checkpoints" / ".tmp-abc.keras", run / ".tmp-x.yaml", run / "eval" / ".tmp-1.csv"]
    (run / "eval").mkdir()
    for path in leftovers:
        path.write_bytes(b"partial")
    (run / "checkpoints" / "latest.keras").write_bytes(b"kept")
    claim_run_dir(run, _config())
    assert not any(p.exists() for p in leftovers)
    assert (run / "checkpoints" / "latest.keras").read_bytes() == b"kept"

    model = _tiny_model()
    state = ResumeState(str(run / "backup"), model, model.optimizer)
    state.save(1)
    partial = run / "backup" / "ckpt-2_temp"
    partial.mkdir()
    (partial / "part-00000-of-00001.data-00000-of-00001.tempstate123").write_bytes(b"partial")
    assert ResumeState(str(run / "backup"), model, model.optimizer).restore() == 1
    assert not partial.exists()


def _tiny_model():
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, name="conv")(inp))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


class _Scores:
    """An evaluate_fn returning the given mIoU values in turn."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, model):
        return type("Metrics", (), {"miou": self.values.pop(0)})()


def _fit_chunks(model, state, run, scores, initial_chunk, chunks):
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 1)).astype(np.float32)
    callbacks = [LatestAndBestCheckpoint(str(run / "checkpoints"), state, scores, eval_every=1),
                 HistoryLog(str(run / "history.csv"), 2, initial_chunk), ResumeCallback(state)]
    model.fit(x, x, batch_size=4, epochs=chunks, steps_per_epoch=2, initial_epoch=initial_chunk, callbacks=callbacks,
              verbose=0)


def test_best_metric_and_history_survive_a_resume(tmp_path):
    run = tmp_path / "run"
    model = _tiny_model()
    state = ResumeState(str(run / "backup"), model, model.optimizer)
    _fit_chunks(model, state, run, _Scores([0.5, 0.7]), 0, 2)
    best = keras.saving.load_model(run / "checkpoints" / "best.keras").get_layer("conv").get_weights()
    # A history row of chunk 3 that was written before the run was killed (its backup never happened).
    with open(run / "history.csv", "a") as f:
        f.write("3,6,9.9,0.1\n")

    resumed = _tiny_model()
    state = ResumeState(str(run / "backup"), resumed, resumed.optimizer)
    assert state.restore() == 2
    assert float(state.best_miou.numpy()) == pytest.approx(0.7)
    _fit_chunks(resumed, state, run, _Scores([0.6, 0.8]), 2, 4)  # chunk 3 is worse than chunk 2, chunk 4 better

    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["chunk"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["val_miou"]) for r in rows] == pytest.approx([0.5, 0.7, 0.6, 0.8])
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert float(rows[2]["loss"]) != 9.9
    final = keras.saving.load_model(run / "checkpoints" / "best.keras").get_layer("conv").get_weights()
    np.testing.assert_array_equal(final[0], resumed.get_layer("conv").get_weights()[0])
    assert not np.array_equal(final[0], best[0])


def test_worse_model_after_resume_does_not_replace_best(tmp_path):
    run = tmp_path / "run"
    model = _tiny_model()
    state = ResumeState(str(run / "backup"), model, model.optimizer)
    _fit_chunks(model, state, run, _Scores([0.9]), 0, 1)
    best = (run / "checkpoints" / "best.keras").read_bytes()
    resumed = _tiny_model()
    state = ResumeState(str(run / "backup"), resumed, resumed.optimizer)
    state.restore()
    _fit_chunks(resumed, state, run, _Scores([0.4]), 1, 2)
    assert (run / "checkpoints" / "best.keras").read_bytes() == best


def test_full_disk_write_is_one_error_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "table.csv"
    write_atomically(path, lambda tmp: open(tmp, "w").write("old"))

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise OSError(28, "No space left on device", tmp)

    with pytest.raises(StorageError, match=r"cannot write .*table.csv: No space left on device\. Files written "):
        write_atomically(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["table.csv"]
    assert remove_temp_files(str(tmp_path)) == []

    with pytest.raises(StorageError, match="File too large"):
        with __import__("gsto_tf.atomic").atomic.storage_errors("backup"):
            raise tf.errors.OutOfRangeError(None, None, "/x/ckpt-1_temp/part; File too large")
    with pytest.raises(ValueError, match="unrelated"):  # other errors pass unchanged
        write_atomically(path, lambda tmp: (_ for _ in ()).throw(ValueError("unrelated")))


def test_training_on_a_full_disk_ends_in_one_message_and_resumes(tmp_path):
    data = ensure_synthetic(str(tmp_path / "data"), height=32, width=64, train=8, val=2)
    run = tmp_path / "run"
    command = [sys.executable, RUN, "--data-dir", data, "--run-dir", str(run), "--model", "hrnetv2_w18_small_v1",
               "--steps", "2", "--batch-size", "2", "--set", "train.checkpoint_every=2", "--set",
               "data.crop_size=[32,32]", "--set", "eval.limit=1"]
    # 2 MB per file: config.yaml fits, the model checkpoints do not.
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env(),
                         preexec_fn=file_size_limit(2_000_000))
    assert out.returncode == 2, out.stderr[-2000:]
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("train: cannot write ") and "File too large" in last and "rerun the same command" in last, last
    assert "Traceback" not in out.stderr
    saved = (run / "config.yaml").read_text()
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(run) for f in files if f.startswith(".tmp-")]
    assert not leftovers and not [d for d, _, _ in os.walk(run) if d.endswith("_temp")]

    out = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert (run / "config.yaml").read_text() == saved
    assert (run / "checkpoints" / "final.keras").exists() and (run / "checkpoints" / "best.keras").exists()


_HOLD_LOCK = """
import sys, time
from gsto_tf.training.run_dir import RunDirLock
lock = RunDirLock(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_live_run_locks_its_folder_and_a_killed_one_does_not(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True,
                              env=dict(_env(), PYTHONPATH=REPO))
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = make_config("synthetic")
        with pytest.raises(RunDirError, match=f"in use by a running training \\(pid {holder.pid} on host "):
            claim_run_dir(str(run), config)
        assert os.listdir(run) == [".lock"]  # nothing written, nothing of the live run removed
        # The command line: one line, exit 2.
        out = subprocess.run([sys.executable, RUN, "train", "--dataset", "synthetic", "--run-dir", str(run),
                              "--steps", "1"], capture_output=True, text=True, env=_env(), timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        assert f"pid {holder.pid}" in out.stderr and "Traceback" not in out.stderr
    finally:
        holder.kill()
        holder.wait()
    # The dead holder's lock file stays behind, but the OS released its lock: the folder can be claimed.
    lock = claim_run_dir(str(run), make_config("synthetic"))
    try:
        assert (run / "config.yaml").is_file()
        with pytest.raises(RunDirError, match=f"pid {os.getpid()} "):  # held by this process now
            claim_run_dir(str(run), make_config("synthetic"))
    finally:
        lock.release()
    claim_run_dir(str(run), make_config("synthetic")).release()


def test_unknown_dataset_for_train_is_one_line(tmp_path, capsys):
    from gsto_tf.cli import main

    assert main(["train", "--dataset", "nosuch", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: unknown dataset 'nosuch'") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_run_saved_by_an_earlier_version_still_resumes():
    """Earlier config.yaml files lack data.train_split / val_split and hold null augmentation values."""
    import yaml

    from gsto_tf.training.run_dir import config_differences

    config = make_config("synthetic", sets=["data.crop_size=[64,64]"])
    config.data.scale_range = [0.75, 1.25]  # resolved from the card, as train() writes it now
    saved = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    del saved["data"]["train_split"], saved["data"]["val_split"]
    saved["data"]["scale_range"] = None
    assert config_differences(saved, config) == []
    config.data.train_split = "trainval"  # not the default: a different run
    assert config_differences(saved, config) == [("data.train_split", "(absent)", "trainval")]
    saved["data"]["crop_size"] = [32, 32]
    assert ("data.crop_size", [32, 32], [64, 64]) in config_differences(saved, config)
