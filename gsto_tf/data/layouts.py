"""Finding (image, label) files of each dataset layout on disk, with errors that show the expected layout."""

import glob
import os

from gsto_tf.data.registry import get_dataset_spec


class DatasetError(ValueError):
    """The data on disk is missing or does not match the expected layout."""


def _missing(spec, data_dir, what):
    return DatasetError(
        f"dataset '{spec.name}': {what}\n"
        f"expected layout under --data-dir {data_dir!r}:\n  " + spec.layout.replace("\n", "\n  ")
        + f"\nwhere to get it: {spec.source}"
    )


def _cityscapes(spec, root, split):
    image_dir = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(image_dir):
        raise _missing(spec, root, f"folder not found: {image_dir}")
    images = sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png")))
    return [(image, cityscapes_ground_truth(image, "labelIds")) for image in images]


def cityscapes_ground_truth(image, kind):
    """The ground-truth file ``{root}/gtFine/{split}/{city}/{stem}_gtFine_{kind}.png`` of the image
    ``{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png``."""
    city_dir = os.path.dirname(image)
    split_dir = os.path.dirname(city_dir)
    root = os.path.dirname(os.path.dirname(split_dir))
    stem = os.path.basename(image)[: -len("_leftImg8bit.png")]
    return os.path.join(root, "gtFine", os.path.basename(split_dir), os.path.basename(city_dir),
                        f"{stem}_gtFine_{kind}.png")


def _pascal_context(spec, root, split):
    voc = root if os.path.basename(os.path.normpath(root)) == "VOC2010" else os.path.join(root, "VOC2010")
    list_file = os.path.join(voc, "ImageSets", "SegmentationContext", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise _missing(spec, root, f"split list not found: {list_file}")
    with open(list_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    return [(os.path.join(voc, "JPEGImages", f"{i}.jpg"), os.path.join(voc, "SegmentationClassContext", f"{i}.png"))
            for i in ids]


def _lip(spec, root, split):
    image_dir = os.path.join(root, "TrainVal_images", f"{split}_images")
    label_dir = os.path.join(root, "TrainVal_parsing_annotations", f"{split}_segmentations")
    if not os.path.isdir(image_dir):
        raise _missing(spec, root, f"folder not found: {image_dir}")
    images = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    return [(im, os.path.join(label_dir, os.path.basename(im)[:-4] + ".png")) for im in images]


_READERS = {"cityscapes": _cityscapes, "pascal_context": _pascal_context, "lip": _lip}


def list_samples(name, data_dir, split, require_labels=True):
    """``[(image_path, label_path)]`` of a split, sorted. Raises :class:`DatasetError` when the data is missing,
    a split is empty, or (``require_labels``) an image has no label file."""
    spec = get_dataset_spec(name)
    if data_dir is None or not os.path.isdir(data_dir):
        raise _missing(spec, data_dir, f"data directory not found: {data_dir}")
    samples = _READERS[spec.layout_kind](spec, data_dir, split)
    if not samples:
        raise _missing(spec, data_dir, f"no images found for split '{split}'")
    if require_labels:
        for image, label in samples:
            if not os.path.isfile(image):
                raise DatasetError(f"dataset '{spec.name}': image file listed but missing: {image}")
            if not os.path.isfile(label):
                raise DatasetError(f"dataset '{spec.name}': image without label: {image} (expected {label})")
    return samples
