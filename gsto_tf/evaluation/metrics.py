"""Segmentation metrics over a confusion matrix (SPEC §8).

The confusion matrix is accumulated over the whole set (rows ground truth, columns prediction, ignore pixels
skipped). ``IoU_c = tp / (gt_c + pred_c - tp)``; mIoU averages over classes *present in the ground truth or the
prediction*; classes absent from both are reported as n/a (NaN) and excluded — never counted as zeros.

Datasets with instance annotations and categories (Cityscapes) get cityscapesScripts' other three scores as well
(its ``evalPixelLevelSemanticLabeling.py``): category IoU (classes of one category pooled), and instance-level
iIoU per class and per category, ``tp_w / (tp_w + fp + fn_w)`` where each ground-truth instance's pixels weigh
``average instance size of the class / instance size`` (:class:`InstanceStats`) and false positives, which belong
to no instance, are the plain pixel counts of the confusion matrix.
"""

import dataclasses
import functools
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from gsto_tf.atomic import write_atomically
from gsto_tf.tables import write_csv


def confusion_matrix(labels, predictions, num_classes, ignore_label=255):
    """tf: ``[K, K]`` int64 confusion matrix of integer label / prediction tensors of the same shape."""
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    index = tf.boolean_mask(labels, valid) * num_classes + tf.boolean_mask(predictions, valid)
    counts = tf.math.bincount(index, minlength=num_classes * num_classes, maxlength=num_classes * num_classes,
                              dtype=tf.int64)
    return tf.reshape(counts, [num_classes, num_classes])


def confusion_matrix_np(labels, predictions, num_classes, ignore_label=255):
    labels = np.asarray(labels, np.int64).ravel()
    predictions = np.asarray(predictions, np.int64).ravel()
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    index = labels[valid] * num_classes + predictions[valid]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@keras.saving.register_keras_serializable(package="gsto_tf")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Streaming confusion matrix as a Keras metric; ``result()`` is the mIoU.

    Usable in ``model.compile(metrics=...)`` on logits (any resolution: they are resized to the labels) and under
    ``tf.distribute``: the state is a sum-aggregated variable, so replicas' counts add up. Counts are float64
    (exact up to 2^53 pixels).
    """

    def __init__(self, num_classes, ignore_label=255, name="miou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.matrix = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float64", name="confusion",
            aggregation="sum",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        from gsto_tf.layers.resize import resize_bilinear

        y_true = tf.cast(y_true, tf.int64)
        if y_true.shape.rank == 4:
            y_true = y_true[..., 0]
        logits = resize_bilinear(tf.cast(y_pred, tf.float32), tf.shape(y_true)[1:3])
        pred = tf.argmax(logits, axis=-1)
        cm = confusion_matrix(y_true, pred, self.num_classes, self.ignore_label)
        self.matrix.assign_add(tf.cast(cm, tf.float64))

    def result(self):
        cm = tf.convert_to_tensor(self.matrix)
        tp = tf.linalg.diag_part(cm)
        union = tf.reduce_sum(cm, 0) + tf.reduce_sum(cm, 1) - tp
        present = union > 0
        iou = tf.boolean_mask(tp, present) / tf.boolean_mask(union, present)
        return tf.cast(tf.reduce_mean(iou), tf.float32)

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_label": self.ignore_label, "name": self.name}


def category_indices(spec):
    """``((category, (class index, ...)), ...)`` of a dataset spec's ``categories`` (empty if it has none)."""
    names = list(spec.class_names)
    return tuple((category, tuple(names.index(c) for c in classes)) for category, classes in spec.categories)


@dataclasses.dataclass
class InstanceStats:
    """Instance-weighted true-positive / false-negative pixel counts per class and per category, summed over a set:
    the ground-truth side of the iIoU (SPEC §8, cityscapesScripts).

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


def _ratio(numerator, denominator, valid):
    """numerator / denominator where ``valid`` (a bool array, or True) and the denominator is positive, else NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid & (denominator > 0), numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _nanmean(values):
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


