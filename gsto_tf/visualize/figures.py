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


def gate_value_range(maps):
    """The colour range of gate maps: (0.5, 1) when every value is at least 0.5, as the official gates'
    ``1 + sigmoid`` halved always are, so the colours use the whole scale; (0, 1) otherwise (the paper's gate)."""
    return (0.5, 1.0) if all(float(np.min(m)) >= 0.5 for m in maps) else (0.0, 1.0)


def gate_grid(gates, image, path):
    """Every gate map of a GSTO model on one image (``gates``: name -> [1, h, w, 1], e.g. from
    :func:`gsto_tf.models.gate_model`). Fusion gates are titled by module and source -> target branch."""
    names = list(gates)
    gates = {n: np.asarray(g, np.float32) for n, g in gates.items()}  # bfloat16 maps do not draw (mixed precision)
    low, high = gate_value_range(list(gates.values()))
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
        im = ax.imshow(g, cmap="magma", vmin=low, vmax=high)
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
            heat = np.abs(np.asarray(feat, np.float32)[0]).mean(-1)  # float32: bfloat16 means are coarse
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
    """Losses, learning rate and validation mIoU against the step, from ``run_dir/history.csv`` (the file training
    writes: one row per backup chunk, columns ``chunk``, ``step``, the losses, ``lr``, and ``val_miou`` in the rows
    of chunks that ended with an evaluation)."""
    history = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(history):
        raise FileNotFoundError(f"no history.csv in run dir {run_dir}")
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{history} is empty")
    if "step" not in rows[0]:
        raise ValueError(f"{history}: no 'step' column (columns: {', '.join(rows[0])}); expected the history.csv "
                         "of a gsto-tf training run")

    def series(key):  # (steps, values) of the rows that have a number in this column
        points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "", "NA")]
        return [p[0] for p in points], [p[1] for p in points]

    loss_keys = [k for k in rows[0] if k.endswith("loss") and series(k)[0]]
    panels = [("loss", loss_keys), ("learning rate", ["lr"] if series("lr")[0] else []),
              ("val mIoU (%)", ["val_miou"] if "val_miou" in rows[0] and series("val_miou")[0] else [])]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.5), squeeze=False,
                             gridspec_kw={"wspace": 0.3})
    for ax, (ylabel, keys) in zip(axes[0], panels):
        for key in keys:
            steps, values = series(key)
            scale = 100.0 if key == "val_miou" else 1.0
            ax.plot(steps, [scale * v for v in values], label=key, marker="o", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)), fontsize=9)
    return _save(fig, path)
