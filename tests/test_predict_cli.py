import re

import keras
import numpy as np
import pytest
from PIL import Image

from data_utils import tiny_cityscapes, write_png
from gsto_tf.cli import main
from gsto_tf.data import get_dataset_spec, normalize_image
from gsto_tf.evaluation.predict import expand_inputs
from gsto_tf.visualize.colors import colorize, overlay


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    inp = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(19, 1, kernel_initializer=keras.initializers.RandomNormal(seed=1))(inp)
    path = tmp_path_factory.mktemp("ckpt") / "pointwise.keras"
    keras.Model(inp, {"logits": out}).save(path)
    return str(path)


def test_predict_folder_writes_labels_and_overlays(tmp_path, checkpoint):
    for i in range(2):
        write_png(str(tmp_path / "in" / f"img{i}.png"), np.full((9, 13, 3), 40 * i, np.uint8))
    assert main(["predict", str(tmp_path / "in"), "--checkpoint", checkpoint, "--dataset", "cityscapes",
                 "--output", str(tmp_path / "out"), "--opacity", "0.3"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "img1_labels.png"))
    over = np.asarray(Image.open(tmp_path / "out" / "img1_overlay.png"))
    assert labels.shape == (9, 13) and labels.max() < 19 and over.shape == (9, 13, 3)
    expected = overlay(np.full((9, 13, 3), 40, np.uint8), labels, get_dataset_spec("cityscapes").palette, 0.3)
    np.testing.assert_array_equal(over, expected)


def test_predict_errors(tmp_path, checkpoint, capsys):
    with pytest.raises(FileNotFoundError, match="no images match"):
        expand_inputs(str(tmp_path / "*.png"))
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["predict", str(tmp_path / "bad.png"), "--checkpoint", checkpoint, "--dataset", "cityscapes",
                 "--output", str(tmp_path / "o")]) == 2
    assert re.search("cannot decode image .*bad.png", capsys.readouterr().err)
    with pytest.raises(ValueError, match="opacity"):
        overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int64), [(1, 2, 3)], 1.5)


def test_colorize_uses_palette_and_black_for_ignore():
    pal = get_dataset_spec("cityscapes").palette
    out = colorize(np.array([[0, 13, 255]]), pal)
    np.testing.assert_array_equal(out[0], [pal[0], pal[13], (0, 0, 0)])


def test_eval_cli_with_submission_pngs(tmp_path, checkpoint):
    root = tiny_cityscapes(str(tmp_path / "cs"), n=2, h=16, w=32)
    sub = tmp_path / "sub"
    assert main(["eval", "--dataset", "cityscapes", "--data-dir", root, "--checkpoint", checkpoint, "--ss",
                 "--run-dir", str(tmp_path / "ev"), "--submission-dir", str(sub)]) == 0
    assert (tmp_path / "ev" / "metrics_ss.json").exists()
    png = np.asarray(Image.open(sub / "aachen_000000_000019_leftImg8bit.png"))
    valid_ids = {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
    assert png.shape == (16, 32) and set(np.unique(png)) <= valid_ids  # label ids, not train ids


def test_checkpoint_of_another_class_count_is_refused(tmp_path, checkpoint, capsys):
    from gsto_tf.checkpoints import CheckpointError, load_checkpoint
    from gsto_tf.data import build_eval_dataset, ensure_synthetic
    from gsto_tf.evaluation import evaluate

    data = ensure_synthetic(str(tmp_path / "syn"), height=16, width=32, train=2, val=2)  # 8 classes
    write_png(str(tmp_path / "in" / "a.png"), np.zeros((9, 13, 3), np.uint8))
    expected = r"pointwise\.keras: the checkpoint predicts 19 classes, but dataset 'synthetic' has 8"
    assert main(["eval", "--dataset", "synthetic", "--data-dir", data, "--checkpoint", checkpoint, "--ss",
                 "--run-dir", str(tmp_path / "ev")]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert main(["predict", str(tmp_path / "in"), "--checkpoint", checkpoint, "--dataset", "synthetic",
                 "--output", str(tmp_path / "pred")]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert main(["export", "--checkpoint", checkpoint, "--dataset", "synthetic",
                 "--output", str(tmp_path / "sm")]) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not any((tmp_path / name).exists() for name in ("ev", "pred", "sm"))
    assert main(["eval", "--dataset", "cityscapes", "--num-classes", "8", "--checkpoint", checkpoint]) == 2
    assert re.search(r"predicts 19 classes, but --num-classes has 8", capsys.readouterr().err)
    model, _ = load_checkpoint(checkpoint)  # the library call checks too
    with pytest.raises(CheckpointError, match=r"evaluate: the checkpoint predicts 19 classes, but dataset 'synth"):
        evaluate(model, build_eval_dataset("synthetic", data), "synthetic")


def test_predict_never_writes_two_inputs_to_one_file(tmp_path, checkpoint, capsys):
    folder = tmp_path / "in"
    write_png(str(folder / "a.png"), np.full((9, 13, 3), 10, np.uint8))
    Image.fromarray(np.full((9, 13, 3), 250, np.uint8)).save(folder / "a.jpg", quality=100)
    write_png(str(folder / "b.png"), np.full((9, 13, 3), 90, np.uint8))
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--checkpoint", checkpoint, "--dataset", "cityscapes", "--output",
                 str(out)]) == 0
    assert "wrote 6 files" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg_labels.png", "a_jpg_overlay.png", "a_png_labels.png",
                                                      "a_png_overlay.png", "b_labels.png", "b_overlay.png"]
    # each file holds its own input's prediction (a uniform image predicts one class of the pointwise model)
    model = keras.saving.load_model(checkpoint)
    for stem, source in (("a_png", folder / "a.png"), ("a_jpg", folder / "a.jpg")):
        rgb = np.asarray(Image.open(source).convert("RGB"))
        expected = np.argmax(model(np.asarray(normalize_image(rgb))[None])["logits"][0], -1)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}_labels.png")), expected)
    # same name in two folders: refused before anything is written
    write_png(str(tmp_path / "other" / "a.png"), np.zeros((9, 13, 3), np.uint8))
    assert main(["predict", str(tmp_path / "*" / "a.png"), "--checkpoint", checkpoint, "--dataset", "cityscapes",
                 "--output", str(tmp_path / "out2")]) == 2
    assert re.search(r"in/a.png and .*other/a.png would both be written as a_png_labels.png",
                     capsys.readouterr().err)
    assert not (tmp_path / "out2").exists()
    # an output that is an input
    write_png(str(folder / "b_labels.png"), np.zeros((9, 13, 3), np.uint8))
    assert main(["predict", str(folder), "--checkpoint", checkpoint, "--dataset", "cityscapes",
                 "--output", str(folder)]) == 2
    assert re.search(r"the output .*in/b_labels.png is also an input", capsys.readouterr().err)


