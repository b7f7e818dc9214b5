"""Dataset registry: everything gsto_tf knows about a dataset, in one place.

Per dataset: class names, palette, ignore label, the raw-id -> train-id mapping, flip pairs, expected split sizes,
default crop / base size and scale range (HRNet's ``experiments/*.yaml`` and ``lib/datasets/*.py``), and the
on-disk layout with where to get the data.
Labels seen by everything downstream of :meth:`DatasetSpec.map_labels` are train ids ``0..K-1`` or ``ignore_label``.
"""

import dataclasses

import numpy as np
import tensorflow as tf

IGNORE_LABEL = 255
_INVALID = -1  # LUT entry of a raw value that is neither a class nor ignore: reported as an error


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple
    palette: tuple  # one RGB triple per train id
    layout: str  # the expected folder layout, shown in "data not found" errors
    source: str  # where to get the data
    raw_to_train: tuple  # (raw id, train id) pairs; raw ids not listed map to `unlisted`
    unlisted: int = IGNORE_LABEL  # IGNORE_LABEL: other raw ids are void; _INVALID: they are errors
    ignore_label: int = IGNORE_LABEL
    num_raw_ids: int = 256  # the raw ids are 0..num_raw_ids-1; larger values are errors (except ignore, below)
    raw_ignore: bool = True  # whether raw label files may hold `ignore_label` (else it is an error too)
    invalid_values_hint: str = ""  # added to the "neither a class nor ignore" error when the values include ignore
    flip_pairs: tuple = ()  # train-id pairs swapped by a horizontal flip (LIP left/right parts)
    split_sizes: tuple = ()  # (split, expected number of samples)
    crop_size: tuple = (512, 1024)
    base_size: int = 2048
    scale_range: tuple = (0.5, 2.0)
    layout_kind: str = "cityscapes"  # which reader lists the files (gsto_tf.data.layouts)
    # Instance-level scores (Cityscapes iIoU, cityscapesScripts' evalPixelLevelSemanticLabeling.py): (class name,
    # average instance size in pixels) of the classes scored per instance, and (category name, class names) of the
    # category-level scores. Empty: not scored.
    instance_classes: tuple = ()
    categories: tuple = ()

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def palette_array(self):
        return np.asarray(self.palette, np.uint8)

    def label_lut(self):
        """int32 [256] lookup table raw id -> train id (ignore_label for void, -1 for invalid values)."""
        lut = np.full(256, _INVALID, np.int32)
        lut[:self.num_raw_ids] = self.unlisted
        if self.raw_ignore:
            lut[self.ignore_label] = self.ignore_label
        for raw, train in self.raw_to_train:
            lut[raw] = train
        return lut

    def map_labels(self, raw):
        """Raw label ids (uint8 values; numpy or tf) -> train ids (int32). Invalid values become -1."""
        lut = self.label_lut()
        if isinstance(raw, np.ndarray):
            return lut[raw.astype(np.int64)]
        return tf.gather(tf.constant(lut), tf.cast(raw, tf.int32))

    def unmap_labels(self, train_ids):
        """Train ids -> raw label ids (for test-server submissions); ignore maps to 0."""
        inverse = np.zeros(256, np.uint8)
        for raw, train in self.raw_to_train:
            if train != self.ignore_label and inverse[train] == 0:
                inverse[train] = raw
        return inverse[np.asarray(train_ids, np.int64)]

    def expected_size(self, split):
        return dict(self.split_sizes).get(split)


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# Official colours (cityscapesScripts labels.py).
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# labelId -> trainId (cityscapesScripts labels.py); every other labelId (0..33) is void.
CITYSCAPES_RAW_TO_TRAIN = (
    (7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8), (22, 9), (23, 10), (24, 11),
    (25, 12), (26, 13), (27, 14), (28, 15), (31, 16), (32, 17), (33, 18),
)

# The classes cityscapesScripts scores per instance (iIoU), with the average instance size it weights them by
# (evalPixelLevelSemanticLabeling.py, `avgClassSize`; caravan and trailer are listed there too but are void here).
CITYSCAPES_INSTANCE_CLASSES = (
    ("person", 3462.4756337644), ("rider", 3930.4788056518), ("car", 12794.0202738185),
    ("truck", 27855.1264367816), ("bus", 35732.1511111111), ("train", 67583.7075812274),
    ("motorcycle", 6298.7200839748), ("bicycle", 4672.3249222261),
)
# cityscapesScripts labels.py categories of the 19 evaluated classes ("void" has none of them).
CITYSCAPES_CATEGORIES = (
    ("flat", ("road", "sidewalk")),
    ("construction", ("building", "wall", "fence")),
    ("object", ("pole", "traffic light", "traffic sign")),
    ("nature", ("vegetation", "terrain")),
    ("sky", ("sky",)),
    ("human", ("person", "rider")),
    ("vehicle", ("car", "truck", "bus", "train", "motorcycle", "bicycle")),
)

PASCAL_CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)


