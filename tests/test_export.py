"""SavedModel in a separate TensorFlow-only process, TFLite with LiteRT, parity, bad inputs."""

import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.data import normalize_image
from gsto_tf.export import (
    DEFAULT_MAX_PIXELS,
    TFLiteRunner,
    convert_to_tflite,
    export_saved_model,
    export_tflite,
    parity_report,
)
from gsto_tf.layers import resize_bilinear
from gsto_tf.models import build, inference_model


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    return build("gsto_hrnet_w18_small_v1", 5)


@pytest.fixture(scope="module")
def saved_model_dir(model, tmp_path_factory):
    return export_saved_model(model, tmp_path_factory.mktemp("sm") / "gsto")


def _images(n=2, h=37, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _reference(model, images):
    logits = inference_model(model)(normalize_image(images), training=False)
    logits = resize_bilinear(logits, images.shape[1:3])
    return tf.argmax(logits, -1).numpy(), tf.nn.softmax(logits).numpy()


def test_saved_model_runs_in_a_process_without_gsto_tf(model, saved_model_dir, tmp_path):
    images = _images()
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import os, sys; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        sys.path = [p for p in sys.path if os.path.abspath(p or ".") != {os.getcwd()!r}]
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({saved_model_dir!r})
        out = loaded.signatures["serving_default"](images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
        assert "gsto_tf" not in sys.modules, "gsto_tf was imported"
        np.save({str(tmp_path / 'labels.npy')!r}, out["labels"].numpy())
        np.save({str(tmp_path / 'probs.npy')!r}, out["probabilities"].numpy())
        print("OK", sorted(loaded.signatures))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=""))
    assert "OK" in out.stdout, out.stderr[-3000:]
    assert "serving_normalized" in out.stdout
    labels, probs = _reference(model, images)
    got_labels, got_probs = np.load(tmp_path / "labels.npy"), np.load(tmp_path / "probs.npy")
    assert got_labels.shape == (2, 37, 53) and got_probs.shape == (2, 37, 53, 5)
    np.testing.assert_allclose(got_probs, probs, atol=1e-5)
    assert np.mean(got_labels == labels) > 0.999