def test_predict_refuses_existing_outputs_without_overwrite(tmp_path, checkpoint, capsys):
    write_png(str(tmp_path / "in" / "a.png"), np.full((9, 13, 3), 10, np.uint8))
    args = ["predict", str(tmp_path / "in"), "--checkpoint", checkpoint, "--dataset", "cityscapes",
            "--output", str(tmp_path / "out")]
    assert main(args) == 0
    first = (tmp_path / "out" / "a_labels.png").read_bytes()
    (tmp_path / "out" / "a_overlay.png").write_bytes(b"a file the user made")
    assert main(args) == 2
    assert re.search(r"out/a_labels.png and 1 more exist already; pass --overwrite", capsys.readouterr().err)
    assert (tmp_path / "out" / "a_overlay.png").read_bytes() == b"a file the user made"
    assert main(args + ["--overwrite"]) == 0
    assert (tmp_path / "out" / "a_labels.png").read_bytes() == first
    assert (tmp_path / "out" / "a_overlay.png").read_bytes().startswith(b"\x89PNG")
    # an --output that is a file: one line, not a traceback
    (tmp_path / "file").write_text("x")
    assert main(args[:-1] + [str(tmp_path / "file")]) == 2
    assert re.search(r"--output .*file is a file, not a folder", capsys.readouterr().err)


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(19, 1, name="head")
    model = keras.Model(inp, {"logits": conv(inp)})
    kernel = conv.kernel.numpy()
    kernel[0, 0, 1, 3] = np.nan
    conv.kernel.assign(kernel)
    path = tmp_path_factory.mktemp("nan") / "diverged.keras"
    model.save(path)
    return str(path)


@pytest.mark.parametrize("command", [
    ["predict", "IMAGE", "--dataset", "cityscapes", "--output", "OUT"],
    ["export", "--format", "saved_model", "--output", "OUT"],
    ["eval", "--dataset", "cityscapes", "--data-dir", "OUT"],
])
def test_nonfinite_weights_are_refused_unless_allowed(tmp_path, nan_checkpoint, capsys, command):
    image = tmp_path / "a.png"
    write_png(str(image), np.full((9, 13, 3), 10, np.uint8))
    args = [str(image) if a == "IMAGE" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    args[1:1] = ["--checkpoint", nan_checkpoint]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"diverged.keras: weights hold NaN or Inf, or a negative BatchNorm variance \(head/kernel; .*--allow-nonfinite", err), err
    assert not (tmp_path / "out").exists()
    if command[0] == "predict":  # the flag lets the user look at it anyway
        assert main(args + ["--allow-nonfinite"]) == 0


def test_python_exports_refuse_nonfinite_weights(tmp_path, nan_checkpoint):
    from gsto_tf.checkpoints import CheckpointError
    from gsto_tf.export import export_saved_model, export_tflite

    model = keras.saving.load_model(nan_checkpoint)
    with pytest.raises(CheckpointError, match="weights hold NaN or Inf"):
        export_saved_model(model, tmp_path / "sm")
    with pytest.raises(CheckpointError, match="weights hold NaN or Inf"):
        export_tflite(model, tmp_path / "m.tflite", (8, 8))
    assert not list(tmp_path.iterdir())


def test_damaged_keras_file_is_named_as_damaged_not_missing(tmp_path, checkpoint, capsys):
    from gsto_tf.checkpoints import CheckpointError, load_checkpoint

    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(open(checkpoint, "rb").read()[:200])
    with pytest.raises(CheckpointError, match=r"damaged.keras: not a Keras archive .*damaged or another kind"):
        load_checkpoint(damaged)
    write_png(str(tmp_path / "a.png"), np.zeros((9, 13, 3), np.uint8))
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(damaged), "--dataset", "cityscapes",
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a Keras archive" in err and "not found" not in err
