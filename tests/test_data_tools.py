"""`gsto-tf data verify|browse|prepare` and the PASCAL-Context .mat conversion, on tiny real-layout datasets."""

import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from data_utils import tiny_cityscapes, tiny_lip, write_png
from gsto_tf.cli import main as run
from gsto_tf.data import DatasetError, build_eval_dataset, get_dataset_spec
from gsto_tf.data.decode import read_checked
from gsto_tf.data.pascal_context_mat import PASCAL_CONTEXT_459_IDS, convert_label_map, prepare_pascal_context
from gsto_tf.data.verify import verify_dataset


def test_459_to_59_table():
    ids = PASCAL_CONTEXT_459_IDS
    assert len(ids) == 60 and ids[0] == 0 and list(ids) == sorted(set(ids)) and max(ids) == 458
    # spot checks against the 459-label list (labels.txt, 1-based): 2 aeroplane, 9 bag, 458 wood
    lab = np.array([[2, 9, 458], [1, 3, 459]], np.uint16)  # 1 accordion, 3 air conditioner, 459: not kept
    out = convert_label_map(lab)
    np.testing.assert_array_equal(out, [[1, 2, 59], [0, 0, 0]])
    names60 = get_dataset_spec("pascal_context_60").class_names
    assert (names60[1], names60[2], names60[59]) == ("aeroplane", "bag", "wood")
    # every kept id lands on its rank; the 59-class spec then drops background
    full = convert_label_map(np.array([ids], np.uint16))
    np.testing.assert_array_equal(full[0], np.arange(60))
    np.testing.assert_array_equal(get_dataset_spec("pascal_context").map_labels(full)[0], [255] + list(range(59)))
    with pytest.raises(DatasetError, match="0..459"):
        convert_label_map(np.array([[460]]))


