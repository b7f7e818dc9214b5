"""tf.data pipelines for training and evaluation.

Training order is a pure function of ``(seed, epoch, position)``: each epoch is a stateless permutation of the
sample indices and each sample's augmentation uses stateless random ops seeded by its global position, so a run
restarted at step ``k`` (``start_step=k``) sees exactly the batches an uninterrupted run sees from step ``k`` on.

Files are read by :func:`gsto_tf.data.decode.read_pair` (the one image / label decoder, also used by
``data verify`` and the tfds builders): every bad file fails naming it.

Augmentation (HRNet's training recipe, lib/datasets/base_dataset.py): resize so the long side is
``base_size * s`` with ``s ~ U(scale_range)`` (no ``base_size``: the image's own long side times ``s``) (image bilinear, label nearest — both through
:mod:`gsto_tf.layers.resize`), pad to the crop size (image with 0 *after* normalisation, label with ignore), random
crop, horizontal flip with p = 0.5 (swapping left/right classes where the dataset has flip pairs), optional
photometric jitter before normalisation.
"""

import numpy as np
import tensorflow as tf

from gsto_tf.data.decode import read_pair
from gsto_tf.data.layouts import list_samples
from gsto_tf.data.normalization import normalize_image
from gsto_tf.data.registry import get_dataset_spec
from gsto_tf.layers.resize import resize_bilinear, resize_nearest

AUTOTUNE = tf.data.AUTOTUNE
# Augmentation of a dataset whose card's recipe does not set it (docs/data.md): crop [h, w], scale range, and the
# long side that scale 1 resizes to (None: the image's own).
AUGMENTATION_DEFAULTS = {"crop_size": (512, 512), "scale_range": (0.5, 2.0), "base_size": None}


def augmentation(dataset, crop_size=None, scale_range=None, base_size=None):
    """``(crop_size, scale_range, base_size)``: each argument given, else the card's ``recipe.data`` value, else
    :data:`AUGMENTATION_DEFAULTS`."""
    card = get_dataset_spec(dataset).recipe.get("data", {})
    given = {"crop_size": crop_size, "scale_range": scale_range, "base_size": base_size}
    out = [given[k] if given[k] is not None else card.get(k, default) for k, default in AUGMENTATION_DEFAULTS.items()]
    crop, scales, base = out
    return tuple(crop), tuple(float(s) for s in scales), None if base is None else float(base)


def _flip_lut(spec):
    lut = np.arange(256, dtype=np.int32)
    for a, b in spec.flip_pairs:
        lut[a], lut[b] = b, a
    return tf.constant(lut)