def _voc_palette(n):
    """The PASCAL VOC bit-interleaved colour map (used for PASCAL-Context too)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


LIP_CLASSES = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
    "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe",
    "right-shoe",
)

_CITYSCAPES_LAYOUT = (
    "{root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png\n"
    "{root}/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png"
)
_PASCAL_LAYOUT = (
    "{root}/VOC2010/JPEGImages/{id}.jpg\n"
    "{root}/VOC2010/SegmentationClassContext/{id}.png   (0 = background, 1..59 = classes)\n"
    "{root}/VOC2010/ImageSets/SegmentationContext/{train,val}.txt"
)
_LIP_LAYOUT = (
    "{root}/TrainVal_images/{split}_images/{id}.jpg\n"
    "{root}/TrainVal_parsing_annotations/{split}_segmentations/{id}.png"
)

# Cityscapes labelIds are 0..33 (cityscapesScripts labels.py; ids below 0, e.g. license plate, are never drawn into
# *_gtFine_labelIds.png). So 34..255 are errors, 255 included: it is the void of a *train-id* file, which is how a
# *_gtFine_labelTrainIds.png given where labelIds are expected is caught (every real frame has void pixels). A
# train-id file without any void pixel is not detectable: train ids 0..18 are all valid labelIds.
_CITYSCAPES_RAW_IDS = dict(
    num_raw_ids=34,
    raw_ignore=False,
    invalid_values_hint="255 is no Cityscapes labelId: is this a train-id file (*_gtFine_labelTrainIds.png) "
    "instead of the *_gtFine_labelIds.png?",
)

SYNTHETIC_CLASSES = ("road", "water", "sky", "building", "vegetation", "car", "boat", "person")
# Raw ids in the Cityscapes spirit (0 = unlabeled, 1 = ego vehicle, both void); the generator writes these.
SYNTHETIC_RAW_TO_TRAIN = ((7, 0), (9, 1), (23, 2), (11, 3), (21, 4), (26, 5), (29, 6), (24, 7))

_DATASETS = {
    "cityscapes": DatasetSpec(
        name="cityscapes",
        class_names=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        layout=_CITYSCAPES_LAYOUT,
        source="https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)",
        raw_to_train=CITYSCAPES_RAW_TO_TRAIN,
        **_CITYSCAPES_RAW_IDS,
        split_sizes=(("train", 2975), ("val", 500), ("test", 1525)),
        crop_size=(512, 1024),
        base_size=2048,
        scale_range=(0.5, 2.1),
        instance_classes=CITYSCAPES_INSTANCE_CLASSES,
        categories=CITYSCAPES_CATEGORIES,
    ),
    "pascal_context": DatasetSpec(
        name="pascal_context",
        class_names=PASCAL_CONTEXT_CLASSES,
        palette=_voc_palette(60)[1:],
        layout=_PASCAL_LAYOUT,
        source="VOC2010 images: host.robots.ox.ac.uk/pascal/VOC/voc2010/; labels: PASCAL-Context trainval.tar.gz "
        "(per-image .mat files, https://cs.stanford.edu/~roozbeh/pascal-context/) converted once with "
        "`gsto-tf data prepare --data-dir D --mat-dir D/trainval`, or an already converted SegmentationClassContext",
        raw_to_train=((0, IGNORE_LABEL),) + tuple((i, i - 1) for i in range(1, 60)),
        unlisted=_INVALID,
        split_sizes=(("train", 4998), ("val", 5105)),
        crop_size=(480, 480),
        base_size=520,
        scale_range=(0.5, 2.1),
        layout_kind="pascal_context",
    ),
    "lip": DatasetSpec(
        name="lip",
        class_names=LIP_CLASSES,
        palette=_voc_palette(20),
        layout=_LIP_LAYOUT,
        source="https://www.sysu-hcp.net/lip/ (TrainVal_images.zip, TrainVal_parsing_annotations.zip)",
        raw_to_train=tuple((i, i) for i in range(20)),
        unlisted=_INVALID,
        flip_pairs=((14, 15), (16, 17), (18, 19)),
        split_sizes=(("train", 30462), ("val", 10000)),
        crop_size=(473, 473),
        base_size=473,
        scale_range=(0.5, 1.6),
        layout_kind="lip",
    ),
    "synthetic": DatasetSpec(
        name="synthetic",
        class_names=SYNTHETIC_CLASSES,
        palette=((128, 64, 128), (0, 120, 200), (70, 130, 180), (70, 70, 70), (107, 142, 35), (0, 0, 142),
                 (255, 140, 0), (220, 20, 60)),
        layout=_CITYSCAPES_LAYOUT,
        source="generated on first use (gsto_tf.data.synthetic); no download",
        raw_to_train=SYNTHETIC_RAW_TO_TRAIN,
        **_CITYSCAPES_RAW_IDS,
        split_sizes=(("train", 320), ("val", 64)),
        crop_size=(128, 128),
        base_size=256,
        scale_range=(0.75, 1.25),
    ),
}


# PASCAL-Context with the background as class 0: the same data, another label mapping.
_DATASETS["pascal_context_60"] = dataclasses.replace(
    _DATASETS["pascal_context"],
    name="pascal_context_60",
    class_names=("background",) + PASCAL_CONTEXT_CLASSES,
    palette=_voc_palette(60),
    source="as pascal_context",
    raw_to_train=tuple((i, i) for i in range(60)),
)


def available_datasets():
    return sorted(_DATASETS)


def get_dataset_spec(name):
    """The :class:`DatasetSpec` of ``name``; a ValueError lists the valid names."""
    if isinstance(name, DatasetSpec):
        return name
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}")
    return _DATASETS[name]
