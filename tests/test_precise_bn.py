"""PreciseBN: the moving statistics after re-estimation equal the numpy average of the per-batch statistics (mean,
unbiased variance) of a tiny conv + BN model, on one device and under MirroredStrategy; weights stay frozen."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.training.precise_bn import batch_norm_layers, precise_bn, precise_bn_applied

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("precise_bn_model", REPO / "tests" / "scripts" / "precise_bn_model.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def _weights(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def _check_against_reference(stats, reference, rtol=1e-5):
    for name in ("bn1", "bn2"):
        mean, variance = stats[name]
        np.testing.assert_allclose(mean, reference[name][0], rtol=rtol, atol=1e-6, err_msg=f"{name} moving mean")
        np.testing.assert_allclose(variance, reference[name][1], rtol=rtol, err_msg=f"{name} moving variance")


def test_moving_statistics_become_the_average_batch_statistics():
    model = tiny.build_model()
    before = _weights(model)
    batches = tiny.make_batches()
    # the training dataset's (inputs, targets) form; more batches than asked for
    targets = {"logits": np.zeros((tiny.BATCHES * tiny.BATCH,)), "aux_fcn": np.zeros((tiny.BATCHES * tiny.BATCH,))}
    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate(batches * 2), {k: np.concatenate([v, v])
                                                                                for k, v in targets.items()}))
    assert precise_bn(model, dataset.batch(tiny.BATCH), tiny.BATCHES) == 2
    reference = tiny.numpy_reference(before, batches)
    stats = {name: model.get_layer(name).get_weights()[2:] for name in ("bn1", "bn2")}
    _check_against_reference(stats, reference)
    # not the pooled statistics of all pixels (the batches are shifted against each other)
    pooled = np.concatenate([b @ before["conv1"][0][0, 0] + before["conv1"][1] for b in batches]).var((0, 1, 2))
    assert np.max(np.abs(stats["bn1"][1] - pooled) / pooled) > 0.2
    # weights frozen, momentum restored
    after = _weights(model)
    for name, values in before.items():
        kept = values if not name.startswith("bn") else values[:2]
        for a, b in zip(kept, after[name]):
            np.testing.assert_array_equal(a, b)
    assert all(layer.momentum == 0.99 for layer in batch_norm_layers(model))


def test_applied_for_a_block_then_restored_and_errors():
    model = tiny.build_model()
    before = _weights(model)
    batches = tiny.make_batches()
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(tiny.BATCH)
    reference = tiny.numpy_reference(before, batches)
    with precise_bn_applied(model, dataset, tiny.BATCHES) as updated:
        assert updated == 2
        _check_against_reference({n: model.get_layer(n).get_weights()[2:] for n in ("bn1", "bn2")}, reference)
    for name in ("bn1", "bn2"):  # the model's own statistics are back
        for a, b in zip(before[name], model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="the dataset ended after 5 batches, 6 were asked for"):
        precise_bn(model, dataset, tiny.BATCHES + 1)
    for name in ("bn1", "bn2"):  # a failed re-estimation leaves the statistics untouched
        for a, b in zip(before[name], model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert all(layer.momentum == 0.99 for layer in batch_norm_layers(model))
    with pytest.raises(ValueError, match="num_batches must be a positive int"):
        precise_bn(model, dataset, 0)


def test_frozen_batch_norm_layers_are_left_alone():
    model = tiny.build_model()
    model.get_layer("bn2").trainable = False
    frozen = model.get_layer("bn2").get_weights()
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(tiny.make_batches())).batch(tiny.BATCH)
    assert [layer.name for layer in batch_norm_layers(model)] == ["bn1"]
    assert precise_bn(model, dataset, 2) == 1
    for a, b in zip(frozen, model.get_layer("bn2").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_under_mirrored_strategy_with_synchronized_batch_norm(tmp_path):
    # Each global batch is split over 2 replicas (2 logical CPUs, in a subprocess); synchronized BN gives the
    # statistics of the global batch, so the result equals the single-device numpy reference.
    out = tmp_path / "mirrored.npz"
    run = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "precise_bn_model.py"), str(out)],
                         env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "replicas 2 updated 2" in run.stdout
    r = np.load(out)
    initial = {}
    for key in r.files:
        if not key.startswith("after_"):
            name, index = key.split("/")
            initial.setdefault(name, {})[int(index)] = r[key]
    weights = {name: [values[i] for i in sorted(values)] for name, values in initial.items()}
    reference = tiny.numpy_reference(weights, tiny.make_batches())
    _check_against_reference({n: (r[f"after_{n}/2"], r[f"after_{n}/3"]) for n in ("bn1", "bn2")}, reference)


def test_trainer_writes_final_checkpoint_with_precise_statistics(tmp_path, capsys):
    import keras

    from gsto_tf.data import build_train_dataset, ensure_synthetic
    from gsto_tf.training.config import make_config
    from gsto_tf.training.trainer import train

    data = ensure_synthetic(str(tmp_path / "data"), height=32, width=64, train=8, val=2)
    config = make_config("synthetic", overrides={"data": {"data_dir": data, "crop_size": [32, 32]},
                                                 "model": {"name": "hrnetv2_w18_small_v1"},
                                                 "train": {"steps": 2, "global_batch_size": 2, "checkpoint_every": 2},
                                                 "eval": {"precise_bn_batches": 3}})
    run = tmp_path / "run"
    train(config, str(run), evaluate_at_end=False, verbose=0)
    assert "PreciseBN applied: BN statistics of" in capsys.readouterr().out
    # latest.keras holds the training statistics after the last step; final.keras = PreciseBN of that model over
    # the 3 augmented training batches that follow the last step.
    latest = keras.saving.load_model(run / "checkpoints" / "latest.keras", compile=False)
    final = keras.saving.load_model(run / "checkpoints" / "final.keras", compile=False)
    batches = build_train_dataset("synthetic", data, global_batch_size=2, seed=config.train.seed, crop_size=(32, 32),
                                  start_step=2)
    training_means = [layer.moving_mean.numpy() for layer in batch_norm_layers(latest)]
    updated = precise_bn(latest, batches, 3)
    assert updated == len(batch_norm_layers(final)) > 0
    for a, b in zip(latest.weights, final.weights):
        assert a.path == b.path
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    # and the final statistics are not the training ones (momentum 0.01 moved them little in 2 steps)
    moved = [not np.allclose(layer.moving_mean.numpy(), m, rtol=1e-3, atol=1e-4)
             for layer, m in zip(batch_norm_layers(final), training_means)]
    assert sum(moved) > 0.9 * updated
