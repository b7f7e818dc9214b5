"""TFLite dynamic-range and full-int8 exports: builtins only, runnable with LiteRT, parity reports.

The fast tests use an untrained model (agreement there says little); the slow test runs the README's main job
(GSTO-HRNet w18_small_v2 trained on the built-in synthetic dataset) and checks these bounds on it (docs/export.md):
int8 >= 97 % and fp16 >= 99.5 % argmax agreement, fp32 max |d logits| <= 1e-4 x std.
"""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from gsto_tf.checkpoints import load_checkpoint
from gsto_tf.data import build_eval_dataset, ensure_synthetic, resolve_data_dir
from gsto_tf.export import TFLiteRunner, export_tflite, parity_report
from gsto_tf.layers import resize_bilinear
from gsto_tf.models import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (32, 64)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(5)
    return build("gsto_hrnet_w18_small_v1", 8)


def _pipeline_images(data_dir, size, count, split="val"):
    """Normalised images from the real data pipeline, resized to the export size."""
    return [resize_bilinear(s["image"], size).numpy()
            for s in build_eval_dataset("synthetic", data_dir, split=split).take(count)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    data = ensure_synthetic(str(tmp_path_factory.mktemp("data")), height=32, width=64, train=8, val=4)
    return _pipeline_images(data, SIZE, 4)


def _assert_builtins_only(runner):
    ops = runner.ops()
    assert not [op for op in ops if "FLEX" in op.upper() or "CUSTOM" in op.upper()], ops
    assert "VAR_HANDLE" not in ops and "READ_VARIABLE" not in ops, ops
    return ops


def _tensor_dtypes(runner):
    return {np.dtype(t["dtype"]).name for t in runner.interpreter.get_tensor_details()}


def test_dynamic_range_tflite_builtins_int8_weights_and_parity(model, images, tmp_path):
    runner = TFLiteRunner(export_tflite(model, tmp_path / "dyn.tflite", SIZE, "dynamic"))
    _assert_builtins_only(runner)
    assert "int8" in _tensor_dtypes(runner)  # weights stored as int8
    assert runner.input["dtype"] == np.float32 and runner.output["dtype"] == np.float32  # float activations
    fp32_size = len(open(export_tflite(model, tmp_path / "f32.tflite", SIZE), "rb").read())
    assert os.path.getsize(tmp_path / "dyn.tflite") < 0.5 * fp32_size
    report = parity_report(model, runner, images, "dynamic")
    assert report.images == 4 and report.quantize == "dynamic"
    assert np.isfinite(report.max_abs_diff) and report.relative_max_diff < 1.0, str(report)
    assert "argmax agreement" in str(report)


def test_full_int8_tflite_builtins_quantized_graph_and_parity(model, images, tmp_path):
    runner = TFLiteRunner(export_tflite(model, tmp_path / "int8.tflite", SIZE, "int8", representative_images=images))
    ops = _assert_builtins_only(runner)
    # Float I/O with quantise / dequantise at the ends; everything between is integer.
    assert runner.input["dtype"] == np.float32 and runner.output["dtype"] == np.float32
    assert "QUANTIZE" in ops and "DEQUANTIZE" in ops, ops
    assert "CONV_2D" in ops
    conv_inputs = [d for d in runner.interpreter._get_ops_details() if d["op_name"] == "CONV_2D"]
    details = {t["index"]: t for t in runner.interpreter.get_tensor_details()}
    assert all(details[c["inputs"][0]]["dtype"] == np.int8 for c in conv_inputs)  # int8 activations into convs
    out = runner(images[0])
    assert out.shape == (1, 8, 16, 8) and out.dtype == np.float32
    report = parity_report(model, runner, images, "int8")
    assert report.images == 4 and np.isfinite(report.max_abs_diff), str(report)
    with pytest.raises(ValueError, match="representative image of shape"):
        export_tflite(model, tmp_path / "bad.tflite", SIZE, "int8", representative_images=[np.zeros((8, 8, 3))])


def test_runner_falls_back_when_xnnpack_refuses_the_model(tmp_path):
    # Random weights + random calibration give degenerate int8 quantisation parameters that LiteRT's default
    # XNNPACK delegate refuses to prepare (ai-edge-litert 2.3.0); the builtin kernels run the model.
    keras.utils.set_random_seed(0)
    model = build("gsto_hrnet_w18_small_v1", 19)
    rng = np.random.default_rng(0)
    # within the normalised range the runner accepts (a normal sample rarely reaches beyond 3.9)
    images = [np.clip(rng.normal(size=(64, 96, 3)), -3.9, 3.9).astype(np.float32) for _ in range(2)]
    path = export_tflite(model, tmp_path / "random_int8.tflite", (64, 96), "int8", representative_images=images)
    with pytest.raises(RuntimeError, match="XNNPACK"):
        TFLiteRunner(path, delegate="xnnpack")
    auto, plain = TFLiteRunner(path), TFLiteRunner(path, delegate="none")
    assert auto.delegate == "none" and plain.delegate == "none"
    np.testing.assert_array_equal(auto(images[0]), plain(images[0]))
    assert TFLiteRunner(export_tflite(model, tmp_path / "f32.tflite", (64, 96))).delegate == "xnnpack"
    with pytest.raises(ValueError, match="`delegate` must be one of"):
        TFLiteRunner(path, delegate="gpu")


@pytest.mark.slow
def test_main_job_model_int8_and_fp16_agreement(tmp_path):
    # The bounds on "a model trained on the built-in dataset" (docs/export.md): the README's main job (GSTO-HRNet
    # w18_small_v2, 240 steps on the synthetic set), exported at the dataset's 128x256, int8 calibrated on the
    # 8 validation images the agreement is measured on (as `run.py export` does). Slow: it trains the main job.
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "run.py"), "--run-dir", str(run)],
        capture_output=True, text=True, timeout=3000, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    trained, _ = load_checkpoint(str(run / "checkpoints" / "final.keras"), num_classes=8)
    size = (128, 256)
    images = _pipeline_images(resolve_data_dir("synthetic", None), size, 8)
    int8 = TFLiteRunner(export_tflite(trained, tmp_path / "int8.tflite", size, "int8", representative_images=images))
    _assert_builtins_only(int8)
    fp32 = TFLiteRunner(export_tflite(trained, tmp_path / "fp32.tflite", size))
    reports = [parity_report(trained, int8, images, "int8"), parity_report(trained, fp32, images, "none"),
               parity_report(trained, TFLiteRunner(export_tflite(trained, tmp_path / "fp16.tflite", size, "fp16")),
                             images, "fp16")]
    print(*reports, sep="\n")
    int8_report, fp32_report, fp16_report = reports
    assert int8_report.argmax_agreement >= 0.97, str(int8_report)
    assert fp16_report.argmax_agreement >= 0.995, str(fp16_report)
    assert fp32_report.relative_max_diff <= 1e-4, str(fp32_report)


