"""The built-in synthetic dataset: street-and-harbour scenes generated procedurally, no download needed.

Design (what makes it a useful stand-in for a multi-scale segmentation benchmark on a laptop CPU):

* **Layout**: written once into a cache folder in the *Cityscapes layout* with *raw label ids* (PNG files), so the
  real reading and label-mapping code runs. 8 classes: road, water, sky, building, vegetation, car, boat, person.
* **Multi-scale**: vehicles and people are placed with perspective: the lower in the image, the larger — the same
  class appears from ~4 px to ~90 px wide in one dataset, often in one image.
* **Context needed**: ``sky`` and ``water`` share one texture and colour distribution, so do ``car`` and ``boat``;
  only context tells them apart (above / below the horizon; standing on road / on water). A purely local
  classifier confuses them; a network that transfers information across scales does not.
* **Texture and noise**: every region has a class-dependent texture (stripes, speckle, smooth gradients) with
  per-image colour jitter, a global illumination change and pixel noise.
* **Ignore regions**: an "ego vehicle" band at the bottom of some images (raw id 1) and random void patches
  (raw id 0), both mapped to the ignore label.

Generation is seeded (image ``i`` of split ``s`` uses seed ``(seed, split, i)``), vectorised numpy (cheap enough to
build on first use), and atomic: files go to a temp folder that is renamed into place when complete.
"""

import hashlib
import json
import os
import shutil

import numpy as np
from PIL import Image

from gsto_tf.atomic import make_temp_dir, storage_errors
from gsto_tf.data.registry import get_dataset_spec

VERSION = 1
DEFAULT_CONFIG = {"height": 128, "width": 256, "train": 320, "val": 64, "seed": 0}
# class name -> the raw value the generator writes for it (the synthetic card's label_map, inverted)
_CARD = get_dataset_spec("synthetic")
_RAW = {_CARD.class_names[train]: raw for raw, train in _CARD.raw_to_train}
VOID_RAW, EGO_RAW = 0, 1
_SPLIT_IDS = {"train": 1, "val": 2}
_CITIES = ("harbourtown", "rivercity")


def default_cache_dir():
    return os.path.join(os.environ.get("GSTO_TF_CACHE", os.path.expanduser("~/.cache/gsto_tf")), "synthetic")


def _config_dir(root, config):
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(root, f"v{VERSION}-{digest}")


def _texture(rng, h, w, yy, xx, kind):
    if kind == "stripes":
        f = rng.uniform(0.2, 0.6)
        return 0.5 + 0.5 * np.sin(f * (xx * rng.uniform(-1, 1) + yy) + rng.uniform(0, 6))
    if kind == "speckle":
        return rng.random((h, w))
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(0.35 * yy + 2.0 * np.sin(0.08 * xx + rng.uniform(0, 6)))
    return np.zeros((h, w))


_STYLE = {  # base colour (RGB 0..1), texture kind, texture strength
    "road": ((0.45, 0.42, 0.45), "speckle", 0.12),
    "water": ((0.35, 0.55, 0.80), "waves", 0.18),  # same look as sky: context decides
    "sky": ((0.35, 0.55, 0.80), "waves", 0.18),
    "building": ((0.55, 0.40, 0.30), "stripes", 0.25),
    "vegetation": ((0.20, 0.50, 0.15), "speckle", 0.35),
    "vehicle": (None, "stripes", 0.10),  # car and boat: same look, random body colour
    "person": ((0.75, 0.25, 0.30), "speckle", 0.15),
}


def _paint(img, mask, rng, yy, xx, style, colour=None):
    base, kind, strength = _STYLE[style]
    base = np.asarray(colour if colour is not None else base) * rng.uniform(0.85, 1.15, 3)
    tex = _texture(rng, *mask.shape, yy, xx, kind)[..., None]
    img[mask] = np.clip(base * (1 - strength) + strength * tex[mask] * base * 2, 0, 1)