@dataclasses.dataclass
class SegmentationMetrics:
    confusion: np.ndarray
    class_names: tuple
    setting: str = ""  # e.g. "single-scale whole" or "ms 0.5..1.75 + flip, slide 1024x2048"
    categories: tuple = ()  # ((name, (class index, ...)), ...): category IoU (Cityscapes)
    instance: InstanceStats = None  # instance-weighted counts: iIoU (Cityscapes with *_instanceIds.png)

    @classmethod
    def from_confusion(cls, confusion, class_names, setting="", categories=(), instance=None):
        confusion = np.asarray(confusion, np.int64)
        if confusion.shape != (len(class_names), len(class_names)):
            raise ValueError(f"confusion matrix shape {confusion.shape} does not match {len(class_names)} classes")
        return cls(confusion, tuple(class_names), setting, tuple(categories), instance)

    @property
    def gt_counts(self):
        return self.confusion.sum(1)

    @property
    def pred_counts(self):
        return self.confusion.sum(0)

    @property
    def per_class_iou(self):
        tp = np.diag(self.confusion).astype(np.float64)
        return _ratio(tp, self.gt_counts + self.pred_counts - tp, True)

    @property
    def false_positives(self):
        """[K] pixels predicted as the class on (non-ignored) pixels of another class."""
        return self.pred_counts - np.diag(self.confusion)

    @property
    def per_class_iiou(self):
        """[K] instance-level IoU; NaN for classes not scored per instance. None without instance statistics."""
        if self.instance is None:
            return None
        tp, fn = self.instance.tp, self.instance.fn
        return _ratio(tp, tp + self.false_positives + fn, ~np.isnan(self.instance.avg_size))

    @property
    def miiou(self):
        """Mean iIoU over the classes scored per instance (Cityscapes: "iIoU class"); None without statistics."""
        return None if self.instance is None else _nanmean(self.per_class_iiou)

    def _category_pixels(self):
        """(tp, fn, fp) per category: classes of a category pooled, as one class."""
        tp, fn, fp = [], [], []
        for _, members in self.categories:
            inside = np.zeros(len(self.class_names), bool)
            inside[list(members)] = True
            tp.append(self.confusion[np.ix_(inside, inside)].sum())
            fn.append(self.confusion[inside].sum() - tp[-1])
            fp.append(self.confusion[np.ix_(~inside, inside)].sum())
        return np.array(tp, np.float64), np.array(fn, np.float64), np.array(fp, np.float64)

    @property
    def per_category_iou(self):
        """[len(categories)] IoU of each category; None if the dataset has no categories."""
        if not self.categories:
            return None
        tp, fn, fp = self._category_pixels()
        return _ratio(tp, tp + fn + fp, True)

    @property
    def category_miou(self):
        return None if not self.categories else _nanmean(self.per_category_iou)

    @property
    def per_category_iiou(self):
        """[len(categories)] instance-level IoU of the categories whose classes all have instances, else NaN."""
        if self.instance is None or not self.categories:
            return None
        _, _, fp = self._category_pixels()
        tp, fn = self.instance.category_tp, self.instance.category_fn
        return _ratio(tp, tp + fp + fn, self.instance.scored_categories)

    @property
    def category_miiou(self):
        iiou = self.per_category_iiou
        return None if iiou is None else _nanmean(iiou)

    @property
    def absent_classes(self):
        """Classes in neither the ground truth nor the prediction: n/a, excluded from the means."""
        return [n for n, g, p in zip(self.class_names, self.gt_counts, self.pred_counts) if g == 0 and p == 0]

    @property
    def miou(self):
        return _nanmean(self.per_class_iou)

    @property
    def pixel_accuracy(self):
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    @property
    def mean_accuracy(self):
        return _nanmean(_ratio(np.diag(self.confusion).astype(np.float64), self.gt_counts, True))

    def to_dict(self):
        def num(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)

        out = {
            "setting": self.setting,
            "mIoU": num(self.miou),
            "pixel_accuracy": num(self.pixel_accuracy),
            "mean_accuracy": num(self.mean_accuracy),
            "per_class_iou": {n: num(v) for n, v in zip(self.class_names, self.per_class_iou)},
            "absent_classes": self.absent_classes,
        }
        if self.instance is not None:
            scored = ~np.isnan(self.instance.avg_size)
            out["iIoU"] = num(self.miiou)
            out["per_class_iiou"] = {n: num(v) for n, v, s in zip(self.class_names, self.per_class_iiou, scored)
                                     if s}
        if self.categories:
            out["category_mIoU"] = num(self.category_miou)
            out["per_category_iou"] = {c: num(v) for (c, _), v in zip(self.categories, self.per_category_iou)}
        if self.instance is not None and self.categories:
            out["category_iIoU"] = num(self.category_miiou)
            out["per_category_iiou"] = {c: num(v) for (c, _), v, s in zip(
                self.categories, self.per_category_iiou, self.instance.scored_categories) if s}
        out["confusion_matrix"] = self.confusion.tolist()
        return out

    def table(self):
        def pct(v):
            return "   n/a" if np.isnan(v) else f"{100 * v:6.2f}"

        width = max([len(n) for n in self.class_names] + [len(c) for c, _ in self.categories] + [9]) + 2
        iiou = self.per_class_iiou
        lines = [f"evaluation: {self.setting}" if self.setting else "evaluation",
                 f"{'class'.ljust(width)}   IoU" + ("   iIoU" if iiou is not None else "")]
        for k, (name, iou) in enumerate(zip(self.class_names, self.per_class_iou)):
            scored = iiou is not None and not np.isnan(self.instance.avg_size[k])
            lines.append(f"{name.ljust(width)}{pct(iou)}" + (f" {pct(iiou[k])}" if scored else ""))
        lines.append(f"{'mIoU'.ljust(width)}{pct(self.miou)}")
        if iiou is not None:
            lines.append(f"{'iIoU'.ljust(width)}{pct(self.miiou)}")
        lines.append(f"{'pixel acc'.ljust(width)}{pct(self.pixel_accuracy)}")
        lines.append(f"{'mean acc'.ljust(width)}{pct(self.mean_accuracy)}")
        if self.categories:
            category_iiou = self.per_category_iiou
            lines.append(f"{'category'.ljust(width)}   IoU" + ("   iIoU" if category_iiou is not None else ""))
            for c, ((name, _), iou) in enumerate(zip(self.categories, self.per_category_iou)):
                scored = category_iiou is not None and self.instance.scored_categories[c]
                lines.append(f"{name.ljust(width)}{pct(iou)}" + (f" {pct(category_iiou[c])}" if scored else ""))
            lines.append(f"{'mean'.ljust(width)}{pct(self.category_miou)}"
                         + (f" {pct(self.category_miiou)}" if category_iiou is not None else ""))
            if self.instance is None:
                lines.append("iIoU: not computed (no instance-id maps with the ground truth)")
        if self.absent_classes:
            lines.append(f"n/a = absent from ground truth and prediction, excluded from the means: "
                         f"{', '.join(self.absent_classes)}")
        return "\n".join(lines)

    def save(self, directory, stem="metrics"):
        """Write ``{stem}.json`` and ``{stem}.csv`` (per-class IoU, and iIoU where scored) atomically; returns the
        two paths."""
        json_path = os.path.join(directory, f"{stem}.json")
        csv_path = os.path.join(directory, f"{stem}.csv")
        def write_json(tmp):
            with open(tmp, "w") as f:
                json.dump(self.to_dict(), f, indent=1)

        def fmt(v):
            return "n/a" if np.isnan(v) else f"{v:.6f}"

        rows = [{"class": name, "iou": fmt(iou), "gt_pixels": int(g), "pred_pixels": int(p)}
                for name, iou, g, p in zip(self.class_names, self.per_class_iou, self.gt_counts, self.pred_counts)]
        rows.append({"class": "mIoU", "iou": fmt(self.miou), "gt_pixels": "", "pred_pixels": ""})
        if self.instance is not None:  # an iIoU column: empty for classes not scored per instance
            for row, v, scored in zip(rows, self.per_class_iiou, ~np.isnan(self.instance.avg_size)):
                row["iiou"] = fmt(v) if scored else ""
            rows[-1]["iiou"] = fmt(self.miiou)
        write_atomically(json_path, write_json)
        write_csv(rows, csv_path)
        return json_path, csv_path
