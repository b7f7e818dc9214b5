"""Prediction on image files: label PNGs and colour overlays with the dataset palette."""

import collections
import glob
import os

import numpy as np

from gsto_tf.atomic import storage_errors
from gsto_tf.data.normalization import normalize_image
from gsto_tf.evaluation.inference import Predictor
from gsto_tf.images import load_rgb, save_png
from gsto_tf.visualize.colors import overlay

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def expand_inputs(spec):
    """An image path, a folder (its images, sorted) or a glob -> list of paths; errors say what matched nothing."""
    if os.path.isdir(spec):
        paths = sorted(p for p in glob.glob(os.path.join(spec, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = sorted(glob.glob(spec))
    if not paths:
        raise FileNotFoundError(f"predict: no images match {spec!r} (an image file, a folder or a glob)")
    return paths


def output_names(paths):
    """``{input path: output name stem}``: the file name without its extension, or with it (``a_png``,
    ``a_jpg``) where two inputs share a stem. Inputs that would still write the same files (``x/a.png`` and
    ``y/a.png``) raise a ValueError naming both: nothing is overwritten silently."""
    stems = {p: os.path.splitext(os.path.basename(p))[0] for p in paths}
    counts = collections.Counter(stems.values())
    names, taken = {}, {}
    for path, stem in stems.items():
        name = stem if counts[stem] == 1 else os.path.basename(path).replace(".", "_")
        if name in taken:
            raise ValueError(f"predict: {taken[name]} and {path} would both be written as {name}_labels.png; "
                             "predict them into separate --output folders")
        names[path], taken[name] = name, path
    return names


def predict_files(model, paths, output_dir, palette, *, setting=None, opacity=0.5, flip_pairs=(), overwrite=False):
    """Write ``<name>_labels.png`` (train ids) and ``<name>_overlay.png`` per image (names from
    :func:`output_names`); returns written paths. Refused before any image is read: an output that is one of the
    inputs; an ``output_dir`` that is a file; outputs that exist already, unless ``overwrite``."""
    from gsto_tf.evaluation.settings import TestSetting

    names = output_names(paths)
    outputs = {path: (os.path.join(output_dir, f"{name}_labels.png"), os.path.join(output_dir, f"{name}_overlay.png"))
               for path, name in names.items()}
    inputs = {os.path.realpath(p) for p in paths}
    clash = next((out for pair in outputs.values() for out in pair if os.path.realpath(out) in inputs), None)
    if clash is not None:
        raise ValueError(f"predict: the output {clash} is also an input; choose another --output folder")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"predict: --output {output_dir} is a file, not a folder")
    existing = [out for pair in outputs.values() for out in pair if os.path.lexists(out)]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ValueError(f"predict: {existing[0]}{more} exist already; pass --overwrite to replace them, or choose "
                         "another --output folder")
    predictor = Predictor.from_setting(model, setting or TestSetting(), flip_pairs)
    with storage_errors(f"--output {output_dir}"):
        os.makedirs(output_dir, exist_ok=True)
    written = []
    for path, (label_path, overlay_path) in outputs.items():
        rgb = load_rgb(path)
        try:
            labels = predictor.predict(normalize_image(rgb)).numpy().astype(np.uint8)
        except ValueError as exc:  # too many pixels at the setting's largest scale
            raise ValueError(f"cannot predict {path}: {exc}") from None
        save_png(label_path, labels)
        save_png(overlay_path, overlay(rgb, labels, palette, opacity))
        written += [label_path, overlay_path]
    return written
