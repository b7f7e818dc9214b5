"""PASCAL-Context from the original release's per-image ``.mat`` files -> the converted PNG layout.

The original release (cs.stanford.edu/~roozbeh/pascal-context, ``trainval.tar.gz``) stores one
``{image_id}.mat`` per VOC2010 image, holding ``LabelMap``: uint16 [H, W] with ids of the full 459-label list
(1-based, ``labels.txt``). The 59-class benchmark keeps 59 of those ids; everything else becomes background.
:func:`prepare_pascal_context` writes ``VOC2010/SegmentationClassContext/{id}.png`` (0 = background,
1..59 = the 59 classes in alphabetical order, as PASCAL in Detail's ``trainval_merged.json``) and
``ImageSets/SegmentationContext/{train,val}.txt`` once, so the training pipeline only ever reads the PNG layout.
"""

import os

import numpy as np

from gsto_tf.atomic import write_atomically
from gsto_tf.images import save_png
from gsto_tf.data.layouts import DatasetError

# The 59 kept ids of the 459-label list (background 0 prepended), sorted: the i-th id becomes label i.
# Source of the numbers: the `_mapping` table of the PASCAL in Detail conversion as used by OpenMMLab's
# mmsegmentation `tools/dataset_converters/pascal_context.py` (and HRNet-Semantic-Segmentation's pascal_ctx.py).
PASCAL_CONTEXT_459_IDS = tuple(sorted((
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295,
    296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347,
    220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
)))


def _lut():
    lut = np.zeros(460, np.uint8)  # every id not kept -> 0 (background)
    for new, old in enumerate(PASCAL_CONTEXT_459_IDS):
        lut[old] = new
    return lut


def convert_label_map(label_map, source="LabelMap"):
    """459-label ``LabelMap`` [H, W] -> uint8 [H, W] with 0 = background, 1..59 = classes."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise DatasetError(f"{source}: LabelMap must be 2-D, got shape {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() > 459):
        raise DatasetError(f"{source}: LabelMap values must be in 0..459, got {label_map.min()}..{label_map.max()}")
    return _lut()[label_map.astype(np.int64)]


def read_mat_label(path):
    """Read one original ``.mat`` file and return the converted 0..59 label (errors name the file)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DatasetError(f"cannot read PASCAL-Context .mat file {path}: {exc}") from exc
    if "LabelMap" not in mat:
        raise DatasetError(f"{path}: no 'LabelMap' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    return convert_label_map(mat["LabelMap"], source=path)


def _write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def prepare_pascal_context(mat_dir, data_dir, *, overwrite=False, log=print):
    """Convert every ``{mat_dir}/{id}.mat`` into ``{data_dir}/VOC2010/SegmentationClassContext/{id}.png``.

    The split lists ``ImageSets/SegmentationContext/{train,val}.txt`` are the VOC2010 ``ImageSets/Main``
    train / val lists (4998 / 5105 images) restricted to images that have a ``.mat`` file; images listed there
    but without one are reported. Files are written atomically; existing PNGs are kept unless ``overwrite``.
    Returns ``{split: count}``.
    """
    voc = os.path.join(data_dir, "VOC2010")
    if not os.path.isdir(mat_dir):
        raise DatasetError(f"PASCAL-Context .mat folder not found: {mat_dir} (expected {{mat_dir}}/{{id}}.mat from "
                           "trainval.tar.gz of https://cs.stanford.edu/~roozbeh/pascal-context/)")
    if not os.path.isdir(os.path.join(voc, "JPEGImages")):
        raise DatasetError(f"VOC2010 images not found: {os.path.join(voc, 'JPEGImages')} (expected the extracted "
                           "VOC2010 trainval tar, host.robots.ox.ac.uk/pascal/VOC/voc2010/)")
    mats = {f[:-4] for f in os.listdir(mat_dir) if f.endswith(".mat")}
    if not mats:
        raise DatasetError(f"no .mat files in {mat_dir}")
    out_dir = os.path.join(voc, "SegmentationClassContext")
    os.makedirs(out_dir, exist_ok=True)
    converted = 0
    for image_id in sorted(mats):
        out = os.path.join(out_dir, f"{image_id}.png")
        if os.path.exists(out) and not overwrite:
            continue
        label = read_mat_label(os.path.join(mat_dir, f"{image_id}.mat"))
        save_png(out, label)
        converted += 1
    log(f"converted {converted} .mat files into {out_dir} ({len(mats) - converted} already there)")
    sets = os.path.join(voc, "ImageSets", "SegmentationContext")
    os.makedirs(sets, exist_ok=True)
    counts = {}
    for split in ("train", "val"):
        main_list = os.path.join(voc, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(main_list):
            raise DatasetError(f"VOC2010 split list not found: {main_list} (needed to write the {split} list)")
        with open(main_list) as f:
            ids = [line.split()[0] for line in f if line.strip()]
        missing = [i for i in ids if i not in mats]
        if missing:
            log(f"{split}: {len(missing)} images of {main_list} have no .mat file, e.g. {missing[:3]}")
        kept = [i for i in ids if i in mats]
        write_atomically(os.path.join(sets, f"{split}.txt"), lambda p, k=kept: _write_lines(p, k))
        counts[split] = len(kept)
    return counts