def _augment(spec, image, label, crop_size, scale_range, seed, photometric, base_size):
    """Deterministic given ``seed`` (a stateless [2] int seed)."""
    seeds = tf.random.experimental.stateless_split(seed, 6)
    if photometric:
        image = tf.cast(image, tf.float32)
        image = tf.image.stateless_random_brightness(image, 32.0, seeds[4])
        image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seeds[5])
        image = tf.clip_by_value(image, 0.0, 255.0)
    image = normalize_image(image)
    label = label[..., None]
    # random scale: long side -> base_size * s
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    s = tf.random.stateless_uniform([], seeds[0], scale_range[0], scale_range[1])
    factor = s if base_size is None else base_size * s / tf.reduce_max(hw)
    new_hw = tf.maximum(tf.cast(tf.round(hw * factor), tf.int32), 1)
    image = resize_bilinear(image, new_hw)
    label = resize_nearest(label, new_hw)
    # pad to the crop size: image with the normalised zero, label with ignore
    ch, cw = crop_size
    pad_h = tf.maximum(ch - new_hw[0], 0)
    pad_w = tf.maximum(cw - new_hw[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=spec.ignore_label)
    # random crop of image and label together
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    y0 = tf.random.stateless_uniform([], seeds[1], 0, h - ch + 1, dtype=tf.int32)
    x0 = tf.random.stateless_uniform([], seeds[2], 0, w - cw + 1, dtype=tf.int32)
    image = image[y0:y0 + ch, x0:x0 + cw]
    label = label[y0:y0 + ch, x0:x0 + cw, 0]
    # flip (left/right classes swap where the dataset has them)
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    if spec.flip_pairs:
        swapped = tf.gather(_flip_lut(spec), label)
        label = tf.cond(flip, lambda: swapped[:, ::-1], lambda: label)
    else:
        label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
    image = tf.ensure_shape(image, [ch, cw, 3])
    label = tf.ensure_shape(label, [ch, cw])
    return image, label


def resolve_data_dir(dataset, data_dir):
    """A generated dataset (card ``generator: synthetic``) is written on demand; every other dataset must be on
    disk."""
    if get_dataset_spec(dataset).generator == "synthetic":
        from gsto_tf.data.synthetic import ensure_synthetic

        if data_dir is not None and _looks_like_cityscapes_root(data_dir):
            return data_dir
        return ensure_synthetic(data_dir)
    return data_dir


def _looks_like_cityscapes_root(path):
    import os

    return os.path.isdir(os.path.join(path, "leftImg8bit"))


def build_train_dataset(dataset, data_dir, *, global_batch_size, seed=0, crop_size=None, scale_range=None,
                        split="train", photometric=False, start_step=0, epochs=None, base_size=None):
    """Augmented training batches ``(image float32 [B, h, w, 3], label int32 [B, h, w])``.

    ``global_batch_size`` is the batch of one optimiser step over all replicas (Keras / tf.distribute split it).
    ``start_step`` skips whole batches *before* decoding (resume). ``epochs=None`` repeats forever.
    ``dataset``: a built-in name, a card path or a DatasetSpec; crop, scales and base size default to the card's.
    """
    spec = get_dataset_spec(dataset)
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    crop_size, scale_range, base_size = augmentation(spec, crop_size, scale_range, base_size)
    samples = list_samples(spec, resolve_data_dir(spec, data_dir), split)
    n = len(samples)
    if n < global_batch_size:
        raise ValueError(f"dataset '{spec.name}' split '{split}' has {n} samples, fewer than one batch "
                         f"({global_batch_size})")
    images = tf.constant([s[0] for s in samples])
    labels = tf.constant([s[1] for s in samples])
    steps_per_epoch = n // global_batch_size
    per_epoch = steps_per_epoch * global_batch_size  # drop the remainder of each epoch, like drop_last

    def epoch_indices(epoch):
        perm = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=[seed, epoch])
        positions = epoch * per_epoch + tf.range(per_epoch, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((positions, perm[:per_epoch]))

    epoch_ds = tf.data.Dataset.range(epochs) if epochs is not None else tf.data.Dataset.range(2**62)
    ds = epoch_ds.flat_map(epoch_indices)
    if start_step:
        ds = ds.skip(start_step * global_batch_size)

    # Plain tf ops only (tf.cond is explicit), so autograph is not needed; it mis-resolved this closure's
    # variables and warned on every build.
    @tf.autograph.experimental.do_not_convert
    def load(position, index):
        image, label = read_pair(spec, images[index], labels[index])
        return _augment(spec, image, label, crop_size, scale_range,
                        tf.stack([tf.cast(seed, tf.int64), position]), photometric, base_size)

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(global_batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(AUTOTUNE)


def steps_per_epoch(dataset, data_dir, global_batch_size, split="train"):
    return len(list_samples(dataset, resolve_data_dir(dataset, data_dir), split)) // global_batch_size


def build_eval_dataset(dataset, data_dir, *, split="val", limit=None, spread=None, seed=0):
    """Unbatched ``{"image": float32 [H, W, 3] normalised, "label": int32 [H, W], "path": string}`` at the
    original resolution. ``limit``: the first N images; ``spread``: N images drawn over the whole split (seeded,
    in split order), so that samples of a video dataset are not N consecutive frames."""
    spec = get_dataset_spec(dataset)
    samples = list_samples(spec, resolve_data_dir(spec, data_dir), split)
    if limit:
        samples = samples[:limit]
    if spread is not None and spread < len(samples):
        picked = np.random.default_rng(seed).choice(len(samples), spread, replace=False)
        samples = [samples[i] for i in sorted(picked)]
    ds = tf.data.Dataset.from_tensor_slices(([s[0] for s in samples], [s[1] for s in samples]))

    @tf.autograph.experimental.do_not_convert
    def load(image_path, label_path):
        image, label = read_pair(spec, image_path, label_path)
        return {"image": normalize_image(image), "label": label, "path": image_path}

    return ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
