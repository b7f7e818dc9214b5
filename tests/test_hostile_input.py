"""Hostile and unusual input: each case ends in one line that names the file, key or argument, exit status 2, and
nothing written or lost. The commands run in this process (their exit codes and stderr), as a user runs them."""

import os

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from data_utils import write_png
from gsto_tf.cli import main
from gsto_tf.data import DatasetError, list_samples, read_card
from gsto_tf.data.card import DatasetCardError
from gsto_tf.data.decode import read_image_file
from gsto_tf.evaluation import Predictor
from gsto_tf.images import MAX_IMAGE_PIXELS, load_rgb
from gsto_tf.tables import write_csv
from gsto_tf.training.config import ConfigError, make_config
from gsto_tf.user_input import YAMLInputError, load_yaml
from test_dataset_cards import MINIMAL_CARD, tiny_camvid, write_card


def _fails(capsys, args, *expected):
    """``args`` exit with 2 and one stderr line holding each of ``expected``."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    inputs = keras.Input((None, None, 3))
    path = tmp_path_factory.mktemp("ckpt") / "pointwise.keras"
    keras.Model(inputs, {"logits": keras.layers.Conv2D(11, 1)(inputs)}).save(path)
    return str(path)


# --- YAML that is too deep, too long, or says a key twice -------------------------------------------------------------

def test_yaml_nested_thousands_deep_is_refused_everywhere(tmp_path, capsys):
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(YAMLInputError, match=r"^where: not valid YAML \(nested more than 32 levels deep"):
        load_yaml(deep, "where")
    card = tmp_path / "deep.yaml"
    card.write_text(yaml.safe_dump(MINIMAL_CARD) + f"source: {deep}\n")
    with pytest.raises(DatasetCardError, match=rf"^dataset card {card}: not valid YAML \(nested more than 32"):
        read_card(str(card))
    config = tmp_path / "c.yaml"
    config.write_text(f"train: {deep}\n")
    _fails(capsys, ["train", "--config", str(config)], f"--config {config}: not valid YAML (nested more than 32")
    _fails(capsys, ["train", "--set", f"train.lr={deep}"], "--set train.lr: not valid YAML (nested more than 32")


def test_integers_of_thousands_of_digits_are_refused(tmp_path, capsys):
    huge = "9" * 5000
    card = write_card(tmp_path / "c.yaml", class_weights=[1.0] * 11)
    with open(card) as f:
        text = f.read().replace("1.0", huge, 1)
    with open(card, "w") as f:
        f.write(text)
    with pytest.raises(DatasetCardError, match=rf"^dataset card {card}: not valid YAML \(an integer of 5000 digits"):
        read_card(card)
    _fails(capsys, ["data", "verify", "--dataset", card], f"dataset card {card}: not valid YAML (an integer of 5000")
    _fails(capsys, ["train", "--set", f"train.lr={huge}"], "--set train.lr: not valid YAML (an integer of 5000 digits")
    # a float that overflows is not a number a config takes
    with pytest.raises(ConfigError, match="train.lr must be a finite number"):
        make_config("synthetic", sets=["train.lr=" + huge + ".0"])


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(YAMLInputError, match=r"key 'lr' given twice"):
        load_yaml("train:\n  lr: 0.1\n  lr: 0.2\n", "x.yaml")
    card = tmp_path / "twice.yaml"
    card.write_text(yaml.safe_dump(MINIMAL_CARD) + "name: other\n")
    with pytest.raises(DatasetCardError, match=r"key 'name' given twice"):
        read_card(str(card))


# --- cards: names, values and paths ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/tmp/X", "../../..", "a/b", "\x1b[31mred", ".hidden", "x" * 65, "-rf"])
def test_card_name_must_be_a_plain_name(tmp_path, name):
    with pytest.raises(DatasetCardError, match=r"name: expected a plain name \(letters, digits"):
        read_card(write_card(tmp_path / "c.yaml", name=name))


def test_card_values_and_paths_stay_in_bounds(tmp_path):
    with pytest.raises(DatasetCardError, match=r"class_weights: expected a finite positive number, got inf"):
        read_card(write_card(tmp_path / "c.yaml", class_weights=[float("inf")] + [1.0] * 10))
    for path in ("/etc", "../outside", "a/../../b"):
        with pytest.raises(DatasetCardError, match=r"splits.train.images: expected a path inside --data-dir"):
            read_card(write_card(tmp_path / "c.yaml", splits={"train": {"images": path, "labels": "l"}}))
    with pytest.raises(DatasetCardError, match=r"splits.train.list: expected a path inside --data-dir"):
        read_card(write_card(tmp_path / "c.yaml", layout="list", splits={"train": {"list": "/etc/passwd"}}))
    read_card(write_card(tmp_path / "c.yaml", splits={"train": {"images": "a/./b/../c", "labels": "l"}}))  # inside


@pytest.mark.parametrize("evaluation, message", [
    ({"scales": [1000]}, "evaluation: scale 1000 is outside (0, 4]"),
    ({"mode": "slide", "crop_size": [1, 1]}, "evaluation: slide window 1x1 is smaller than 16x16"),
    ({"mode": "slide", "crop_size": [64, 64], "stride": [1, 1]},
     "evaluation: slide stride 1x1 must be between a quarter of the window and the window (64x64)"),
])
def test_inference_settings_are_bounded_when_the_card_is_read(tmp_path, evaluation, message):
    with pytest.raises(DatasetCardError, match=rf"c.yaml: {message.replace('(', '[(]').replace(')', '[)]')}"):
        read_card(write_card(tmp_path / "c.yaml", evaluation=evaluation))


def test_eval_flags_are_bounded_before_evaluating(tmp_path, checkpoint, capsys):
    tiny_camvid(tmp_path / "data", n=1, splits=("val",))
    data = ["--dataset", "camvid", "--data-dir", str(tmp_path / "data"), "--checkpoint", checkpoint]
    _fails(capsys, ["eval", *data, "--scales", "1000"], "eval: --scales / --crop-size: scale 1000 is outside (0, 4]")
    _fails(capsys, ["eval", *data, "--mode", "slide", "--crop-size", "1x1"],
           "slide window 1x1 is smaller than 16x16")
    assert not (tmp_path / "eval").exists()
    with pytest.raises(ValueError, match="scale 5 is outside"):
        Predictor(keras.Sequential([keras.layers.Identity()]), scales=(1.0, 5.0))


# --- files: encodings, sizes, kinds ------------------------------------------------------------------------------------

def test_list_files_in_other_encodings_quoting_and_bom(tmp_path):
    data = tmp_path / "data"
    for name in ("a b.png", "c#d.png"):
        write_png(str(data / "img" / name), np.zeros((4, 6, 3), np.uint8))
        write_png(str(data / "lab" / name), np.zeros((4, 6), np.uint8))
    (data / "train.txt").write_text('\ufeff"img/a b.png" "lab/a b.png"  # a name with a space\n'
                                    "'img/c#d.png' 'lab/c#d.png'\n", encoding="utf-8")
    card = write_card(tmp_path / "list.yaml", layout="list", splits={"train": {"list": "train.txt"}})
    assert [os.path.basename(i) for i, _ in list_samples(card, str(data), "train")] == ["a b.png", "c#d.png"]
    (data / "train.txt").write_bytes("img/\xe9t\xe9.png lab/x.png\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"train.txt: not UTF-8 text \(byte 4\); save the list as UTF-8"):
        list_samples(card, str(data), "train")
    (data / "train.txt").write_text('"img/a b.png lab/a.png\n')
    with pytest.raises(DatasetError, match=r"train.txt, line 1: No closing quotation"):
        list_samples(card, str(data), "train")


def test_file_names_that_are_not_utf8_are_named(tmp_path, capsys):
    tiny_camvid(tmp_path / "data", n=1, splits=("train", "val"))
    raw = os.fsencode(str(tmp_path / "data" / "train")) + b"/caf\xe9.jpg"
    os.rename(os.fsencode(str(tmp_path / "data" / "train" / "0001TP_000000.jpg")), raw)
    os.rename(os.fsencode(str(tmp_path / "data" / "trainannot" / "0001TP_000000.png")),
              os.fsencode(str(tmp_path / "data" / "trainannot")) + b"/caf\xe9.png")
    with pytest.raises(DatasetError, match=r"the file name '.*caf\\udce9.jpg' is not UTF-8; rename it"):
        list_samples("camvid", str(tmp_path / "data"), "train")
    run_dir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    _fails(capsys, ["train", "--steps", "1", "--run-dir", run_dir], "the path is not UTF-8")
    assert os.listdir(tmp_path) == ["data"]


def test_label_files_with_upper_case_suffix_are_found(tmp_path):
    write_png(str(tmp_path / "img" / "a.JPG"), np.zeros((4, 6, 3), np.uint8))
    write_png(str(tmp_path / "lab" / "a.PNG"), np.zeros((4, 6), np.uint8))
    card = write_card(tmp_path / "c.yaml", splits={"train": {"images": "img", "labels": "lab"}})
    assert list_samples(card, str(tmp_path), "train") == [(str(tmp_path / "img/a.JPG"), str(tmp_path / "lab/a.PNG"))]


def test_images_over_the_pixel_cap_are_refused_before_decoding(tmp_path, checkpoint, capsys):
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 10  # just over the cap; the PNG of a flat image is tiny
    big = tmp_path / "data" / "train" / "0001TP_000000.png"
    tiny_camvid(tmp_path / "data", n=1, splits=("train", "val"))
    os.remove(tmp_path / "data" / "train" / "0001TP_000000.jpg")
    Image.new("RGB", (side, side)).save(big)
    Image.new("L", (side, side)).save(tmp_path / "data" / "trainannot" / "0001TP_000000.png")
    message = f"{big}: {side}x{side} image; at most 50 megapixels are read (resize it first)"
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_image_file(str(big))
    assert main(["data", "verify", "--dataset", "camvid", "--data-dir", str(tmp_path / "data"),
                 "--split", "train"]) == 1
    assert message in capsys.readouterr().out
    with pytest.raises(ValueError, match=rf"cannot read image {big}: {side}x{side} image is 50 megapixels"):
        load_rgb(str(big))
    _fails(capsys, ["predict", str(big), "--checkpoint", checkpoint, "--dataset", "camvid", "--output",
                    str(tmp_path / "out")], f"{big}: {side}x{side} image is 50 megapixels")
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def corrupt_scan_data(path):
    """Break a JPEG in the middle: header and end marker intact, markers libjpeg cannot read in the scan data."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    count = min(2000, len(data) - start - 16)
    data[start:start + count] = (b"\xff\x5c" + bytes(5)) * (count // 7) + bytes(count % 7)  # 0xFF5C: no such marker
    path.write_bytes(bytes(data))


def test_corrupt_jpeg_is_named_with_the_decoders_reason(tmp_path):
    path = tmp_path / "bad.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path, quality=90)
    corrupt_scan_data(path)
    with pytest.raises(DatasetError) as info:
        read_image_file(str(path))
    assert str(info.value).startswith(f"{path}: undecodable (") and "Graph execution" not in str(info.value)
    assert "JPEG" in str(info.value), str(info.value)


def test_training_names_a_corrupt_file_the_decoder_does_not(tmp_path, capsys):
    tiny_camvid(tmp_path / "data", n=2, h=24, w=32, splits=("train", "val"))
    path = tmp_path / "data" / "train" / "0001TP_000001.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path, quality=90)
    corrupt_scan_data(path)
    card = write_card(tmp_path / "c.yaml", recipe={"data": {"crop_size": [16, 16]}})
    _fails(capsys, ["train", "--dataset", card, "--data-dir", str(tmp_path / "data"), "--model",
                    "hrnetv2_w18_small_v1", "--steps", "2", "--batch-size", "2", "--run-dir", str(tmp_path / "run")],
           f"{path}: undecodable (")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_only_regular_files_are_read_as_checkpoints_and_photos(tmp_path, checkpoint, capsys, kind):
    target = tmp_path / "m.keras"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        os.symlink("/dev/zero", target)
    _fails(capsys, ["eval", "--checkpoint", str(target)], f"{target}: not a regular file")
    photo = tmp_path / "photo.png"
    if kind == "fifo":
        os.mkfifo(photo)
    else:
        os.symlink("/dev/zero", photo)
    _fails(capsys, ["predict", str(photo), "--checkpoint", checkpoint, "--dataset", "camvid", "--output",
                    str(tmp_path / "out")],
           f"cannot read image {photo}: not a regular file")


def test_cache_folder_that_is_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("GSTO_TF_CACHE", str(tmp_path / "cache"))
    _fails(capsys, ["data", "verify"], "($GSTO_TF_CACHE): a part of the path is a file, not a folder")


# --- what leaves the package: CSV cells, TFLite inputs ----------------------------------------------------------------

def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path):
    path = write_csv([{"class": "=HYPERLINK(\"http://x\")", "iou": "-0.5"}, {"class": "@sum", "iou": "n/a"}],
                     str(tmp_path / "m.csv"))
    assert open(path).read().splitlines() == ["class,iou", "\"'=HYPERLINK(\"\"http://x\"\")\",-0.5", "'@sum,n/a"]