def _mat_release(root, ids=("2008_000002", "2008_000003", "2008_000005"), h=12, w=14):
    """Original-release layout: trainval/{id}.mat (459-label LabelMap) + VOC2010 JPEGImages + Main lists."""
    rng = np.random.default_rng(0)
    maps = {}
    for i in ids:
        lab = rng.choice(np.array([0, 1, 2, 9, 23, 100, 458, 459], np.uint16), (h, w))
        os.makedirs(f"{root}/trainval", exist_ok=True)
        savemat(f"{root}/trainval/{i}.mat", {"LabelMap": lab})
        write_png(f"{root}/VOC2010/JPEGImages/{i}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        maps[i] = lab
    os.makedirs(f"{root}/VOC2010/ImageSets/Main", exist_ok=True)
    with open(f"{root}/VOC2010/ImageSets/Main/train.txt", "w") as f:
        f.write(f"{ids[0]}\n{ids[1]}\n")
    with open(f"{root}/VOC2010/ImageSets/Main/val.txt", "w") as f:
        f.write(f"{ids[2]}\n")
    return maps


def test_prepare_converts_mat_files_to_png_layout(tmp_path, capsys):
    maps = _mat_release(str(tmp_path))
    rc = run(["data", "prepare", "--data-dir", str(tmp_path), "--mat-dir", str(tmp_path / "trainval")])
    assert rc == 0 and "train 2, val 1" in capsys.readouterr().out
    png = np.asarray(Image.open(tmp_path / "VOC2010/SegmentationClassContext/2008_000005.png"))
    np.testing.assert_array_equal(png, convert_label_map(maps["2008_000005"]))
    # and the normal pipeline reads it, 59 classes: background -> ignore
    sample = next(iter(build_eval_dataset("pascal_context", str(tmp_path))))
    np.testing.assert_array_equal(sample["label"].numpy(), get_dataset_spec("pascal_context").map_labels(png))
    assert not [p for p in os.listdir(tmp_path / "VOC2010/SegmentationClassContext") if p.startswith(".tmp")]


def test_prepare_names_a_corrupt_mat_file(tmp_path):
    _mat_release(str(tmp_path))
    with open(tmp_path / "trainval/2008_000003.mat", "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DatasetError, match="2008_000003.mat"):
        prepare_pascal_context(str(tmp_path / "trainval"), str(tmp_path), log=lambda *_: None)


def test_verify_reports_every_bad_file_and_counts(tmp_path, capsys):
    root = tiny_cityscapes(str(tmp_path), split="val", n=5)
    tiny_cityscapes(root, split="train", n=2)
    label = "{}/gtFine/val/aachen/aachen_{:06d}_000019_gtFine_labelIds.png"
    image = "{}/leftImg8bit/val/aachen/aachen_{:06d}_000019_leftImg8bit.png"
    os.remove(label.format(root, 0))  # image without label
    write_png(label.format(root, 1), np.zeros((4, 4), np.uint8))  # other size
    with open(image.format(root, 2), "wb") as f:
        f.write(b"not a png")  # undecodable
    rc = run(["data", "verify", "--dataset", "cityscapes", "--data-dir", root])
    out = capsys.readouterr().out
    assert rc == 1
    assert "cityscapes train: 2 samples, 0 bad\n  note: the published train split has 2975 samples" in out
    assert "cityscapes val: 5 samples, 3 bad" in out
    assert f"BAD {image.format(root, 0)}: image without label" in out
    assert f"BAD {label.format(root, 1)}: label size (4, 4) differs from image size (20, 30)" in out
    assert f"BAD {image.format(root, 2)}: undecodable image (not a PNG, JPEG, BMP or GIF file)" in out
    assert out.strip().endswith("FAILED: 3 bad file(s)")

    lip = tiny_lip(str(tmp_path / "lip"), split="val", n=2)
    write_png(f"{lip}/TrainVal_parsing_annotations/val_segmentations/0001.png", np.full((16, 24), 42, np.uint8))
    (report,) = verify_dataset("lip", lip, ["val"])
    assert report.problems == [(f"{lip}/TrainVal_parsing_annotations/val_segmentations/0001.png",
                                "label values [42] are neither a class nor void")]


def test_verify_missing_folder_shows_layout(tmp_path, capsys):
    assert run(["data", "verify", "--dataset", "lip", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "TrainVal_images/{split}_images" in err and "sysu-hcp.net/lip" in err


def test_browse_writes_grid_with_palette_overlay(tmp_path):
    lab = np.full((16, 24), 14, np.uint8)
    root = tiny_lip(str(tmp_path), n=2, labels=lab)
    out = tmp_path / "grid.png"
    assert run(["data", "browse", "--dataset", "lip", "--data-dir", root, "--num", "2", "--crop-size", "16x24",
                "--output", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (1 * (16 + 4), 2 * (2 * 24 + 2 + 4), 3)
    # the overlay half of each tile is 50% image + 50% palette colour of the (possibly flipped) arm class
    palette = get_dataset_spec("lip").palette_array
    overlay = grid[:16, 26:50].astype(int)
    image = grid[:16, :24].astype(int)
    colours = [palette[14], palette[15]]
    assert any(np.all(np.abs(overlay - (0.5 * image + 0.5 * c)) <= 1) for c in colours)


def test_pipeline_names_undecodable_image_and_label_files(tmp_path):
    import tensorflow as tf

    root = tiny_cityscapes(str(tmp_path), n=2)
    image = f"{root}/leftImg8bit/val/aachen/aachen_000001_000019_leftImg8bit.png"
    with open(image, "wb") as f:
        f.write(b"not an image at all")
    # iterated directly: TensorFlow's error, with the path in it
    with pytest.raises(tf.errors.InvalidArgumentError, match="aachen_000001_000019_leftImg8bit.png: undecodable"):
        list(build_eval_dataset("cityscapes", root))
    # iterated as evaluation does: one line
    with pytest.raises(DatasetError, match=r"^\S*aachen_000001_000019_leftImg8bit.png: undecodable image \(not a "
                                           r"PNG, JPEG, BMP or GIF file\)$"):
        list(read_checked(build_eval_dataset("cityscapes", root)))
    root = tiny_cityscapes(str(tmp_path / "b"), n=2)
    label = f"{root}/gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(label, format="JPEG")  # wrong format, .png name
    with pytest.raises(DatasetError, match="aachen_000000_000019_gtFine_labelIds.png: labels must be .* JPEG data"):
        list(read_checked(build_eval_dataset("cityscapes", root)))
