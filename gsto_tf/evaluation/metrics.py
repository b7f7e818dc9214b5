"""Segmentation metrics over a confusion matrix (SPEC §8).

The confusion matrix is accumulated over the whole set (rows ground truth, columns prediction, ignore pixels
skipped). ``IoU_c = tp / (gt_c + pred_c - tp)``; mIoU averages over classes *present in the ground truth or the
prediction*; classes absent from both are reported as n/a (NaN) and excluded — never counted as zeros.
"""

import dataclasses
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


@dataclasses.dataclass
class SegmentationMetrics:
    confusion: np.ndarray
    class_names: tuple
    setting: str = ""  # e.g. "single-scale whole" or "ms 0.5..1.75 + flip, slide 1024x2048"

    @classmethod
    def from_confusion(cls, confusion, class_names, setting=""):
        confusion = np.asarray(confusion, np.int64)
        if confusion.shape != (len(class_names), len(class_names)):
            raise ValueError(f"confusion matrix shape {confusion.shape} does not match {len(class_names)} classes")
        return cls(confusion, tuple(class_names), setting)

    @property
    def gt_counts(self):
        return self.confusion.sum(1)

    @property
    def pred_counts(self):
        return self.confusion.sum(0)

    @property
    def per_class_iou(self):
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.gt_counts + self.pred_counts - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    @property
    def absent_classes(self):
        """Classes in neither the ground truth nor the prediction: n/a, excluded from the means."""
        return [n for n, g, p in zip(self.class_names, self.gt_counts, self.pred_counts) if g == 0 and p == 0]

    @property
    def miou(self):
        iou = self.per_class_iou
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")

    @property
    def pixel_accuracy(self):
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    @property
    def mean_accuracy(self):
        gt = self.gt_counts
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(gt > 0, np.diag(self.confusion) / np.maximum(gt, 1), np.nan)
        return float(np.nanmean(acc)) if np.any(gt > 0) else float("nan")

    def to_dict(self):
        def num(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)

        return {
            "setting": self.setting,
            "mIoU": num(self.miou),
            "pixel_accuracy": num(self.pixel_accuracy),
            "mean_accuracy": num(self.mean_accuracy),
            "per_class_iou": {n: num(v) for n, v in zip(self.class_names, self.per_class_iou)},
            "absent_classes": self.absent_classes,
            "confusion_matrix": self.confusion.tolist(),
        }

    def table(self):
        width = max(len(n) for n in self.class_names) + 2
        lines = [f"evaluation: {self.setting}" if self.setting else "evaluation", f"{'class'.ljust(width)}IoU"]
        for name, iou in zip(self.class_names, self.per_class_iou):
            lines.append(f"{name.ljust(width)}{'n/a' if np.isnan(iou) else f'{100 * iou:6.2f}'}")
        lines.append(f"{'mIoU'.ljust(width)}{100 * self.miou:6.2f}")
        lines.append(f"{'pixel acc'.ljust(width)}{100 * self.pixel_accuracy:6.2f}")
        lines.append(f"{'mean acc'.ljust(width)}{100 * self.mean_accuracy:6.2f}")
        if self.absent_classes:
            lines.append(f"n/a = absent from ground truth and prediction, excluded from the means: "
                         f"{', '.join(self.absent_classes)}")
        return "\n".join(lines)

    def save(self, directory, stem="metrics"):
        """Write ``{stem}.json`` and ``{stem}.csv`` (per-class IoU) atomically; returns the two paths."""
        json_path = os.path.join(directory, f"{stem}.json")
        csv_path = os.path.join(directory, f"{stem}.csv")
        def write_json(tmp):
            with open(tmp, "w") as f:
                json.dump(self.to_dict(), f, indent=1)

        rows = [{"class": name, "iou": "n/a" if np.isnan(iou) else f"{iou:.6f}", "gt_pixels": int(g),
                 "pred_pixels": int(p)}
                for name, iou, g, p in zip(self.class_names, self.per_class_iou, self.gt_counts, self.pred_counts)]
        rows.append({"class": "mIoU", "iou": f"{self.miou:.6f}", "gt_pixels": "", "pred_pixels": ""})
        write_atomically(json_path, write_json)
        write_csv(rows, csv_path)
        return json_path, csv_path
