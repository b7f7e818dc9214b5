"""tfds builders (pascal_context, lip) and Cityscapes through tfds' own builder, on dummy data in the real layouts.

The builders are tested twice: with tfds' own ``DatasetBuilderTestCase`` (needs the ``dill`` package, which
``tensorflow_datasets.testing`` imports) and with a plain ``tfds.load`` from a manual_dir, which is what users do.
"""

import os
import shutil
import tempfile
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from scipy.io import savemat

import gsto_tf.data.tfds_builders as builders
from data_utils import tiny_lip, tiny_pascal_context, write_png
from gsto_tf.data import DatasetError, get_dataset_spec
from gsto_tf.data.pascal_context_mat import convert_label_map


def _manual(manual_dir):
    return {"download_config": tfds.download.DownloadConfig(manual_dir=str(manual_dir))}


def test_pascal_context_tfds_load_from_png_layout(tmp_path):
    manual = tmp_path / "manual"
    tiny_pascal_context(str(manual), split="train", ids=("2008_000002", "2008_000003", "2008_000004"))
    tiny_pascal_context(str(manual), split="val", ids=("2008_000010",))
    ds = tfds.load("pascal_context", split="val", data_dir=str(tmp_path / "tfds"),
                   download_and_prepare_kwargs=_manual(manual))
    (example,) = list(ds)
    expected = np.asarray(__import__("PIL.Image").Image.open(
        manual / "VOC2010/SegmentationClassContext/2008_000010.png"))
    np.testing.assert_array_equal(example["segmentation_label"].numpy()[..., 0], expected)
    assert example["image"].shape == (18, 22, 3) and example["image_id"].numpy() == b"2008_000010"
    assert tfds.builder("pascal_context", data_dir=str(tmp_path / "tfds")).info.splits["train"].num_examples == 3
    train_ids = get_dataset_spec("pascal_context").map_labels(example["segmentation_label"][..., 0])
    assert train_ids.dtype == tf.int32 and set(np.unique(train_ids.numpy())) <= set(range(59)) | {255}


def test_pascal_context_tfds_load_from_original_mat_files(tmp_path):
    manual = tmp_path / "manual"
    rng = np.random.default_rng(1)
    for split, ids in (("train", ["2008_000002"]), ("val", ["2008_000003", "2008_000007"])):
        os.makedirs(manual / "VOC2010/ImageSets/Main", exist_ok=True)
        (manual / f"VOC2010/ImageSets/Main/{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            write_png(f"{manual}/VOC2010/JPEGImages/{i}.jpg", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
            os.makedirs(manual / "trainval", exist_ok=True)
            savemat(f"{manual}/trainval/{i}.mat", {"LabelMap": rng.choice(np.array([2, 9, 77, 458], np.uint16),
                                                                          (10, 12))})
    ds = tfds.load("pascal_context", split="val", data_dir=str(tmp_path / "tfds"),
                   download_and_prepare_kwargs=_manual(manual))
    got = {ex["image_id"].numpy().decode(): ex["segmentation_label"].numpy()[..., 0] for ex in ds}
    from scipy.io import loadmat

    for i, lab in got.items():
        np.testing.assert_array_equal(lab, convert_label_map(loadmat(f"{manual}/trainval/{i}.mat")["LabelMap"]))
    assert sorted(got) == ["2008_000003", "2008_000007"]


def test_lip_tfds_load_and_missing_layout_message(tmp_path):
    manual = tmp_path / "manual"
    tiny_lip(str(manual), split="train", n=3)
    tiny_lip(str(manual), split="val", n=2)
    ds = tfds.load("lip", split="train", data_dir=str(tmp_path / "tfds"), download_and_prepare_kwargs=_manual(manual))
    labels = [ex["segmentation_label"].numpy() for ex in ds]
    assert len(labels) == 3 and all(lab.shape == (16, 24, 1) and lab.max() < 20 for lab in labels)
    # tfds checks for an empty manual_dir itself and shows our instructions; a wrong layout is our error
    with pytest.raises(AssertionError, match=r"(?s)does not exist or is empty.*TrainVal_images.*sysu-hcp"):
        tfds.load("lip", split="train", data_dir=str(tmp_path / "tfds2"),
                  download_and_prepare_kwargs=_manual(tmp_path / "empty"))
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "readme.txt").write_text("not LIP")
    with pytest.raises(DatasetError, match=r"(?s)folder not found: .*train_images.*sysu-hcp"):
        tfds.load("lip", split="train", data_dir=str(tmp_path / "tfds3"),
                  download_and_prepare_kwargs=_manual(tmp_path / "wrong"))


