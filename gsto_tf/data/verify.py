"""Checking a dataset on disk file by file: every bad file is reported, nothing is skipped.

Used by ``run.py data verify``. Each sample is decoded with PIL (not tf.data) so one bad file does not stop the
scan; the checks are the same the pipeline enforces (label present, decodable, same size as the image, values
that are a class or ignore after the dataset's mapping).
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from gsto_tf.data.layouts import list_samples
from gsto_tf.data.registry import get_dataset_spec


@dataclasses.dataclass
class SplitReport:
    split: str
    found: int
    expected: int = None
    problems: list = dataclasses.field(default_factory=list)  # (path, what is wrong)

    @property
    def count_ok(self):
        return self.expected is None or self.found == self.expected


def check_sample(spec, image_path, label_path):
    """A list of ``(path, problem)`` for one pair; empty when it is fine."""
    problems = []
    try:
        with Image.open(image_path) as im:
            im.load()
            image_size = im.size[::-1]
    except FileNotFoundError:
        return [(image_path, "image file missing")]
    except Exception as exc:
        problems.append((image_path, f"undecodable image ({exc.__class__.__name__}: {exc})"))
        image_size = None
    if label_path is None or not os.path.isfile(label_path):
        return problems + [(image_path, f"image without label (expected {label_path})")]
    try:
        with Image.open(label_path) as lab:
            raw = np.asarray(lab)
    except Exception as exc:
        return problems + [(label_path, f"undecodable label ({exc.__class__.__name__}: {exc})")]
    if raw.ndim != 2:
        return problems + [(label_path, f"label must be a single-channel PNG, got shape {raw.shape}")]
    if image_size is not None and raw.shape != tuple(image_size):
        problems.append((label_path, f"label size {raw.shape} differs from image size {tuple(image_size)}"))
    if raw.dtype != np.uint8 and raw.size and raw.max() > 255:
        problems.append((label_path, f"label values up to {raw.max()}, expected 8-bit ids"))
        return problems
    train = spec.map_labels(raw.astype(np.uint8))
    if np.any(train < 0):
        bad = np.unique(raw[train < 0])
        problems.append((label_path, f"label values {bad[:10].tolist()} are neither a class nor ignore"))
    return problems


def verify_dataset(name, data_dir, splits=None, limit=None, progress=None):
    """Check every sample of each split -> ``[SplitReport]``. Missing folders raise :class:`DatasetError`."""
    spec = get_dataset_spec(name)
    splits = splits or [s for s, _ in spec.split_sizes if s != "test"]
    reports = []
    for split in splits:
        samples = list_samples(spec.name, data_dir, split, require_labels=False)
        report = SplitReport(split, len(samples), spec.expected_size(split))
        for i, (image, label) in enumerate(samples[:limit] if limit else samples):
            report.problems += check_sample(spec, image, label)
            if progress and (i + 1) % 500 == 0:
                progress(f"{split}: {i + 1}/{len(samples)} checked")
        reports.append(report)
    return reports
