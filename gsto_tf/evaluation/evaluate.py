"""Evaluate a model on a dataset: stream predictions into a confusion matrix (and, for Cityscapes, instance
statistics), then metrics."""

import os
import sys
import time

import numpy as np

from gsto_tf.checkpoints import check_num_classes
from gsto_tf.data.decode import read_checked
from gsto_tf.data.layouts import DatasetError
from gsto_tf.data.registry import get_dataset_spec
from gsto_tf.evaluation.inference import Predictor
from gsto_tf.evaluation.instances import InstanceStats, category_indices, instance_label_path, read_instance_ids
from gsto_tf.evaluation.metrics import SegmentationMetrics, confusion_matrix_np
from gsto_tf.evaluation.settings import TestSetting


def evaluate(model, dataset, spec, *, setting=None, limit=None, progress=True, on_prediction=None):
    """Evaluate ``model`` on an eval dataset (``build_eval_dataset``) with a :class:`TestSetting`.

    ``on_prediction(path, label_map)`` is called for every image (e.g. to write test-server PNGs).
    Returns :class:`SegmentationMetrics` at the labels' original resolution. For datasets with instance classes
    (Cityscapes) the iIoU is computed when the first image has its instance-id map (``*_gtFine_instanceIds.png``
    beside the label); then every image must have one.
    """
    spec = get_dataset_spec(spec)
    check_num_classes(model, spec.num_classes, "evaluate", f"dataset '{spec.name}'")
    setting = setting or TestSetting()
    predictor = Predictor.from_setting(model, setting, spec.flip_pairs)
    k = spec.num_classes
    confusion = np.zeros((k, k), np.int64)
    instance = InstanceStats.for_dataset(spec)
    label_lut = spec.label_lut()
    start = time.time()
    n = 0
    for n, sample in enumerate(read_checked(dataset), 1):  # a bad file: a one-line DatasetError naming it
        try:
            pred = predictor.predict(sample["image"]).numpy()
        except ValueError as exc:  # too many pixels at the setting's largest scale
            raise DatasetError(f"{sample['path'].numpy().decode()}: {exc}") from None
        label = sample["label"].numpy()
        confusion += confusion_matrix_np(label, pred, k, spec.ignore_label)
        path = sample["path"].numpy().decode()
        if instance is not None:
            instance_path = instance_label_path(spec, path)
            if n == 1 and (instance_path is None or not os.path.isfile(instance_path)):
                where = f"expected {instance_path}" if instance_path else "this data source has none"
                print(f"iIoU not computed: no instance-id map for {path} ({where})", file=sys.stderr)
                instance = None
            else:
                instance.update(read_instance_ids(instance_path, label.shape), pred, label_lut)
        if on_prediction is not None:
            on_prediction(path, pred)
        if progress and (n % 10 == 0):
            print(f"\r  evaluated {n} images ({n / (time.time() - start):.1f} img/s)", end="", file=sys.stderr)
        if limit and n >= limit:
            break
    if progress and n:
        print(f"\r  evaluated {n} images in {time.time() - start:.1f} s", file=sys.stderr)
    if n == 0:
        raise ValueError(f"evaluation of '{spec.name}': the dataset yielded no images")
    return SegmentationMetrics.from_confusion(confusion, spec.class_names, setting.describe(),
                                              categories=category_indices(spec), instance=instance)