def test_signature_rejects_wrong_dtype_and_rank(saved_model_dir):
    fn = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        fn(images=tf.zeros((1, 8, 8, 3), tf.float32))
    # Wrong rank or an empty image: an InvalidArgumentError, not a oneDNN abort of the serving process.
    with pytest.raises(tf.errors.InvalidArgumentError, match="expect_rank_4_NHWC"):
        fn(images=tf.zeros((8, 8, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expect_rank_4_NHWC"):
        fn(images=tf.zeros((1, 1, 8, 8, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch or image"):
        fn(images=tf.zeros((1, 0, 8, 3), tf.uint8))


def _pointwise(classes=5):
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, {"logits": keras.layers.Conv2D(classes, 1)(inputs)})


def test_signatures_refuse_other_channel_counts_and_oversized_requests_in_a_server_process(saved_model_dir,
                                                                                          tmp_path):
    """The real exports in a separate TensorFlow-only process (a bad request must not abort the server)."""
    capped = export_saved_model(_pointwise(), tmp_path / "capped", max_pixels=2100)
    script = textwrap.dedent(f"""
        import os, sys; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import tensorflow as tf
        for export, shapes in (({saved_model_dir!r}, ((1, 8, 8, 1), (1, 8, 8, 2), (1, 8, 8, 4))),
                               ({capped!r}, ((3, 20, 30, 3), (1, 1, 2000, 3), (2, 20, 30, 3)))):
            loaded = tf.saved_model.load(export)
            print("max_pixels", int(loaded.max_pixels.numpy()))
            for name in ("serving_default", "serving_normalized"):
                fn = loaded.signatures[name]
                dtype = tf.uint8 if name == "serving_default" else tf.float32
                for shape in shapes:
                    try:
                        out = fn(images=tf.zeros(shape, dtype))
                        print(name, shape, "ok", tuple(out["labels"].shape))
                    except tf.errors.InvalidArgumentError as e:
                        print(name, shape, "refused:", " ".join(e.message.split()))
        print("server alive")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=""))
    assert "server alive" in out.stdout, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert f"max_pixels {DEFAULT_MAX_PIXELS}" in lines and "max_pixels 2100" in lines
    for name in ("serving_default", "serving_normalized"):
        for channels in (1, 2, 4):
            line = next(x for x in lines if x.startswith(f"{name} (1, 8, 8, {channels})"))
            assert re.search(rf"refused:.*expected RGB images \[N, H, W, 3\], got\] \[{channels}\] \[channels", line)
        # The cap counts each side rounded up to a multiple of 32: 3 x 32 x 32 = 3072 > 2100.
        big = next(x for x in lines if x.startswith(f"{name} (3, 20, 30, 3)"))
        assert re.search(r"refused:.*counts\] \[3072\] \[pixels \(N x H x W, each side rounded up to a multiple of "
                         r"32\), more than this export allows \(max_pixels\):\] \[2100\]", big), big
        # A 1-pixel strip of 2000 raw pixels holds the memory of 32 x 2016: refused, where a raw count passed it.
        strip = next(x for x in lines if x.startswith(f"{name} (1, 1, 2000, 3)"))
        assert "refused:" in strip and "[64512]" in strip, strip
        assert f"{name} (2, 20, 30, 3) ok (2, 20, 30)" in lines


def test_documented_rest_request_decodes_into_the_signature(saved_model_dir):
    # The README's TF Serving request body (row format: "instances" is a list of images).
    body = json.loads('{"signature_name": "serving_default", "instances": [[[[0, 128, 255], [10, 20, 30]], '
                      '[[255, 255, 255], [0, 0, 0]]]]}')
    fn = tf.saved_model.load(saved_model_dir).signatures[body["signature_name"]]
    images = tf.constant(np.asarray(body["instances"], np.uint8))  # what TF Serving builds from the rows
    out = fn(images=images)
    assert out["labels"].shape == (1, 2, 2) and out["probabilities"].shape == (1, 2, 2, 5)


def test_export_is_atomic_and_refuses_to_clobber(model, saved_model_dir):
    with pytest.raises(FileExistsError, match="exists"):
        export_saved_model(model, saved_model_dir)
    assert not [p for p in os.listdir(os.path.dirname(saved_model_dir)) if p.startswith(".export-")]


def test_tflite_fp32_and_fp16_parity_builtins_only(model, tmp_path):
    images = [normalize_image(im).numpy() for im in _images(3, 64, 96, seed=1)]
    path = export_tflite(model, tmp_path / "m.tflite", (64, 96))
    runner = TFLiteRunner(path)
    ops = runner.ops()
    assert not [op for op in ops if "FLEX" in op.upper() or "CUSTOM" in op.upper()], ops
    assert "VAR_HANDLE" not in ops and "READ_VARIABLE" not in ops, ops  # weights frozen into the file
    report = parity_report(model, runner, images)
    assert report.relative_max_diff <= 1e-4, str(report)
    fp16 = TFLiteRunner(export_tflite(model, tmp_path / "m16.tflite", (64, 96), "fp16"))
    assert parity_report(model, fp16, images, "fp16").argmax_agreement >= 0.995
    with pytest.raises(ValueError, match=r"m.tflite: this TFLite model was exported for 64x96 images, got 32x32; "
                                         r"resize the image to 64x96 first .* or export a dynamic-size model"):
        runner(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 64, 96, 3\).*one RGB image"):
        runner(np.zeros((2, 64, 96, 3), np.float32))
    with pytest.raises(ValueError, match=r"m.tflite: empty image of shape \(1, 0, 0, 3\)$"):
        runner(np.zeros((0, 0, 3), np.float32))
    # uint8 RGB is normalised as the training data was, never run raw
    raw = _images(1, 64, 96, seed=4)[0]
    np.testing.assert_array_equal(runner(raw), runner(normalize_image(raw).numpy()))
    with pytest.raises(ValueError, match=r"a float image must be normalised .* pass 0-255 pixels as uint8"):
        runner(raw.astype(np.float32))  # 0-255 floats: refused, not run as if normalised
    with pytest.raises(ValueError, match=r"image of dtype int32; pass uint8 RGB .* or float32 normalised"):
        runner(raw.astype(np.int32))


def test_tflite_dynamic_size_runs_any_size_with_builtins_only(model, tmp_path):
    runner = TFLiteRunner(export_tflite(model, tmp_path / "dyn.tflite", None))
    assert runner.dynamic and runner.input_shape == (1, None, None, 3)
    ops = runner.ops()
    assert not [op for op in ops if "FLEX" in op.upper() or "CUSTOM" in op.upper()], ops
    # Odd sizes (torch-style stride-2 padding, upsampling to the actual branch size), and a size seen twice.
    for h, w in ((64, 96), (37, 53), (64, 96), (50, 31)):
        images = [normalize_image(im).numpy() for im in _images(1, h, w, seed=h)]
        report = parity_report(model, runner, images)
        assert report.relative_max_diff <= 1e-4, f"{h}x{w}: {report}"
        assert runner(images[0]).shape == (1, -(-(-(-h // 2)) // 2), -(-(-(-w // 2)) // 2), 5)
    with pytest.raises(ValueError, match=r"input of shape \(16, 16, 1\); pass one RGB image"):
        runner(np.zeros((16, 16, 1), np.float32))
    # uint8 of the wrong shape: refused before normalisation (which would broadcast 1 channel to 3)
    for shape in ((16, 16, 1), (16, 16, 4), (16, 16)):
        with pytest.raises(ValueError, match=re.escape(f"input of shape {shape}; pass one RGB image")):
            runner(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"empty image of shape \(1, 0, 7, 3\)"):
        runner(np.zeros((0, 7, 3), np.uint8))


def test_tflite_export_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    from gsto_tf.cli import main
    from gsto_tf.data import ensure_synthetic

    pointwise = _pointwise(8)
    checkpoint = tmp_path / "pointwise.keras"
    pointwise.save(checkpoint)
    data = ensure_synthetic(str(tmp_path / "data"), height=16, width=32, train=2, val=2)
    out = tmp_path / "m.tflite"
    out.write_bytes(b"an earlier export")
    args = ["export", "--checkpoint", str(checkpoint), "--format", "tflite", "--input-size", "16x32",
            "--data-dir", data, "--num-images", "1", "--output", str(out)]
    assert main(args) == 2
    assert re.search(r"m\.tflite exists \(pass overwrite=True / --overwrite", capsys.readouterr().err)
    assert out.read_bytes() == b"an earlier export"
    with pytest.raises(FileExistsError, match="exists"):
        export_tflite(pointwise, out, (16, 32))
    assert main(args + ["--overwrite"]) == 0
    assert TFLiteRunner(out).input_shape == (1, 16, 32, 3)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_exports_and_checkpoints_get_umask_permissions(tmp_path, umask):
    from gsto_tf.atomic import save_model_atomically
    from gsto_tf.images import save_png

    model = _pointwise()
    old = os.umask(umask)
    try:
        file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
        export = export_saved_model(model, tmp_path / "sm")
        assert os.stat(export).st_mode & 0o777 == dir_mode
        for folder, dirs, files in os.walk(export):
            assert all(os.stat(os.path.join(folder, d)).st_mode & 0o777 == dir_mode for d in dirs)
            assert all(os.stat(os.path.join(folder, f)).st_mode & 0o777 == file_mode for f in files), files
        lite = export_tflite(model, tmp_path / "m.tflite", (32, 32))
        keras_path, weights = save_model_atomically(model, tmp_path / "m.keras", weights_beside=True)
        png = save_png(tmp_path / "p.png", np.zeros((2, 2), np.uint8))
        for path in (lite, keras_path, weights, png):
            assert os.stat(path).st_mode & 0o777 == file_mode, path
    finally:
        os.umask(old)


def test_tflite_bad_arguments(model):
    with pytest.raises(ValueError, match="quantize must be one of"):
        convert_to_tflite(model, (32, 32), "int4")
    with pytest.raises(ValueError, match="representative images"):
        convert_to_tflite(model, (32, 32), "int8")
    with pytest.raises(FileNotFoundError, match="not found"):
        TFLiteRunner("/nonexistent.tflite")
    with pytest.raises(ValueError, match="representative image of shape \\(8, 8\\), expected \\[H, W, 3\\]"):
        convert_to_tflite(model, None, "int8", representative_images=[np.zeros((8, 8))])


def test_quantize_is_refused_for_a_saved_model(tmp_path, capsys):
    from gsto_tf.cli import main

    checkpoint = tmp_path / "pointwise.keras"
    _pointwise(8).save(checkpoint)
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "saved_model", "--quantize", "int8",
                 "--output", str(tmp_path / "sm")]) == 2
    assert "--quantize int8 is for --format tflite" in capsys.readouterr().err
    assert not (tmp_path / "sm").exists()


def test_serving_normalized_refuses_nan_and_unnormalised_values(saved_model_dir):
    fn = tf.saved_model.load(saved_model_dir).signatures["serving_normalized"]
    assert tuple(fn(images=tf.fill((1, 8, 8, 3), 2.5))["labels"].shape) == (1, 8, 8)  # within the normalised range
    for bad in (float("nan"), float("inf"), 128.0):
        with pytest.raises(tf.errors.InvalidArgumentError, match="serving_normalized takes normalised images"):
            fn(images=tf.fill((1, 8, 8, 3), bad))
