"""Prediction on image files: label PNGs and colour overlays with the dataset palette."""

import glob
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from gsto_tf.atomic import save_png
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
    palette = np.asarray(palette, np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    lut[ignore_label] = 0
    return lut[np.asarray(labels, np.int64)]


def overlay(image, labels, palette, opacity=0.5):
    """Blend the palette colours of ``labels`` over an RGB uint8 ``image``."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    colours = colorize(labels, palette).astype(np.float32)
    return np.round((1 - opacity) * image.astype(np.float32) + opacity * colours).astype(np.uint8)


def load_rgb(path):
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"predict: cannot decode image {path}: {exc}") from None


def predict_files(model, paths, output_dir, palette, *, setting=None, opacity=0.5, flip_pairs=()):
    """Write ``<name>_labels.png`` (train ids) and ``<name>_overlay.png`` per image; returns written paths."""
    from gsto_tf.evaluation.settings import TestSetting

    setting = setting or TestSetting()
    predictor = Predictor(model, scales=setting.scales, flip=setting.flip, mode=setting.mode,
                          crop_size=setting.crop_size, stride=setting.stride, flip_pairs=flip_pairs)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in paths:
        rgb = load_rgb(path)
        labels = predictor.predict(normalize_image(rgb)).numpy().astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        label_path = os.path.join(output_dir, f"{stem}_labels.png")
        overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
        save_png(label_path, labels)
        save_png(overlay_path, overlay(rgb, labels, palette, opacity))
        written += [label_path, overlay_path]
    return written
