"""Figures (matplotlib, no display needed): predictions, gate maps, branch features, confusion, training curves.

Colours come from the dataset specs (official Cityscapes colours, the VOC colour map for PASCAL-Context and LIP);
colouring and overlays are :func:`gsto_tf.evaluation.predict.colorize` / ``overlay``.
"""

import csv
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gsto_tf.atomic import write_atomically  # noqa: E402
from gsto_tf.data.normalization import denormalize_image  # noqa: E402
from gsto_tf.visualize.colors import colorize, overlay  # noqa: E402


def _save(fig, path):
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def prediction_grid(samples, spec, path, opacity=0.5):
    """Rows of image / ground truth / prediction / overlay. ``samples``: (normalised image, label, prediction)."""
    rows = len(samples)
    fig, axes = plt.subplots(rows, 4, figsize=(14, 2.0 * rows + 0.6), squeeze=False)
    for r, (image, label, pred) in enumerate(samples):
        rgb = denormalize_image(image)
        panels = [(rgb, "image"), (colorize(label, spec.palette, spec.ignore_label), "ground truth"),
                  (colorize(pred, spec.palette, spec.ignore_label), "prediction"),
                  (overlay(rgb, pred, spec.palette, opacity, spec.ignore_label), f"overlay ({opacity:g})")]
        for c, (img, title) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    _legend(fig, spec)
    return _save(fig, path)


def _legend(fig, spec):
    handles = [matplotlib.patches.Patch(color=np.asarray(c) / 255.0, label=n)
               for n, c in zip(spec.class_names, spec.palette)]
    fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=7, frameon=False)


_FUSION = re.compile(r"stage(\d+)\.(\d+)\.att_layers\.(\d+)\.(\d+)$")


def gate_grid(gates, image, path):
    """Every gate map of a GSTO model on one image (``gates``: name -> [1, h, w, 1], e.g. from
    :func:`gsto_tf.models.gate_model`). Fusion gates are titled by module and source -> target branch."""
    names = list(gates)
    cols = 6
    rows = int(np.ceil((len(names) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(denormalize_image(image))
    axes[0].set_title("image", fontsize=8)
    for ax, name in zip(axes[1:], names):
        g = np.asarray(gates[name])[0, ..., 0]
        m = _FUSION.search(name)
        title = (f"s{m.group(1)}.{m.group(2)}: {m.group(4)}->{m.group(3)}" if m else name)
        im = ax.imshow(g, cmap="magma", vmin=0.0, vmax=1.0)
        ax.set_title(f"{title} [{g.min():.2f},{g.max():.2f}]", fontsize=7)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes.tolist(), shrink=0.6, label="gate value")
    return _save(fig, path)


def branch_feature_grid(features_by_model, image, path):
    """Channel-averaged |feature| heat maps per branch (stride 4..32), one row per model — the slides'
    "scale confusion" figure (HRNetV2 vs GSTO-HRNet)."""
    models = list(features_by_model)
    branches = max(len(v) for v in features_by_model.values())
    fig, axes = plt.subplots(len(models), branches + 1, figsize=(3 * (branches + 1), 2.4 * len(models)),
                             squeeze=False)
    for r, name in enumerate(models):
        axes[r, 0].imshow(denormalize_image(image))
        axes[r, 0].set_title(name, fontsize=9)
        for b, feat in enumerate(features_by_model[name]):
            heat = np.abs(np.asarray(feat)[0]).mean(-1)
            axes[r, b + 1].imshow(heat, cmap="viridis")
            axes[r, b + 1].set_title(f"branch {b} (stride {4 * 2 ** b})", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    return _save(fig, path)


def confusion_plot(metrics, path):
    """Row-normalised confusion matrix (rows: ground truth) with per-class IoU in the labels."""
    cm = metrics.confusion.astype(np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(metrics.class_names)
    fig, ax = plt.subplots(figsize=(0.45 * k + 3, 0.45 * k + 2.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [f"{n} ({'n/a' if np.isnan(i) else f'{100 * i:.0f}'})" for n, i in zip(metrics.class_names,
                                                                                 metrics.per_class_iou)]
    ax.set_xticks(range(k), metrics.class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth (IoU %)")
    ax.set_title(f"mIoU {100 * metrics.miou:.2f} — {metrics.setting}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7)
    return _save(fig, path)


def training_curves(run_dir, path):
    """Losses and learning rate from ``run_dir/history.csv`` (one row per backup chunk)."""
    history = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(history):
        raise FileNotFoundError(f"no history.csv in run dir {run_dir}")
    with open(history) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{history} is empty")
    x = [int(r["epoch"]) + 1 for r in rows]
    def numeric(key):
        return all(r.get(key) not in (None, "", "NA") for r in rows)

    loss_keys = [k for k in rows[0] if k.endswith("loss") and numeric(k)]  # CSVLogger pads absent val_* with NA
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"wspace": 0.3})
    for key in loss_keys:
        a.plot(x, [float(r[key]) for r in rows], label=key, marker="o", ms=3)
    a.set_xlabel("backup chunk")
    a.set_ylabel("loss")
    a.legend(fontsize=7)
    if "lr" in rows[0] and numeric("lr"):
        b.plot(x, [float(r["lr"]) for r in rows], color="tab:red")
    b.set_xlabel("backup chunk")
    b.set_ylabel("learning rate")
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)), fontsize=9)
    return _save(fig, path)
