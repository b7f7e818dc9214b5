import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.evaluation import ConfusionMatrixMetric, SegmentationMetrics, confusion_matrix, confusion_matrix_np


def _reference(labels, preds, k, ignore=255):
    cm = np.zeros((k, k), np.int64)
    for t, p in zip(labels.ravel(), preds.ravel()):
        if t != ignore:
            cm[t, p] += 1
    return cm


def test_confusion_matrix_matches_reference_with_ignore():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (3, 17, 11))
    labels[rng.random(labels.shape) < 0.2] = 255
    preds = rng.integers(0, 5, labels.shape)
    ref = _reference(labels, preds, 5)
    np.testing.assert_array_equal(confusion_matrix_np(labels, preds, 5), ref)
    np.testing.assert_array_equal(confusion_matrix(tf.constant(labels), tf.constant(preds), 5).numpy(), ref)


def test_metrics_hand_case_with_absent_class(tmp_path):
    # classes: a, b, c, d (d absent from GT and prediction)
    cm = np.array([[3, 1, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m = SegmentationMetrics.from_confusion(cm, ("a", "b", "c", "d"))
    iou = m.per_class_iou
    np.testing.assert_allclose(iou[:3], [3 / 4, 2 / 5, 0 / 2])  # c: predicted twice, never right
    assert np.isnan(iou[3]) and m.absent_classes == ["d"]
    assert m.miou == pytest.approx((0.75 + 0.4 + 0.0) / 3)
    assert m.pixel_accuracy == pytest.approx(5 / 8)
    assert m.mean_accuracy == pytest.approx((3 / 4 + 2 / 4) / 2)  # c has no GT: excluded
    table = m.table()
    assert "n/a" in table and "excluded" in table and "d" in table
    json_path, csv_path = m.save(str(tmp_path))
    data = json.load(open(json_path))
    assert data["per_class_iou"]["d"] is None and data["absent_classes"] == ["d"]
    assert "d,n/a,0,0" in open(csv_path).read()


def test_keras_metric_resizes_logits_and_accumulates():
    metric = ConfusionMatrixMetric(3)
    labels = np.array([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    logits = np.zeros((1, 2, 4, 3), np.float32)
    for c in range(3):
        logits[..., c] = (labels == c)
    metric.update_state(labels, logits)
    metric.update_state(labels, logits)
    assert float(metric.result()) == pytest.approx(1.0)
    np.testing.assert_array_equal(metric.matrix.numpy(), 2 * _reference(labels, labels.clip(0, 2), 3))


def test_confusion_metric_under_mirrored_strategy_sums_replicas():
    script = textwrap.dedent("""
        import os; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from gsto_tf.evaluation import ConfusionMatrixMetric, confusion_matrix_np
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 4, (4, 6, 6)); labels[0, 0] = 255
        logits = rng.normal(size=(4, 6, 6, 4)).astype("float32")
        with strategy.scope():
            metric = ConfusionMatrixMetric(4)
        ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((labels, logits)).batch(4))
        @tf.function
        def step(y, p):
            strategy.run(metric.update_state, args=(y, p))
        for y, p in ds:
            step(y, p)
        ref = confusion_matrix_np(labels, logits.argmax(-1), 4)
        assert strategy.num_replicas_in_sync == 2
        np.testing.assert_array_equal(metric.matrix.numpy(), ref)
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "OK" in out.stdout, out.stderr[-3000:]