def test_tflite_runner_refuses_nan_unnormalised_and_oversized_images(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from gsto_tf.export import TFLiteRunner, export_tflite

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, {"logits": keras.layers.Conv2D(3, 1)(inputs)})
    runner = TFLiteRunner(export_tflite(model, str(tmp_path / "m.tflite"), None), max_pixels=64 * 64)
    assert runner(np.zeros((8, 8, 3), np.float32)).shape == (1, 8, 8, 3)
    for bad in (np.full((8, 8, 3), np.nan, np.float32), np.full((8, 8, 3), 200.0, np.float32)):
        with pytest.raises(ValueError, match=r"a float image must be normalised \(values within \+-4\)"):
            runner(bad)
    with pytest.raises(ValueError, match=r"a 65x64 image is more than max_pixels=4096 for this dynamic-size model"):
        runner(np.zeros((65, 64, 3), np.uint8))


def test_negative_batch_norm_variance_is_refused_like_nan(tmp_path, capsys):
    inputs = keras.Input((None, None, 3))
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(inputs, {"logits": keras.layers.Conv2D(11, 1)(bn(inputs))})
    bn.moving_variance.assign([1.0, -0.5, 1.0])
    model.save(tmp_path / "m.keras")
    _fails(capsys, ["eval", "--checkpoint", str(tmp_path / "m.keras"), "--dataset", "camvid"],
           "m.keras: weights hold NaN or Inf, or a negative BatchNorm variance (bn/moving_variance;")


def test_browse_names_a_bad_label(tmp_path, capsys):
    tiny_camvid(tmp_path / "data", n=1, h=24, w=32, splits=("train",), labels=[np.full((24, 32), 12, np.uint8)])
    card = write_card(tmp_path / "c.yaml", recipe={"data": {"crop_size": [16, 16]}})
    _fails(capsys, ["data", "browse", "--dataset", card, "--data-dir", str(tmp_path / "data"), "--num", "1",
                    "--output", str(tmp_path / "b.png")],
           f"{tmp_path}/data/trainannot/0001TP_000000.png: label values [12] are neither a class nor void")
    assert not (tmp_path / "b.png").exists()
