import contextlib
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.training.callbacks import (
    LatestAndBestCheckpoint,
    NaNGuard,
    ProgressLog,
    ResumeState,
    save_model_atomically,
)


def _tiny_model():
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 1)(inp))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def test_nan_loss_stops_the_run_naming_the_step(capsys):
    x = np.ones((8, 4, 4, 1), np.float32)
    x[5] = np.nan  # batch size 1: the 6th step of the run sees NaN
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros_like(x))).batch(1)
    guard = NaNGuard(steps_per_chunk=4)
    model = _tiny_model()
    history = model.fit(ds, epochs=2, steps_per_epoch=4, callbacks=[guard], verbose=0, shuffle=False)
    assert guard.failed_step == 6
    assert "at step 6" in capsys.readouterr().out
    assert len(history.history["loss"]) == 2  # stopped inside the second chunk


def test_atomic_save_leaves_no_temp_files(tmp_path):
    model = _tiny_model()
    path = tmp_path / "ckpt" / "latest.keras"
    save_model_atomically(model, str(path))
    save_model_atomically(model, str(path))  # overwrite in place
    assert path.exists() and os.listdir(path.parent) == ["latest.keras"]
    again = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(again.weights[0].numpy(), model.weights[0].numpy())


def test_eval_context_wraps_evaluation_and_best_save_only(tmp_path):
    # The context (PreciseBN in training) is in force for the evaluation and best.keras, not for latest.keras or
    # after the callback.
    model = _tiny_model()
    kernel = model.weights[0]
    original = kernel.numpy().copy()
    seen = []

    @contextlib.contextmanager
    def shifted(m):
        kernel.assign(original + 1.0)
        try:
            yield
        finally:
            kernel.assign(original)

    class Metrics:
        miou = 0.5

    def evaluate(m):
        seen.append(m.weights[0].numpy().copy())
        return Metrics()

    state = ResumeState(str(tmp_path / "backup"), model, keras.optimizers.SGD())
    callback = LatestAndBestCheckpoint(str(tmp_path), state, evaluate, eval_every=1, eval_context=shifted)
    callback.set_model(model)
    callback.on_epoch_end(0, {})
    np.testing.assert_array_equal(seen[0], original + 1.0)
    np.testing.assert_array_equal(kernel.numpy(), original)
    best = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    latest = keras.saving.load_model(tmp_path / "latest.keras", compile=False)
    np.testing.assert_array_equal(best.weights[0].numpy(), original + 1.0)
    np.testing.assert_array_equal(latest.weights[0].numpy(), original)


def test_resume_state_restores_every_variable_of_listed_sublayers(tmp_path):
    """BN statistics of sub-layers kept in lists (GatedScaleTransfer's strided steps, HRNet's fuse paths), the
    dropout seed state and every optimizer slot come back; TensorFlow's object graph alone misses 140 of them."""
    from gsto_tf.models import build
    from gsto_tf.training.optimizer import TorchSGD

    model = build("pspnet_hrnetv2_w18_small_v1", 3, input_shape=(32, 32, 3))
    optimizer = TorchSGD(0.01, momentum=0.9)
    state = ResumeState(str(tmp_path / "backup"), model, optimizer)
    assert state.restore() == 0
    rng = np.random.default_rng(0)
    everything = list(model.variables) + list(optimizer.variables)
    for v in everything:
        v.assign(rng.normal(size=v.shape).astype(v.dtype) if v.dtype != "int64" else np.full(v.shape, 7))
    saved = [v.numpy().copy() for v in everything]
    state.save(3)
    for v in everything:
        v.assign(np.zeros(v.shape, v.dtype))
    resumed = ResumeState(str(tmp_path / "backup"), model, optimizer)
    assert resumed.restore() == 3
    names = [v.path for v in everything]
    assert any("moving_variance" in n for n in names) and any("seed_generator" in n for n in names)
    for name, v, expected in zip(names, everything, saved):
        np.testing.assert_array_equal(v.numpy(), expected, err_msg=name)


def test_backup_of_the_old_format_is_refused_with_a_way_out(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD()
    optimizer.build(model.trainable_variables)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer), str(tmp_path / "backup"),
                               max_to_keep=2).save()
    with pytest.raises(ValueError, match="older gsto_tf.*delete the backup folder"):
        ResumeState(str(tmp_path / "backup"), model, optimizer).restore()


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_eta_leaves_out_the_traced_first_step():
    clock, out = _Clock(), io.StringIO()
    progress = ProgressLog(total_steps=100, steps_per_chunk=10, initial_chunk=2, stream=out, clock=clock)
    progress.on_train_begin()
    progress.on_epoch_begin(2)
    clock.now = 40.0  # step 21, the first of this (resumed) process: 40 s of it is tracing
    progress.on_train_batch_end(0, {"loss": 1.5})
    first = progress.line(21, {"loss": 1.5})
    assert "ETA" not in first.split(";")[0] and "first step 40 s" in first and first.startswith("step 21/100")
    for batch in range(1, 10):  # 0.5 s per step from then on
        clock.now += 0.5
        progress.on_train_batch_end(batch, {"loss": 1.0})
    progress.on_epoch_end(2, {"loss": 1.0, "lr": 0.01, "val_miou": 12.5})
    line = out.getvalue().splitlines()[-1]  # not a terminal: one line per chunk, nothing in between
    assert len(out.getvalue().splitlines()) == 1
    assert line.startswith("step 30/100  loss 1  lr 0.01  val_miou 12.5  0.5 s/step  ETA 0:35"), line


def test_progress_lines_of_a_real_fit_one_per_chunk():
    out = io.StringIO()
    ds = tf.data.Dataset.from_tensor_slices((np.ones((6, 4, 4, 1), np.float32),) * 2).batch(1).repeat()
    _tiny_model().fit(ds, epochs=3, steps_per_epoch=2, verbose=0, shuffle=False,
                       callbacks=[ProgressLog(6, 2, stream=out)])
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert "ETA" in lines[1] and "ETA" not in lines[2] and "s/step" in lines[2]
