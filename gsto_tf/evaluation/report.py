"""Reporting evaluation results: the JSON summary, the printed table and the metrics files of a run.

Everything here reads a :class:`~gsto_tf.evaluation.metrics.SegmentationMetrics`; nothing computes a score.
"""

import json
import math
import os

import numpy as np

from gsto_tf.atomic import write_atomically
from gsto_tf.tables import write_csv


def metrics_dict(metrics):
    """The JSON-able summary of :class:`~gsto_tf.evaluation.metrics.SegmentationMetrics` (NaN -> None)."""

    def num(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)

    out = {
        "setting": metrics.setting,
        "mIoU": num(metrics.miou),
        "pixel_accuracy": num(metrics.pixel_accuracy),
        "mean_accuracy": num(metrics.mean_accuracy),
        "per_class_iou": {n: num(v) for n, v in zip(metrics.class_names, metrics.per_class_iou)},
        "absent_classes": metrics.absent_classes,
    }
    if metrics.instance is not None:
        scored = ~np.isnan(metrics.instance.avg_size)
        out["iIoU"] = num(metrics.miiou)
        out["per_class_iiou"] = {n: num(v) for n, v, s in zip(metrics.class_names, metrics.per_class_iiou, scored)
                                 if s}
    if metrics.categories:
        out["category_mIoU"] = num(metrics.category_miou)
        out["per_category_iou"] = {c: num(v) for (c, _), v in zip(metrics.categories, metrics.per_category_iou)}
    if metrics.instance is not None and metrics.categories:
        out["category_iIoU"] = num(metrics.category_miiou)
        out["per_category_iiou"] = {c: num(v) for (c, _), v, s in zip(
            metrics.categories, metrics.per_category_iiou, metrics.instance.scored_categories) if s}
    out["confusion_matrix"] = metrics.confusion.tolist()
    return out


def metrics_table(metrics):
    """The human-readable table: per-class IoU (and iIoU), means, accuracies, categories, n/a classes."""

    def pct(v):
        return "   n/a" if np.isnan(v) else f"{100 * v:6.2f}"

    width = max([len(n) for n in metrics.class_names] + [len(c) for c, _ in metrics.categories] + [9]) + 2
    iiou = metrics.per_class_iiou
    lines = [f"evaluation: {metrics.setting}" if metrics.setting else "evaluation",
             f"{'class'.ljust(width)}   IoU" + ("   iIoU" if iiou is not None else "")]
    for k, (name, iou) in enumerate(zip(metrics.class_names, metrics.per_class_iou)):
        scored = iiou is not None and not np.isnan(metrics.instance.avg_size[k])
        lines.append(f"{name.ljust(width)}{pct(iou)}" + (f" {pct(iiou[k])}" if scored else ""))
    lines.append(f"{'mIoU'.ljust(width)}{pct(metrics.miou)}")
    if iiou is not None:
        lines.append(f"{'iIoU'.ljust(width)}{pct(metrics.miiou)}")
    lines.append(f"{'pixel acc'.ljust(width)}{pct(metrics.pixel_accuracy)}")
    lines.append(f"{'mean acc'.ljust(width)}{pct(metrics.mean_accuracy)}")
    if metrics.categories:
        category_iiou = metrics.per_category_iiou
        lines.append(f"{'category'.ljust(width)}   IoU" + ("   iIoU" if category_iiou is not None else ""))
        for c, ((name, _), iou) in enumerate(zip(metrics.categories, metrics.per_category_iou)):
            scored = category_iiou is not None and metrics.instance.scored_categories[c]
            lines.append(f"{name.ljust(width)}{pct(iou)}" + (f" {pct(category_iiou[c])}" if scored else ""))
        lines.append(f"{'mean'.ljust(width)}{pct(metrics.category_miou)}"
                     + (f" {pct(metrics.category_miiou)}" if category_iiou is not None else ""))
        if metrics.instance is None:
            lines.append("iIoU: not computed (no instance-id maps with the ground truth)")
    if metrics.absent_classes:
        lines.append(f"n/a = absent from ground truth and prediction, excluded from the means: "
                     f"{', '.join(metrics.absent_classes)}")
    return "\n".join(lines)


def save_metrics(metrics, directory, stem="metrics"):
    """Write ``{stem}.json`` and ``{stem}.csv`` (per-class IoU, and iIoU where scored) atomically; returns the
    two paths."""
    json_path = os.path.join(directory, f"{stem}.json")
    csv_path = os.path.join(directory, f"{stem}.csv")

    def write_json(tmp):
        with open(tmp, "w") as f:
            json.dump(metrics_dict(metrics), f, indent=1)

    def fmt(v):
        return "n/a" if np.isnan(v) else f"{v:.6f}"

    rows = [{"class": name, "iou": fmt(iou), "gt_pixels": int(g), "pred_pixels": int(p)} for name, iou, g, p in
            zip(metrics.class_names, metrics.per_class_iou, metrics.gt_counts, metrics.pred_counts)]
    rows.append({"class": "mIoU", "iou": fmt(metrics.miou), "gt_pixels": "", "pred_pixels": ""})
    if metrics.instance is not None:  # an iIoU column: empty for classes not scored per instance
        for row, v, scored in zip(rows, metrics.per_class_iiou, ~np.isnan(metrics.instance.avg_size)):
            row["iiou"] = fmt(v) if scored else ""
        rows[-1]["iiou"] = fmt(metrics.miiou)
    write_atomically(json_path, write_json)
    write_csv(rows, csv_path)
    return json_path, csv_path
