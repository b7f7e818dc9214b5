"""Cityscapes instance-level statistics (iIoU): the instance-id maps and the instance-weighted pixel counts.

cityscapesScripts' ``evalPixelLevelSemanticLabeling.py`` scores some classes per instance as well: each
ground-truth instance's pixels weigh ``average instance size of the class / instance size``
(:class:`InstanceStats`), so small objects count as much as large ones; false positives, which belong to no
instance, are the plain pixel counts of the confusion matrix (:mod:`gsto_tf.evaluation.metrics`). The instance ids
come from ``*_gtFine_instanceIds.png`` beside each label (:func:`instance_label_path`, :func:`read_instance_ids`).
"""

import dataclasses
import functools
import os

import numpy as np
from PIL import Image

from gsto_tf.data.layouts import DatasetError, instance_file


def instance_label_path(dataset, image_path):
    """The instance-id map (Cityscapes ``*_gtFine_instanceIds.png``) of an image, or None where the dataset's layout
    has none. The file may be missing (e.g. a gtFine copy without instance maps): callers check."""
    return instance_file(dataset, image_path)


def read_instance_ids(path, shape):
    """int32 [H, W] instance-id map at ``path`` (a 16-bit PNG); ``shape`` is the label's, which it must match."""
    if not os.path.isfile(path):
        raise DatasetError(f"instance-id map not found: {path} (the iIoU needs one for every image once the first "
                           f"has one)")
    try:
        with Image.open(path) as image:
            ids = np.asarray(image).astype(np.int32)
    except OSError as e:
        raise DatasetError(f"instance-id map {path}: not a readable PNG ({e})") from e
    if ids.shape != tuple(shape):
        raise DatasetError(f"instance-id map {path}: shape {ids.shape}, expected the label's {tuple(shape)} "
                           f"(a single-channel map of the label's size)")
    return ids


def category_indices(spec):
    """``((category, (class index, ...)), ...)`` of a dataset spec's ``categories`` (empty if it has none)."""
    names = list(spec.class_names)
    return tuple((category, tuple(names.index(c) for c in classes)) for category, classes in spec.categories)


@dataclasses.dataclass
class InstanceStats:
    """Instance-weighted true-positive / false-negative pixel counts per class and per category, summed over a set:
    the ground-truth side of the iIoU (cityscapesScripts).

    Every ground-truth instance of a scored class adds its pixels predicted as its class (tp) and the rest (fn),
    each pixel weighted by ``avg_size[class] / instance size``. A category is scored when all of its classes are;
    its tp counts pixels predicted as any class of the category.
    """

    avg_size: np.ndarray  # [K] float64 average instance size; NaN for classes not scored per instance
    categories: tuple  # ((name, (class index, ...)), ...)
    tp: np.ndarray = None  # [K] float64
    fn: np.ndarray = None
    category_tp: np.ndarray = None  # [len(categories)] float64
    category_fn: np.ndarray = None

    def __post_init__(self):
        k, c = len(self.avg_size), len(self.categories)
        for field, n in (("tp", k), ("fn", k), ("category_tp", c), ("category_fn", c)):
            if getattr(self, field) is None:
                setattr(self, field, np.zeros(n, np.float64))

    @classmethod
    def for_dataset(cls, spec):
        """Empty statistics of a dataset spec with ``instance_classes``; None if it scores no instances."""
        if not spec.instance_classes:
            return None
        avg_size = np.full(spec.num_classes, np.nan)
        for name, size in spec.instance_classes:
            avg_size[list(spec.class_names).index(name)] = size
        return cls(avg_size, category_indices(spec))

    @functools.cached_property
    def scored_categories(self):
        """[len(categories)] bool: categories whose classes are all scored per instance."""
        return np.array([all(not np.isnan(self.avg_size[i]) for i in members) for _, members in self.categories],
                        bool)

    @functools.cached_property
    def _category_of(self):
        """[K + 1] category index of each class, -1 for none; the extra slot takes predictions outside 0..K-1."""
        category_of = np.full(len(self.avg_size) + 1, -1, np.int64)
        for c, (_, members) in enumerate(self.categories):
            category_of[list(members)] = c
        return category_of

    def update(self, instance_ids, prediction, label_lut):
        """Add one image. ``instance_ids``: Cityscapes instance-id map (``raw label id * 1000 + n`` on instance
        pixels, the raw label id elsewhere); ``prediction``: train ids of the same shape; ``label_lut``: raw label id
        -> train id table of the dataset (``DatasetSpec.label_lut``)."""
        instance_ids = np.asarray(instance_ids)
        prediction = np.asarray(prediction)
        if instance_ids.shape != prediction.shape:
            raise ValueError(f"instance map shape {instance_ids.shape} != prediction shape {prediction.shape}")
        ids = instance_ids.astype(np.int64).ravel()
        pred = prediction.astype(np.int64).ravel()
        on_instance = ids > 1000  # as cityscapesScripts: ids of 1000 and below are plain label ids
        ids, pred = ids[on_instance], pred[on_instance]
        if ids.size == 0:
            return
        uniq, inverse = np.unique(ids, return_inverse=True)
        raw = uniq // 1000
        lut = np.asarray(label_lut)
        train = np.full(len(uniq), -1, np.int64)
        train[raw < len(lut)] = lut[raw[raw < len(lut)]]
        k = len(self.avg_size)
        known = (train >= 0) & (train < k)
        train = np.where(known, train, 0)
        scored = known & ~np.isnan(self.avg_size[train])
        size = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
        weight = np.where(scored, self.avg_size[train], 0.0) / size
        tp = np.bincount(inverse, weights=(pred == train[inverse]), minlength=len(uniq))
        np.add.at(self.tp, train[scored], (tp * weight)[scored])
        np.add.at(self.fn, train[scored], ((size - tp) * weight)[scored])
        if not self.categories:
            return
        category_of = self._category_of
        instance_category = category_of[train]
        sel = scored & (instance_category >= 0)  # instances of a scored class in a scored category
        sel[sel] = self.scored_categories[instance_category[sel]]
        pred_category = category_of[np.where((pred >= 0) & (pred < k), pred, k)]
        category_tp = np.bincount(inverse, weights=(pred_category == instance_category[inverse]),
                                  minlength=len(uniq))
        np.add.at(self.category_tp, instance_category[sel], (category_tp * weight)[sel])
        np.add.at(self.category_fn, instance_category[sel], ((size - category_tp) * weight)[sel])