def test_parity_report_std_does_not_overflow_on_huge_logits():
    """A barely trained model can put out logits whose float32 square overflows; the report's std stays exact."""
    import warnings

    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Conv2D(2, 1, kernel_initializer=keras.initializers.Constant(1e20), use_bias=False)(inputs)
    model = keras.Model(inputs, outputs)
    images = [np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)]
    refs = np.asarray(model(images[0][None]), np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = parity_report(model, lambda image: np.asarray(model(image[None])), images)
    assert report.logits_std == pytest.approx(float(np.std(refs)), rel=1e-6)
    assert report.max_abs_diff == 0.0


def test_parity_report_counts_close_calls_and_warns_below_the_bound():
    """Hand-made logits: the runner adds 0.3 to class 1. Pixels whose top-two gap is under 0.3 can flip."""
    reference = np.array([[[1.0, 0.9], [2.0, 0.0]], [[0.5, 0.45], [0.0, 3.0]]], np.float32)  # gaps .1 2 .05 3
    image = np.concatenate([reference, np.zeros((2, 2, 1), np.float32)], -1)
    inputs = keras.Input((2, 2, 3))
    select = keras.initializers.Constant(np.array([[[[1, 0], [0, 1], [0, 0]]]], np.float32))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, kernel_initializer=select, use_bias=False)(inputs))

    def runner(image):
        return np.asarray(model(image[None])) + np.array([0.0, 0.3], np.float32)

    report = parity_report(model, runner, [image], "int8")
    assert report.max_abs_diff == pytest.approx(0.3)
    assert report.argmax_agreement == 0.5 and report.close_call_fraction == 0.5  # the two .1 / .05 pixels flip
    text = str(report)
    assert "WARNING: argmax agreement is below the 97 % that a trained model keeps with --quantize int8" in text
    assert "50.0 % of the pixels have their two highest logits closer than the quantisation error" in text
    fine = dataclasses.replace(report, argmax_agreement=0.98)
    assert not fine.below_bound and "WARNING" not in str(fine)
    assert dataclasses.replace(report, quantize="fp16", argmax_agreement=0.99).below_bound  # fp16 keeps 99.5 %
