"""Checking a dataset on disk file by file: every bad file is reported, nothing is skipped.

Used by ``gsto-tf data verify``. Each file is read with the pipelines' own decoders
(:mod:`gsto_tf.data.decode`, run eagerly one file at a time, so one bad file does not stop the scan): the image
decodes, the label is there, is a single-channel 8-bit (or palette) PNG of the image's size, and holds only values
that are a class or void after the dataset's mapping. A split whose number of samples differs from the published
one is not a problem in itself (a subset, a generated set or another release): the report notes it.
"""

import dataclasses
import os

from gsto_tf.data.decode import check_label_values, check_sizes, read_image_file, read_label_file
from gsto_tf.data.layouts import DatasetError, list_samples
from gsto_tf.data.registry import get_dataset_spec


@dataclasses.dataclass
class SplitReport:
    split: str
    found: int
    expected: int = None  # the published number of samples, if known
    problems: list = dataclasses.field(default_factory=list)  # (path, what is wrong)

    @property
    def count_differs(self):
        """The split has another number of samples than the published one: a note, not a problem."""
        return self.expected is not None and self.found != self.expected


def _problem(path, exc):
    text = str(exc)
    return path, text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text


def check_sample(spec, image_path, label_path):
    """A list of ``(path, problem)`` for one pair; empty when it is fine."""
    problems = []
    image_hw = None
    if not os.path.isfile(image_path):
        return [(image_path, "image file missing")]
    try:
        image_hw = read_image_file(image_path).shape[:2]
    except DatasetError as exc:
        problems.append(_problem(image_path, exc))
    if label_path is None or not os.path.isfile(label_path):
        return problems + [(image_path, f"image without label (expected {label_path})")]
    try:
        raw = read_label_file(label_path)
    except DatasetError as exc:
        return problems + [_problem(label_path, exc)]
    checks = [lambda: check_label_values(spec, raw, label_path)]
    if image_hw is not None:
        checks.insert(0, lambda: check_sizes(image_hw, raw.shape, image_path, label_path))
    for check in checks:
        try:
            check()
        except DatasetError as exc:
            problems.append(_problem(label_path, exc))
    return problems


def verify_dataset(dataset, data_dir, splits=None, limit=None, progress=None):
    """Check every sample of each split (default: every split of the card but ``test``) -> ``[SplitReport]``.
    Missing folders raise :class:`DatasetError`."""
    spec = get_dataset_spec(dataset)
    splits = splits or [s for s in spec.split_names if s != "test"]
    reports = []
    for split in splits:
        samples = list_samples(spec, data_dir, split, require_labels=False)
        report = SplitReport(split, len(samples), spec.expected_size(split))
        for i, (image, label) in enumerate(samples[:limit] if limit else samples):
            report.problems += check_sample(spec, image, label)
            if progress and (i + 1) % 500 == 0:
                progress(f"{split}: {i + 1}/{len(samples)} checked")
        reports.append(report)
    return reports
