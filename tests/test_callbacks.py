import os

import keras
import numpy as np
import tensorflow as tf

from gsto_tf.training.callbacks import NaNGuard, save_model_atomically


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