def generate_sample(rng, height, width):
    """One (uint8 RGB image [H, W, 3], uint8 raw label [H, W]) pair."""
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    lab = np.zeros((h, w), np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.55))

    def put(mask, name, style=None, colour=None):
        _paint(img, mask, rng, yy, xx, style or name, colour)
        lab[mask] = _RAW[name]

    put(yy < horizon, "sky")
    # ground: road and water side by side, split by a slanted shoreline
    shore = w * rng.uniform(0.2, 0.8) + (yy - horizon) * rng.uniform(-1.0, 1.0)
    water_left = rng.random() < 0.5
    ground = yy >= horizon
    is_water = ground & ((xx < shore) if water_left else (xx >= shore))
    put(ground & ~is_water, "road")
    put(is_water, "water")
    # buildings standing on the horizon, vegetation blobs in front of them
    for _ in range(rng.integers(2, 6)):
        x0 = rng.uniform(0, w)
        bw, bh = rng.uniform(0.05, 0.25) * w, rng.uniform(0.1, 0.9) * horizon
        put((xx >= x0) & (xx < x0 + bw) & (yy < horizon) & (yy >= horizon - bh), "building")
    for _ in range(rng.integers(1, 5)):
        cx, cy, r = rng.uniform(0, w), horizon - rng.uniform(0, 0.3) * horizon, rng.uniform(3, 0.25 * h)
        put(((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) & (yy < horizon + 2), "vegetation")
    # vehicles with perspective scale: car on road, boat on water (same appearance)
    depth_rows = np.sort(rng.uniform(horizon + 2, h - 2, rng.integers(3, 9)))
    for row in depth_rows:
        scale = (row - horizon) / max(h - horizon, 1)  # 0 at the horizon, 1 at the bottom
        vw = 4 + scale * rng.uniform(0.15, 0.35) * w
        vh = max(2.0, vw * rng.uniform(0.35, 0.55))
        cx = rng.uniform(0, w)
        body = (np.abs(xx - cx) < vw / 2) & (yy <= row) & (yy > row - vh)
        on_water = is_water[int(min(row, h - 1)), int(np.clip(cx, 0, w - 1))]
        colour = rng.uniform(0.1, 0.95, 3)
        put(body, "boat" if on_water else "car", style="vehicle", colour=colour)
        window = body & (yy < row - vh * 0.55) & (np.abs(xx - cx) < vw * 0.35)
        img[window] *= 0.4  # a dark window band: part of the vehicle, same label
    # people: thin upright ellipses on the road only, perspective-scaled
    for _ in range(rng.integers(0, 6)):
        row = rng.uniform(horizon + 2, h - 1)
        r, c = int(row), int(rng.uniform(0, w - 1))
        if is_water[min(r, h - 1), c]:
            continue
        ph = 4 + (row - horizon) / max(h - horizon, 1) * rng.uniform(0.2, 0.5) * h
        put(((xx - c) / (ph * 0.18)) ** 2 + ((yy - (row - ph / 2)) / (ph / 2)) ** 2 < 1, "person")
    # ignore regions: an ego-vehicle band and void patches
    if rng.random() < 0.3:
        band = yy >= h - rng.uniform(0.04, 0.1) * h
        img[band] = rng.uniform(0.05, 0.2)
        lab[band] = EGO_RAW
    if rng.random() < 0.5:
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        patch = (xx >= x0) & (xx < x0 + rng.uniform(4, 20)) & (yy >= y0) & (yy < y0 + rng.uniform(4, 20))
        img[patch] = rng.random((int(patch.sum()), 3))
        lab[patch] = VOID_RAW
    img = img * rng.uniform(0.7, 1.3) + rng.normal(0, 0.03, img.shape)  # illumination + sensor noise
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), lab


def _write_split(root, split, count, config):
    for i in range(count):
        rng = np.random.default_rng([config["seed"], _SPLIT_IDS[split], i])
        image, label = generate_sample(rng, config["height"], config["width"])
        city = _CITIES[i % len(_CITIES)]
        stem = f"{city}_{i // len(_CITIES):06d}_000019"
        for sub, suffix, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", label)):
            folder = os.path.join(root, sub, split, city)
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(array).save(os.path.join(folder, f"{stem}_{suffix}.png"))


def ensure_synthetic(data_dir=None, **overrides):
    """Generate the dataset if needed and return its root folder (Cityscapes layout).

    ``data_dir`` defaults to :func:`default_cache_dir`; a versioned, config-hashed subfolder holds the files, so
    changing the config never reuses stale data. Generation is atomic (temp folder + rename).
    """
    config = dict(DEFAULT_CONFIG, **overrides)
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"synthetic dataset: unknown options {sorted(unknown)}; valid: {sorted(DEFAULT_CONFIG)}")
    root = _config_dir(data_dir or default_cache_dir(), config)
    if os.path.isfile(os.path.join(root, "DONE")):
        return root
    parent = os.path.dirname(root)
    where = "$GSTO_TF_CACHE" if data_dir is None and "GSTO_TF_CACHE" in os.environ else "--data-dir"
    with storage_errors(f"the synthetic dataset in {parent} ({where})"):
        os.makedirs(parent, exist_ok=True)
        tmp = make_temp_dir(parent, ".synthetic-")
    try:
        for split in ("train", "val"):
            _write_split(tmp, split, config[split], config)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        open(os.path.join(tmp, "DONE"), "w").close()
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first
            if not os.path.isfile(os.path.join(root, "DONE")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
