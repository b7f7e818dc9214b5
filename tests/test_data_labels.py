"""One image / label decoder in every reading path: `data verify`, the train and eval pipelines, the tfds builders.

Every bad file (a label that is not a single-channel 8-bit PNG, a truncated file, values that are no id of the
dataset) fails in each path with a one-line DatasetError that names the file and says what was found; palette
labels are read as their indices everywhere.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import gsto_tf.data.tfds_builders  # noqa: F401  (registers the builders)
from data_utils import tiny_cityscapes, tiny_lip, write_png
from gsto_tf.cli import main as run
from gsto_tf.data import DatasetError, build_eval_dataset, build_train_dataset, ensure_synthetic, get_dataset_spec
from gsto_tf.data.decode import read_checked, reading_data
from gsto_tf.data.verify import verify_dataset

H, W = 16, 24


def _ids(seed=0):
    return np.random.default_rng(seed).integers(0, 20, (H, W)).astype(np.uint8)  # LIP ids 0..19


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)


def _truncated(path, ids):
    write_png(path, ids)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-30])


BAD_LABELS = {
    "16bit": (lambda p, ids: _save(p, ids.astype(np.uint16) * 300), r"found a greyscale PNG \(16-bit\)"),
    "rgb": (lambda p, ids: _save(p, np.stack([ids] * 3, -1)), r"found an RGB PNG \(8-bit\)"),
    "grey_alpha": (lambda p, ids: Image.fromarray(np.stack([ids, np.full_like(ids, 255)], -1), "LA").save(p),
                   r"found a greyscale\+alpha PNG \(8-bit\)"),
    "jpeg_named_png": (lambda p, ids: _save(p, ids, format="JPEG"), r"found JPEG data"),
    "truncated": (_truncated, r"truncated label PNG \(no IEND chunk at its end\)"),
    "unknown_values": (lambda p, ids: write_png(p, np.where(ids == 3, 77, ids).astype(np.uint8)),
                       r"label values \[77\] are neither a class nor void"),
}


def _lip(root, bad=None, image_bad=False):
    """A tiny LIP (1 train, 1 val pair); ``bad`` rewrites the train label, ``image_bad`` cuts the train image."""
    tiny_lip(root, split="train", n=1, h=H, w=W, labels=_ids())
    tiny_lip(root, split="val", n=1, h=H, w=W, labels=_ids())
    image = f"{root}/TrainVal_images/train_images/0000.jpg"
    label = f"{root}/TrainVal_parsing_annotations/train_segmentations/0000.png"
    if bad:
        BAD_LABELS[bad][0](label, _ids())
    if image_bad:
        data = open(image, "rb").read()
        open(image, "wb").write(data[: len(data) // 2])
    return image, label


def _assert_one_line(exc, path, pattern):
    message = str(exc)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: ") and re.search(pattern, message), message


def _every_path_fails(tmp_path, path, pattern):
    root = str(tmp_path / "lip")
    # data verify
    (report,) = verify_dataset("lip", root, ["train"])
    assert len(report.problems) == 1 and report.problems[0][0] == path, report.problems
    assert re.search(pattern, report.problems[0][1]), report.problems
    # eval pipeline
    with pytest.raises(DatasetError) as info:
        list(read_checked(build_eval_dataset("lip", root, split="train")))
    _assert_one_line(info.value, path, pattern)
    # train pipeline, read as model.fit reads it
    with pytest.raises(DatasetError) as info, reading_data():
        next(iter(build_train_dataset("lip", root, global_batch_size=1, crop_size=(H, W))))
    _assert_one_line(info.value, path, pattern)
    # tfds builder
    with pytest.raises(DatasetError) as info:
        tfds.load("lip", split="train", data_dir=str(tmp_path / "tfds"), download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir=root)})
    _assert_one_line(info.value, path, pattern)


@pytest.mark.parametrize("kind", sorted(BAD_LABELS))
def test_bad_label_fails_in_every_path_naming_file_and_what_was_found(tmp_path, kind):
    _, label = _lip(str(tmp_path / "lip"), bad=kind)
    _every_path_fails(tmp_path, label, BAD_LABELS[kind][1])


def test_truncated_image_fails_in_every_path_naming_it(tmp_path):
    image, _ = _lip(str(tmp_path / "lip"), image_bad=True)
    _every_path_fails(tmp_path, image, r"truncated image \(no JPEG end marker at its end\)")


@pytest.mark.parametrize("bits", [8, 4])
def test_palette_labels_are_read_as_indices_in_every_path(tmp_path, bits):
    root = str(tmp_path / "lip")
    ids = _ids() if bits == 8 else _ids() % 16
    _lip(root)
    palette = get_dataset_spec("lip").palette_array  # what a viewer shows; the file holds the indices
    for split in ("train", "val"):
        label = Image.fromarray(ids, "P")
        label.putpalette(palette[: 1 << bits].ravel().tolist())
        label.save(f"{root}/TrainVal_parsing_annotations/{split}_segmentations/0000.png", bits=bits)
    assert Image.open(f"{root}/TrainVal_parsing_annotations/val_segmentations/0000.png").mode == "P"
    (report,) = verify_dataset("lip", root, ["val"])
    assert report.problems == []
    (sample,) = list(build_eval_dataset("lip", root))
    np.testing.assert_array_equal(sample["label"].numpy(), ids)
    _, labels = next(iter(build_train_dataset("lip", root, global_batch_size=1, crop_size=(H, W),
                                              scale_range=(1, 1), base_size=W)))
    flipped = np.array([15, 14, 17, 16, 19, 18])  # LIP left/right parts swap when the crop is flipped
    swapped = np.where(np.isin(ids, [14, 15, 16, 17, 18, 19]), flipped[np.clip(ids.astype(int) - 14, 0, 5)], ids)
    got = labels.numpy()[0]
    assert np.array_equal(got, ids) or np.array_equal(got, swapped[:, ::-1])
    ds = tfds.load("lip", split="val", data_dir=str(tmp_path / "tfds"), download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=root)})
    (example,) = list(ds)
    np.testing.assert_array_equal(example["segmentation_label"].numpy()[..., 0], ids)


def test_cityscapes_values_and_train_id_files_are_caught(tmp_path):
    root = tiny_cityscapes(str(tmp_path / "cs"), n=1)
    label = f"{root}/gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    raw = np.asarray(Image.open(label))
    write_png(label, np.where(raw == 7, 40, raw).astype(np.uint8))  # 40 is no Cityscapes labelId
    with pytest.raises(DatasetError, match=r"label values \[40\] are neither a class nor void$"):
        list(read_checked(build_eval_dataset("cityscapes", root)))
    # a train-id file (0..18, void = 255) where labelIds are expected: 255 is no labelId
    write_png(label, get_dataset_spec("cityscapes").map_labels(raw).astype(np.uint8))
    with pytest.raises(DatasetError, match=r"label values \[255\] .*a train-id file \(\*_gtFine_labelTrainIds"):
        list(read_checked(build_eval_dataset("cityscapes", root)))
    (report,) = verify_dataset("cityscapes", root, ["val"])
    assert "train-id file" in report.problems[0][1]


def test_model_fit_on_a_bad_file_is_one_line_naming_it(tmp_path):
    _, label = _lip(str(tmp_path / "lip"), bad="rgb")
    inputs = keras.Input((H, W, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(20, 1)(inputs))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
    ds = build_train_dataset("lip", str(tmp_path / "lip"), global_batch_size=1, crop_size=(H, W))
    with pytest.raises(tf.errors.InvalidArgumentError):  # what model.fit raises by itself: multi-line
        model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    with pytest.raises(DatasetError) as info, reading_data():
        model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    _assert_one_line(info.value, label, BAD_LABELS["rgb"][1])


def test_verify_notes_another_split_size_without_failing(tmp_path, capsys):
    data = ensure_synthetic(str(tmp_path), height=32, width=64, train=4, val=2)
    assert run(["data", "verify", "--dataset", "synthetic", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert "synthetic train: 4 samples, 0 bad" in out and "note: the published train split has 320" in out
    assert out.strip().endswith("OK")
