"""Tiny datasets written in the real on-disk layouts, for tests."""

import os

import numpy as np
from PIL import Image


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)


def tiny_cityscapes(root, split="val", n=3, h=20, w=30, seed=0, instances=False):
    """Cityscapes layout with raw labelIds drawn from valid ids and void ids. ``instances``: also write
    ``*_gtFine_instanceIds.png`` (16 bit): pixels of instance classes (labelIds 24-33) get ``labelId * 1000 + n``
    with the instance n given by the column block of 10 pixels, all others their labelId."""
    rng = np.random.default_rng(seed)
    raw_ids = np.array([0, 1, 7, 8, 11, 23, 24, 26, 29, 33])
    for i in range(n):
        stem = f"aachen_{i:06d}_000019"
        write_png(f"{root}/leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png",
                  rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        labels = raw_ids[rng.integers(0, len(raw_ids), (h, w))].astype(np.uint8)
        write_png(f"{root}/gtFine/{split}/aachen/{stem}_gtFine_labelIds.png", labels)
        if instances:
            block = np.broadcast_to(np.arange(w) // 10, (h, w))
            ids = np.where(labels >= 24, labels.astype(np.int64) * 1000 + block, labels).astype(np.uint16)
            write_png(f"{root}/gtFine/{split}/aachen/{stem}_gtFine_instanceIds.png", ids)
    return root


def tiny_lip(root, split="train", n=2, h=16, w=24, labels=None):
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(f"{root}/TrainVal_images/{split}_images/{i:04d}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lab = labels if labels is not None else rng.integers(0, 20, (h, w)).astype(np.uint8)
        write_png(f"{root}/TrainVal_parsing_annotations/{split}_segmentations/{i:04d}.png", lab)
    return root


def tiny_pascal_context(root, split="val", ids=("2008_000002", "2008_000003"), h=18, w=22, max_label=59):
    rng = np.random.default_rng(0)
    voc = f"{root}/VOC2010"
    os.makedirs(f"{voc}/ImageSets/SegmentationContext", exist_ok=True)
    with open(f"{voc}/ImageSets/SegmentationContext/{split}.txt", "w") as f:
        f.write("\n".join(ids) + "\n")
    for i in ids:
        write_png(f"{voc}/JPEGImages/{i}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_png(f"{voc}/SegmentationClassContext/{i}.png", rng.integers(0, max_label + 1, (h, w)).astype(np.uint8))
    return root
