import os

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from data_utils import tiny_cityscapes, tiny_lip, tiny_pascal_context, write_png
from gsto_tf.data import (
    DatasetError,
    available_datasets,
    build_eval_dataset,
    build_train_dataset,
    ensure_synthetic,
    get_dataset_spec,
    list_samples,
)
from gsto_tf.data.decode import read_checked
from gsto_tf.data.synthetic import generate_sample


def test_cityscapes_label_mapping_table():
    spec = get_dataset_spec("cityscapes")
    raw = np.arange(256, dtype=np.uint8)
    train = spec.map_labels(raw)
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for r in range(256):  # labelIds are 0..33: the others void; 34..255 are no labelIds (errors, -1)
        assert train[r] == expected.get(r, 255 if r < 34 else -1), r
    np.testing.assert_array_equal(spec.map_labels(tf.constant(raw)).numpy(), train)  # tf == numpy
    assert list(spec.unmap_labels(np.arange(19))) == sorted(expected, key=expected.get)


def test_pascal_context_59_vs_60():
    raw = np.array([0, 1, 2, 59, 255, 60], np.uint8)
    np.testing.assert_array_equal(get_dataset_spec("pascal_context").map_labels(raw), [255, 0, 1, 58, 255, -1])
    np.testing.assert_array_equal(get_dataset_spec("pascal_context_60").map_labels(raw), [0, 1, 2, 59, 255, -1])
    assert get_dataset_spec("pascal_context").num_classes == 59
    assert get_dataset_spec("pascal_context_60").class_names[0] == "background"


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="built-in: .*cityscapes.*lip.*or the path of a dataset card"):
        get_dataset_spec("ade20k")
    assert {"camvid", "cityscapes", "pascal_context", "pascal_context_60", "lip", "synthetic"} == set(available_datasets())


def test_missing_folder_shows_layout_and_source(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)leftImg8bit/\{split\}.*gtFine.*cityscapes-dataset.com"):
        list_samples("cityscapes", str(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"(?s)SegmentationContext.*VOC2010"):
        list_samples("pascal_context", str(tmp_path), "val")


def test_image_without_label_is_named(tmp_path):
    root = tiny_cityscapes(str(tmp_path))
    os.remove(f"{root}/gtFine/val/aachen/aachen_000001_000019_gtFine_labelIds.png")
    with pytest.raises(DatasetError, match="image without label: .*aachen_000001_000019_leftImg8bit.png"):
        list_samples("cityscapes", root, "val")


def test_eval_dataset_maps_labels_at_original_size(tmp_path):
    root = tiny_cityscapes(str(tmp_path))
    sample = next(iter(build_eval_dataset("cityscapes", root)))
    assert sample["image"].shape == (20, 30, 3) and sample["label"].shape == (20, 30)
    raw = np.asarray(__import__("PIL.Image").Image.open(
        f"{root}/gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"))
    np.testing.assert_array_equal(sample["label"].numpy(), get_dataset_spec("cityscapes").map_labels(raw))
    assert sample["path"].numpy().decode().endswith("aachen_000000_000019_leftImg8bit.png")


def test_label_of_other_size_and_bad_values_name_the_file(tmp_path):
    root = tiny_cityscapes(str(tmp_path))
    write_png(f"{root}/gtFine/val/aachen/aachen_000002_000019_gtFine_labelIds.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DatasetError, match=r"aachen_000002_000019_gtFine_labelIds.png: label size \(5, 5\) differs "
                                           r"from image size \(20, 30\) of .*aachen_000002_000019_leftImg8bit.png$"):
        list(read_checked(build_eval_dataset("cityscapes", root)))
    pc = tiny_pascal_context(str(tmp_path / "pc"), max_label=80)  # 60..80 are not classes
    with pytest.raises(DatasetError, match=r"2008_00000\d.png: label values \[60 .*\] are neither a class nor v"):
        list(read_checked(build_eval_dataset("pascal_context", pc)))


def test_undecodable_image_fails(tmp_path):
    root = tiny_cityscapes(str(tmp_path))
    with open(f"{root}/leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png", "wb") as f:
        f.write(b"not a png")
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(build_eval_dataset("cityscapes", root))


def test_train_pipeline_pads_with_ignore_and_normalised_zero(tmp_path):
    root = tiny_cityscapes(str(tmp_path), split="train", n=4)
    ds = build_train_dataset("cityscapes", root, global_batch_size=2, seed=3, crop_size=(40, 48), scale_range=(1, 1),
                             base_size=30)
    images, labels = next(iter(ds))
    assert images.shape == (2, 40, 48, 3) and labels.shape == (2, 40, 48) and labels.dtype == tf.int32
    # the 20x30 image is padded bottom/right to 40x48: pad rows/cols are ignore with a zero image
    pad = np.zeros((40, 48), bool)
    pad[20:, :] = True
    labels_np, images_np = labels.numpy(), images.numpy()
    for b in range(2):
        lab, img = labels_np[b], images_np[b]
        flipped = np.all(lab[:20, :18] == 255)  # a flip moves the padded columns to the left
        region = pad.copy()
        region[:, :18] = True if flipped else region[:, :18]
        region[:, 30:] = region[:, 30:] if flipped else True
        assert np.all(lab[region] == 255) and np.all(img[region] == 0)
        assert set(np.unique(lab)) <= set(range(19)) | {255}


def test_same_seed_same_batches_and_exact_resume(tmp_path):
    root = tiny_cityscapes(str(tmp_path), split="train", n=6)

    def batches(**kw):
        ds = build_train_dataset("cityscapes", root, global_batch_size=2, crop_size=(16, 16), base_size=30, **kw)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(4)]

    a, b, c = batches(seed=1), batches(seed=1), batches(seed=2)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    resumed = batches(seed=1, start_step=2)
    for (xa, ya), (xr, yr) in zip(a[2:], resumed):  # crosses the epoch boundary (3 steps per epoch)
        np.testing.assert_array_equal(xa, xr)
        np.testing.assert_array_equal(ya, yr)


