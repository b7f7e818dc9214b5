"""Datasets by name or card file: the :class:`DatasetSpec` every other module reads a dataset's facts from.

A dataset is described by a card (:mod:`gsto_tf.data.card`). The built-in ones are the ``*.yaml`` files of
``gsto_tf/data/cards/``, found by name (``cityscapes``); any other card is found by its path
(``my_data.yaml``). Labels seen by everything downstream of :meth:`DatasetSpec.map_labels` are train ids
``0..K-1`` or :data:`IGNORE_LABEL`.
"""

import copy
import dataclasses
import functools
import os

import numpy as np

from gsto_tf.data.card import IGNORE_LABEL, DatasetCardError, read_card

_INVALID = -1  # LUT entry of a raw value that is neither a class nor void: reported as an error
CARDS_DIR = os.path.join(os.path.dirname(__file__), "cards")
CARD_SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple
    palette: tuple  # one RGB triple per train id
    raw_to_train: tuple  # (raw value, train id) pairs
    void: tuple = ()  # raw values that are ignored; every other value that is not in raw_to_train is an error
    layout_kind: str = "folders"  # which reader lists the files (gsto_tf.data.layouts)
    splits: tuple = ()  # (split, ((key, value), ...)): folders / list file / expected size of each split
    layout_help: str = ""  # the expected files, shown in "data not found" errors
    source: str = ""  # where to get the data
    invalid_values_hint: str = ""  # added to the "neither a class nor void" error when the values include 255
    flip_pairs: tuple = ()  # train-id pairs swapped by a horizontal flip (LIP left/right parts)
    class_weights: tuple = None  # loss weight per class (train.class_weights), if the card has them
    # Instance-level scores (Cityscapes iIoU, cityscapesScripts' evalPixelLevelSemanticLabeling.py): (class name,
    # average instance size in pixels) of the classes scored per instance, and (category name, class names) of the
    # category-level scores. Empty: not scored.
    instance_classes: tuple = ()
    categories: tuple = ()
    recipe: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)  # experiment config sections
    evaluation: tuple = ()  # (key, value) pairs of the test setting (gsto_tf.evaluation.settings)
    generator: str = None  # "synthetic": generated on first use, not read from --data-dir
    card: str = ""  # the card file this spec was read from

    ignore_label = IGNORE_LABEL  # the train id of void pixels (a constant, not a field)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def palette_array(self):
        return np.asarray(self.palette, np.uint8)

    def recipe_sections(self):
        """A copy of the card's recipe (``{section: {key: value}}``), safe to change."""
        return copy.deepcopy(self.recipe)

    def split_entry(self, split):
        """The card's entry of ``split`` as a dict (``images`` / ``labels`` / ``list`` / ``size``), or None."""
        entry = dict(self.splits).get(split)
        return None if entry is None else dict(entry)

    @property
    def split_names(self):
        return tuple(split for split, _ in self.splits)

    def label_lut(self):
        """int32 [256] lookup table raw value -> train id (ignore_label for void, -1 for invalid values)."""
        lut = np.full(256, _INVALID, np.int32)
        lut[list(self.void)] = IGNORE_LABEL
        for raw, train in self.raw_to_train:
            lut[raw] = train
        return lut

    def map_labels(self, raw):
        """Raw label values (uint8; numpy or tf) -> train ids (int32). Invalid values become -1."""
        lut = self.label_lut()
        if isinstance(raw, np.ndarray):
            return lut[raw.astype(np.int64)]
        import tensorflow as tf

        return tf.gather(tf.constant(lut), tf.cast(raw, tf.int32))

    def unmap_labels(self, train_ids):
        """Train ids -> raw label values (for test-server submissions); ignore maps to 0."""
        inverse = np.zeros(256, np.uint8)
        for raw, train in sorted(self.raw_to_train, reverse=True):  # the smallest raw value of a class wins
            inverse[train] = raw
        return inverse[np.asarray(train_ids, np.int64)]

    def expected_size(self, split):
        return (self.split_entry(split) or {}).get("size")


def available_datasets():
    """The names of the built-in dataset cards."""
    return sorted(os.path.splitext(f)[0] for f in os.listdir(CARDS_DIR) if f.endswith(CARD_SUFFIXES))


def is_card_path(dataset):
    """Whether ``--dataset`` names a card file rather than a built-in dataset."""
    return isinstance(dataset, str) and (dataset.endswith(CARD_SUFFIXES) or os.sep in dataset or "/" in dataset)


@functools.lru_cache(maxsize=None)
def _builtin(name):
    return read_card(os.path.join(CARDS_DIR, f"{name}.yaml"))


def get_dataset_spec(dataset):
    """The :class:`DatasetSpec` of a built-in name, a card path or a spec (returned as it is). An unknown name or a
    bad card is a :class:`~gsto_tf.data.card.DatasetCardError` (a ValueError) naming it."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    if is_card_path(dataset):
        return read_card(dataset)
    if dataset not in available_datasets():
        raise DatasetCardError(f"unknown dataset {dataset!r}; built-in: {', '.join(available_datasets())}, or the "
                               f"path of a dataset card (.yaml, see docs/data.md)")
    return _builtin(dataset)
