"""Evaluate a model on a dataset: stream predictions into a confusion matrix, then metrics."""

import sys
import time

import numpy as np

from gsto_tf.data.registry import get_dataset_spec
from gsto_tf.evaluation.inference import Predictor
from gsto_tf.evaluation.metrics import SegmentationMetrics, confusion_matrix_np
from gsto_tf.evaluation.settings import TestSetting


def evaluate(model, dataset, spec, *, setting=None, limit=None, progress=True, on_prediction=None):
    """Evaluate ``model`` on an eval dataset (``build_eval_dataset``) with a :class:`TestSetting`.

    ``on_prediction(path, label_map)`` is called for every image (e.g. to write test-server PNGs).
    Returns :class:`SegmentationMetrics` at the labels' original resolution.
    """
    spec = get_dataset_spec(spec)
    setting = setting or TestSetting()
    predictor = Predictor(model, scales=setting.scales, flip=setting.flip, mode=setting.mode,
                          crop_size=setting.crop_size, stride=setting.stride, flip_pairs=spec.flip_pairs)
    k = spec.num_classes
    confusion = np.zeros((k, k), np.int64)
    start = time.time()
    n = 0
    for n, sample in enumerate(dataset, 1):
        pred = predictor.predict(sample["image"]).numpy()
        label = sample["label"].numpy()
        confusion += confusion_matrix_np(label, pred, k, spec.ignore_label)
        if on_prediction is not None:
            on_prediction(sample["path"].numpy().decode(), pred)
        if progress and (n % 10 == 0):
            print(f"\r  evaluated {n} images ({n / (time.time() - start):.1f} img/s)", end="", file=sys.stderr)
        if limit and n >= limit:
            break
    if progress and n:
        print(f"\r  evaluated {n} images in {time.time() - start:.1f} s", file=sys.stderr)
    if n == 0:
        raise ValueError(f"evaluation of '{spec.name}': the dataset yielded no images")
    return SegmentationMetrics.from_confusion(confusion, spec.class_names, setting.describe())