def test_lip_flip_swaps_left_and_right_classes(tmp_path):
    lab = np.zeros((16, 24), np.uint8)
    lab[:, :12] = 14  # left arm on the left
    lab[:, 12:] = 17  # right leg on the right
    root = tiny_lip(str(tmp_path), n=2, labels=lab)
    ds = build_train_dataset("lip", root, global_batch_size=1, seed=0, crop_size=(16, 24), scale_range=(1, 1),
                             base_size=24)
    seen = set()
    for _, y in ds.take(12):
        y = y.numpy()[0]
        if y[0, 0] == 14:
            np.testing.assert_array_equal(y, lab)
            seen.add("plain")
        else:  # flipped: mirrored and 14<->15, 16<->17 swapped
            expected = np.where(lab == 14, 15, np.where(lab == 17, 16, lab))[:, ::-1]
            np.testing.assert_array_equal(y, expected)
            seen.add("flipped")
    assert seen == {"plain", "flipped"}


def test_synthetic_is_deterministic_multiscale_and_atomic(tmp_path):
    a = generate_sample(np.random.default_rng([0, 1, 5]), 128, 256)
    b = generate_sample(np.random.default_rng([0, 1, 5]), 128, 256)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    spec = get_dataset_spec("synthetic")
    widths = []
    for i in range(30):
        _, raw = generate_sample(np.random.default_rng([0, 1, i]), 128, 256)
        train = spec.map_labels(raw)
        assert set(np.unique(train)) <= set(range(8)) | {255}
        for cls in (5, 6):  # car, boat
            comps, n = ndimage.label(train == cls)
            for sl in ndimage.find_objects(comps):
                widths.append(sl[1].stop - sl[1].start)
    assert min(widths) <= 8 and max(widths) >= 60  # same classes at very different scales

    root = ensure_synthetic(str(tmp_path), height=32, width=64, train=4, val=2)
    assert len(list_samples("synthetic", root, "train")) == 4 and len(list_samples("synthetic", root, "val")) == 2
    stamp = os.path.getmtime(os.path.join(root, "DONE"))
    assert ensure_synthetic(str(tmp_path), height=32, width=64, train=4, val=2) == root
    assert os.path.getmtime(os.path.join(root, "DONE")) == stamp  # reused, not regenerated
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".synthetic-")]
