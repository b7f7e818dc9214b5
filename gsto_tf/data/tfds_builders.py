"""TensorFlow Datasets builders for PASCAL-Context and LIP, and reading Cityscapes through tfds' own builder.

Importing this module registers two tfds builders (tfds has none for these datasets):

* ``pascal_context``: ``manual_dir`` = the folder holding ``VOC2010/`` (JPEGImages + either the converted
  ``SegmentationClassContext/*.png`` with ``ImageSets/SegmentationContext/{train,val}.txt``, or the original
  per-image ``.mat`` files in ``{manual_dir}/trainval/`` which are converted on the fly with the 59-id table of
  :mod:`gsto_tf.data.pascal_context_mat`). Labels are stored as the converted 0..59 ids (0 = background);
  ``get_dataset_spec('pascal_context' | 'pascal_context_60').map_labels`` turns them into train ids.
* ``lip``: ``manual_dir`` = the folder holding ``TrainVal_images/`` and ``TrainVal_parsing_annotations/``.

Both list files with :func:`gsto_tf.data.layouts.list_samples`, so a missing folder gives the same error
(expected layout + where to get the data) as the tf.data pipeline, and check every pair with the pipelines'
decoders (:mod:`gsto_tf.data.decode`) while preparing: a bad image or label (format, size, values) stops the
preparation naming the file. Palette label PNGs are stored as their indices. Usage::

    import gsto_tf.data.tfds_builders  # registers the builders
    ds = tfds.load("pascal_context", data_dir=..., split="val",
                   download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=...)})

Cityscapes: :func:`load_cityscapes_tfds` prepares tfds' ``cityscapes/semantic_segmentation`` from the two
manual zips and maps its raw labelIds to train ids with the registry's mapping (the one place).
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gsto_tf.data.decode import check_sizes, map_label_values, read_image_file, read_sample_files
from gsto_tf.data.layouts import DatasetError, list_samples
from gsto_tf.data.registry import get_dataset_spec


def _label_feature():
    return tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png")


def _checked_label(dataset, image, label):
    """The raw label ``[H, W, 1]`` of a pair, checked with the pipelines' decoders (image decodes, label is an
    8-bit / palette PNG of the image's size with valid values); a bad file raises DatasetError naming it."""
    return read_sample_files(get_dataset_spec(dataset), image, label)[..., None]


class PascalContext(tfds.core.GeneratorBasedBuilder):
    """PASCAL-Context (VOC2010 images, 59 + background classes), from a manual download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Converted PNG layout or original .mat files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place under manual_dir:\n  " + get_dataset_spec("pascal_context").layout_help.replace("{root}/", "")
        .replace("\n", "\n  ") + "\nor the original trainval/{id}.mat files next to VOC2010/ (+ VOC2010/ImageSets/"
        "Main/{train,val}.txt). Source: " + get_dataset_spec("pascal_context").source
    )

    def _info(self):
        return self.dataset_info_from_configs(
            description="PASCAL-Context: 0 = background, 1..59 = the 59 classes (alphabetical).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "segmentation_label": _label_feature(),
                "image_id": tfds.features.Text(),
            }),
            homepage="https://cs.stanford.edu/~roozbeh/pascal-context/",
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in ("train", "val")}

    def _generate_examples(self, root, split):
        mat_dir = os.path.join(root, "trainval")
        voc = os.path.join(root, "VOC2010")
        if not os.path.isdir(os.path.join(voc, "SegmentationClassContext")) and os.path.isdir(mat_dir):
            return self._from_mat(voc, mat_dir, split)
        return self._from_png(root, split)

    def _from_png(self, root, split):
        for image, label in list_samples("pascal_context", root, split):
            image_id = os.path.basename(image)[:-4]
            yield image_id, {"image": image, "segmentation_label": _checked_label("pascal_context", image, label),
                             "image_id": image_id}

    def _from_mat(self, voc, mat_dir, split):
        from gsto_tf.data.pascal_context_mat import read_mat_label

        list_file = os.path.join(voc, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(list_file):
            raise DatasetError(f"pascal_context: split list not found: {list_file}")
        with open(list_file) as f:
            ids = [line.split()[0] for line in f if line.strip()]
        for image_id in ids:
            mat = os.path.join(mat_dir, f"{image_id}.mat")
            if not os.path.isfile(mat):
                raise DatasetError(f"pascal_context: image without label: {image_id} (expected {mat})")
            image = os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
            label = read_mat_label(mat)
            check_sizes(read_image_file(image).shape[:2], label.shape, image, mat)
            yield image_id, {"image": image, "segmentation_label": label[..., None], "image_id": image_id}


class Lip(tfds.core.GeneratorBasedBuilder):
    """LIP (Look Into Person) human parsing, 20 classes, from a manual download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "TrainVal images and parsing annotations."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Extract under manual_dir:\n  " + get_dataset_spec("lip").layout_help.replace("{root}/", "").replace("\n", "\n  ")
        + "\nSource: " + get_dataset_spec("lip").source
    )

    def _info(self):
        return self.dataset_info_from_configs(
            description="LIP human parsing: 0 = background, 1..19 = parts (see gsto_tf registry).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "segmentation_label": _label_feature(),
                "image_id": tfds.features.Text(),
            }),
            homepage="https://www.sysu-hcp.net/lip/",
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in ("train", "val")}

    def _generate_examples(self, root, split):
        for image, label in list_samples("lip", root, split):
            image_id = os.path.basename(image)[:-4]
            yield image_id, {"image": image, "segmentation_label": _checked_label("lip", image, label),
                             "image_id": image_id}


def load_cityscapes_tfds(split, *, data_dir=None, manual_dir=None):
    """tfds' ``cityscapes/semantic_segmentation`` (prepared from ``leftImg8bit_trainvaltest.zip`` and
    ``gtFine_trainvaltest.zip`` in ``manual_dir``) as ``{"image": uint8 [H, W, 3], "label": int32 train ids
    [H, W], "path": image id}``, labels mapped with the registry's Cityscapes mapping."""
    builder = tfds.builder("cityscapes/semantic_segmentation", data_dir=data_dir)
    if manual_dir is not None:
        for zip_name in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"):
            if not os.path.isfile(os.path.join(manual_dir, zip_name)):
                raise DatasetError(f"cityscapes (tfds): {zip_name} not found in manual_dir {manual_dir}; "
                                   f"get it from {get_dataset_spec('cityscapes').source}")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    spec = get_dataset_spec("cityscapes")
    split = {"val": "validation"}.get(split, split)

    def convert(example):
        label = map_label_values(spec, example["segmentation_label"][..., 0], example["image_id"])
        return {"image": example["image_left"], "label": label, "path": example["image_id"]}

    return builder.as_dataset(split=split).map(convert, num_parallel_calls=tf.data.AUTOTUNE)
