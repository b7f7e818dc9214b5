"""Prediction on image files: label PNGs and colour overlays with the dataset palette."""

import collections
import glob
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from gsto_tf.atomic import save_png, storage_errors
from gsto_tf.data.normalization import normalize_image
from gsto_tf.evaluation.inference import Predictor

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


def colorize(labels, palette, ignore_label=255):
    """uint8 RGB ``[H, W, 3]`` of a label map: palette colour per train id, black for ignore and unknown ids."""
    palette = np.asarray(palette, np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    lut[ignore_label] = 0
    return lut[np.clip(np.asarray(labels, np.int64), 0, 255)]


def overlay(image, labels, palette, opacity=0.5, ignore_label=255):
    """Blend the palette colours of ``labels`` over an RGB uint8 ``image`` (the one overlay: ``predict``, the
    figures and ``data browse``)."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    colours = colorize(labels, palette, ignore_label).astype(np.float32)
    return np.round((1 - opacity) * image.astype(np.float32) + opacity * colours).astype(np.uint8)


def load_rgb(path):
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"predict: cannot decode image {path}: {exc}") from None


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
        labels = predictor.predict(normalize_image(rgb)).numpy().astype(np.uint8)
        save_png(label_path, labels)
        save_png(overlay_path, overlay(rgb, labels, palette, opacity))
        written += [label_path, overlay_path]
    return written
