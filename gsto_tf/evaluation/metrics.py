"""Segmentation metrics over a confusion matrix (as HRNet's and cityscapesScripts' evaluation compute them).

The confusion matrix is accumulated over the whole set (rows ground truth, columns prediction, ignore pixels
skipped). ``IoU_c = tp / (gt_c + pred_c - tp)``; mIoU averages over classes *present in the ground truth or the
prediction*; classes absent from both are reported as n/a (NaN) and excluded — never counted as zeros.

Datasets with instance annotations and categories (Cityscapes) get cityscapesScripts' other three scores as well
(its ``evalPixelLevelSemanticLabeling.py``): category IoU (classes of one category pooled), and instance-level
iIoU per class and per category, ``tp_w / (tp_w + fp + fn_w)`` with the instance-weighted counts of
:class:`~gsto_tf.evaluation.instances.InstanceStats` and false positives, which belong to no instance, the plain
pixel counts of the confusion matrix. Tables and files: :mod:`gsto_tf.evaluation.report`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from gsto_tf.evaluation.instances import InstanceStats
from gsto_tf.evaluation.report import metrics_dict, metrics_table, save_metrics


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
        return metrics_dict(self)

    def table(self):
        return metrics_table(self)

    def save(self, directory, stem="metrics"):
        """Write ``{stem}.json`` and ``{stem}.csv`` atomically; returns the two paths."""
        return save_metrics(self, directory, stem)
