"""Datasets (described by cards, gsto_tf/data/cards/*.yaml), label mappings and tf.data pipelines."""

from gsto_tf.data.card import DatasetCardError, read_card
from gsto_tf.data.layouts import DatasetError, list_samples
from gsto_tf.data.normalization import IMAGENET_MEAN, IMAGENET_STD, denormalize_image, normalize_image
from gsto_tf.data.pipeline import augmentation, build_eval_dataset, build_train_dataset, resolve_data_dir, steps_per_epoch
from gsto_tf.data.registry import IGNORE_LABEL, DatasetSpec, available_datasets, get_dataset_spec
from gsto_tf.data.pascal_context_mat import prepare_pascal_context
from gsto_tf.data.synthetic import ensure_synthetic
from gsto_tf.data.verify import verify_dataset

# tfds builders (`pascal_context`, `lip`) and `load_cityscapes_tfds` live in gsto_tf.data.tfds_builders, imported
# on demand because importing tensorflow_datasets is slow.

__all__ = [
    "DatasetCardError",
    "DatasetError",
    "DatasetSpec",
    "IGNORE_LABEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "augmentation",
    "available_datasets",
    "build_eval_dataset",
    "build_train_dataset",
    "denormalize_image",
    "ensure_synthetic",
    "get_dataset_spec",
    "list_samples",
    "normalize_image",
    "prepare_pascal_context",
    "read_card",
    "resolve_data_dir",
    "steps_per_epoch",
    "verify_dataset",
]