def _cityscapes_zips(manual):
    """The two manual zips of tfds' cityscapes builder, 1024x2048 (its fixed feature shape), one image per split."""
    os.makedirs(manual, exist_ok=True)
    raw = np.zeros((1024, 2048), np.uint8)
    raw[:512] = 7  # road
    raw[512:, :1024] = 26  # car
    raw[512:, 1024:] = 1  # ego vehicle: void
    image = np.zeros((1024, 2048, 3), np.uint8)
    tmp = os.path.join(manual, "src")
    with zipfile.ZipFile(f"{manual}/leftImg8bit_trainvaltest.zip", "w") as zl, \
            zipfile.ZipFile(f"{manual}/gtFine_trainvaltest.zip", "w") as zg:
        for split in ("train", "val", "test"):
            stem = f"{split}city_000000_000019"  # city names are [a-z-]+
            img = f"{tmp}/leftImg8bit/{split}/{split}city/{stem}_leftImg8bit.png"
            lab = f"{tmp}/gtFine/{split}/{split}city/{stem}_gtFine_labelIds.png"
            write_png(img, image)
            write_png(lab, raw)
            zl.write(img, os.path.relpath(img, tmp))
            zg.write(lab, os.path.relpath(lab, tmp))
    shutil.rmtree(tmp)
    return raw


def test_cityscapes_through_tfds_builder_maps_label_ids(tmp_path):
    raw = _cityscapes_zips(str(tmp_path / "manual"))
    ds = builders.load_cityscapes_tfds("val", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
    (example,) = list(ds)
    np.testing.assert_array_equal(example["label"].numpy(), get_dataset_spec("cityscapes").map_labels(raw))
    assert example["label"][0, 0] == 0 and example["label"][-1, 0] == 13 and example["label"][-1, -1] == 255
    with pytest.raises(DatasetError, match="leftImg8bit_trainvaltest.zip not found in manual_dir"):
        builders.load_cityscapes_tfds("val", data_dir=str(tmp_path / "t2"), manual_dir=str(tmp_path))


# --- tfds' own builder test case -------------------------------------------------------------------------------
try:
    import dill  # noqa: F401  (tensorflow_datasets.testing imports it)
    from tensorflow_datasets import testing as tfds_testing  # module, so pytest does not collect the base class
except ImportError:  # pragma: no cover - depends on the environment
    tfds_testing = None


def _builder_case(builder_class, write_dummy, splits):
    class Case(tfds_testing.DatasetBuilderTestCase):
        DATASET_CLASS = builder_class
        SPLITS = splits
        SKIP_CHECKSUMS = True  # manual download: no URLs
        MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False  # the shared layout readers use os / glob on local files
        def test_session(self, *args, **kwargs):  # TF's session helper (tfds uses it), named like a test
            return super().test_session(*args, **kwargs)

        test_session.__test__ = False  # so pytest does not collect it (it used to skip as "Not a test")

        @classmethod
        def setUpClass(cls):
            cls.EXAMPLE_DIR = tempfile.mkdtemp(prefix=f"dummy_{builder_class.name}_")
            write_dummy(cls.EXAMPLE_DIR)  # dummy data generated in the real layout, not committed
            super().setUpClass()

        @classmethod
        def tearDownClass(cls):
            super().tearDownClass()
            shutil.rmtree(cls.EXAMPLE_DIR, ignore_errors=True)

    Case.__name__ = f"{builder_class.__name__}BuilderTest"
    return Case


def _dummy_pascal(root):
    rng = np.random.default_rng(7)  # distinct pixels per image: tfds checks that splits do not overlap
    voc = f"{root}/VOC2010"
    for split, ids in (("train", ("2008_000002", "2008_000003")), ("val", ("2008_000004",))):
        os.makedirs(f"{voc}/ImageSets/SegmentationContext", exist_ok=True)
        with open(f"{voc}/ImageSets/SegmentationContext/{split}.txt", "w") as f:
            f.write("\n".join(ids) + "\n")
        for i in ids:
            write_png(f"{voc}/JPEGImages/{i}.jpg", rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
            write_png(f"{voc}/SegmentationClassContext/{i}.png", rng.integers(0, 60, (9, 11)).astype(np.uint8))


def _dummy_lip(root):
    rng = np.random.default_rng(8)
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            write_png(f"{root}/TrainVal_images/{split}_images/{split}{i}.jpg",
                      rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
            write_png(f"{root}/TrainVal_parsing_annotations/{split}_segmentations/{split}{i}.png",
                      rng.integers(0, 20, (9, 7)).astype(np.uint8))


if tfds_testing is not None:
    PascalContextBuilderTest = _builder_case(builders.PascalContext, _dummy_pascal, {"train": 2, "val": 1})
    LipBuilderTest = _builder_case(builders.Lip, _dummy_lip, {"train": 2, "val": 1})
else:
    @pytest.mark.skip(reason="tfds' DatasetBuilderTestCase needs the `dill` package (imported by tfds.testing)")
    def test_tfds_builder_test_cases():
        pass
