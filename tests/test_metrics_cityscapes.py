"""Cityscapes' instance-level and category scores (iIoU class, IoU / iIoU category) against a reference written
the way cityscapesScripts' evalPixelLevelSemanticLabeling.py computes them: in labelId space, a confusion matrix
over all labelIds (void rows included), false positives summed over non-void rows, one loop per instance."""

import json
import os

import numpy as np
import pytest
from data_utils import tiny_cityscapes, write_png
from helpers import pointwise_model
from PIL import Image

from gsto_tf.data import build_eval_dataset, get_dataset_spec
from gsto_tf.data.layouts import DatasetError, list_samples
from gsto_tf.evaluation import SegmentationMetrics, TestSetting, evaluate
from gsto_tf.evaluation.instances import InstanceStats, category_indices, instance_label_path
from gsto_tf.evaluation.metrics import confusion_matrix_np

CITYSCAPES = get_dataset_spec("cityscapes")
TRAIN_OF_LABEL = dict(CITYSCAPES.raw_to_train)
LABEL_OF_TRAIN = {t: r for r, t in CITYSCAPES.raw_to_train}
EVALUATED = sorted(TRAIN_OF_LABEL)  # labelIds that are not ignoreInEval
# cityscapesScripts labels.py: labelIds with instances (caravan 29 and trailer 30 are ignoreInEval), categories
HAS_INSTANCES = set(range(24, 34))
CATEGORY_OF_LABEL = {7: "flat", 8: "flat", 9: "flat", 10: "flat", 11: "construction", 12: "construction",
                     13: "construction", 14: "construction", 15: "construction", 16: "construction", 17: "object",
                     18: "object", 19: "object", 20: "object", 21: "nature", 22: "nature", 23: "sky", 24: "human",
                     25: "human", 26: "vehicle", 27: "vehicle", 28: "vehicle", 29: "vehicle", 30: "vehicle",
                     31: "vehicle", 32: "vehicle", 33: "vehicle"}
AVG_SIZE = dict(CITYSCAPES.instance_classes)


def _reference(images):
    """cityscapesScripts' four scores from [(labelId map, instanceId map, predicted labelIds)]."""
    n = 34
    conf = np.zeros((n, n), np.int64)
    inst = {}
    cat_inst = {}
    for gt, ids, pred in images:
        np.add.at(conf, (gt.ravel(), pred.ravel()), 1)
        for inst_id in np.unique(ids[ids > 1000]):
            label = int(inst_id // 1000)
            if label not in EVALUATED:  # ignoreInEval
                continue
            mask = ids == inst_id
            size = mask.sum()
            name = CITYSCAPES.class_names[TRAIN_OF_LABEL[label]]
            weight = AVG_SIZE[name] / size
            tp = np.count_nonzero(pred[mask] == label)
            t = inst.setdefault(label, [0.0, 0.0])
            t[0] += tp * weight
            t[1] += (size - tp) * weight
            category = CATEGORY_OF_LABEL[label]
            members = [lab for lab, c in CATEGORY_OF_LABEL.items() if c == category]
            cat_tp = np.count_nonzero(np.isin(pred[mask], members))
            c = cat_inst.setdefault(category, [0.0, 0.0])
            c[0] += cat_tp * weight
            c[1] += (size - cat_tp) * weight

    def iou(tp, fn, fp):
        return tp / (tp + fn + fp) if tp + fn + fp > 0 else np.nan

    class_iou, class_iiou, category_iou, category_iiou = {}, {}, {}, {}
    for label in EVALUATED:
        name = CITYSCAPES.class_names[TRAIN_OF_LABEL[label]]
        tp = conf[label, label]
        fn = conf[label].sum() - tp
        fp = conf[[lab for lab in EVALUATED if lab != label], label].sum()
        class_iou[name] = iou(tp, fn, fp)
        if label in HAS_INSTANCES:
            tpw, fnw = inst.get(label, (0.0, 0.0))
            class_iiou[name] = iou(tpw, fnw, fp)
    for category in dict.fromkeys(CATEGORY_OF_LABEL.values()):
        ids = [lab for lab in EVALUATED if CATEGORY_OF_LABEL[lab] == category]
        others = [lab for lab in EVALUATED if CATEGORY_OF_LABEL[lab] != category]
        tp = conf[np.ix_(ids, ids)].sum()
        fn = conf[ids].sum() - tp
        fp = conf[np.ix_(others, ids)].sum()
        category_iou[category] = iou(tp, fn, fp)
        if all(lab in HAS_INSTANCES for lab in CATEGORY_OF_LABEL if CATEGORY_OF_LABEL[lab] == category):
            tpw, fnw = cat_inst.get(category, (0.0, 0.0))
            category_iiou[category] = iou(tpw, fnw, fp)
    return class_iou, class_iiou, category_iou, category_iiou


def _ours(images):
    """SegmentationMetrics as evaluate() builds them, from the same images (predictions given as train ids)."""
    k = CITYSCAPES.num_classes
    confusion = np.zeros((k, k), np.int64)
    instance = InstanceStats.for_dataset(CITYSCAPES)
    for gt, ids, pred_train in images:
        confusion += confusion_matrix_np(CITYSCAPES.map_labels(gt), pred_train, k)
        instance.update(ids, pred_train, CITYSCAPES.label_lut())
    return SegmentationMetrics.from_confusion(confusion, CITYSCAPES.class_names,
                                              categories=category_indices(CITYSCAPES),
                                              instance=instance)


def _random_image(rng, h=24, w=40):
    """labelIds incl. void (0, 4) and void instance classes (29 caravan, 30 trailer), instance ids in 3x4 blocks
    (so instances have different sizes), and a prediction that is right on ~60 % of the pixels."""
    choices = np.array([0, 4, 7, 8, 11, 17, 21, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33])
    gt = choices[rng.integers(0, len(choices), (h, w))]
    block = (np.arange(h)[:, None] // 8) * 10 + np.arange(w)[None, :] // (4 + rng.integers(0, 6))
    ids = np.where(np.isin(gt, list(HAS_INSTANCES)), gt * 1000 + block, gt)
    ids[0, :3] = gt[0, :3]  # some instance-class pixels without an instance (crowd regions are stored like this)
    pred_train = rng.integers(0, 19, (h, w))
    right = (rng.random((h, w)) < 0.6) & np.isin(gt, EVALUATED)
    pred_train[right] = CITYSCAPES.map_labels(gt)[right]
    return gt, ids, pred_train


def test_scores_match_cityscapes_reference_over_several_images():
    rng = np.random.default_rng(0)
    images = [_random_image(rng) for _ in range(3)]
    ref_class, ref_iiou, ref_cat, ref_cat_iiou = _reference(
        [(gt, ids, np.vectorize(LABEL_OF_TRAIN.get)(p)) for gt, ids, p in images])
    m = _ours(images)
    np.testing.assert_allclose(m.per_class_iou, [ref_class[c] for c in CITYSCAPES.class_names], rtol=1e-12)
    scored = [c for c in CITYSCAPES.class_names if c in ref_iiou]
    assert scored == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    iiou = dict(zip(CITYSCAPES.class_names, m.per_class_iiou))
    np.testing.assert_allclose([iiou[c] for c in scored], [ref_iiou[c] for c in scored], rtol=1e-12)
    assert all(np.isnan(iiou[c]) for c in CITYSCAPES.class_names if c not in scored)
    assert m.miiou == pytest.approx(np.mean([ref_iiou[c] for c in scored]), rel=1e-12)
    # weighting matters: the iIoU differs from the plain IoU of the same classes
    assert abs(m.miiou - np.mean([ref_class[c] for c in scored])) > 1e-3
    names = [c for c, _ in CITYSCAPES.categories]
    np.testing.assert_allclose(m.per_category_iou, [ref_cat[c] for c in names], rtol=1e-12)
    assert m.category_miou == pytest.approx(np.mean([ref_cat[c] for c in names]), rel=1e-12)
    assert sorted(ref_cat_iiou) == ["human", "vehicle"]
    cat_iiou = dict(zip(names, m.per_category_iiou))
    np.testing.assert_allclose([cat_iiou["human"], cat_iiou["vehicle"]], [ref_cat_iiou["human"],
                                                                         ref_cat_iiou["vehicle"]], rtol=1e-12)
    assert m.category_miiou == pytest.approx((ref_cat_iiou["human"] + ref_cat_iiou["vehicle"]) / 2, rel=1e-12)


def test_hand_computed_iiou_weights_instances_by_size():
    # one row: car instance A (4 px, 3 predicted car), car instance B (2 px, none predicted car), road, sky
    car, road = 26, 7
    gt = np.array([[car, car, car, car, car, car, road, road, 23, 23]])
    ids = np.array([[26000, 26000, 26000, 26000, 26001, 26001, road, road, 23, 23]])
    pred = np.array([[13, 13, 13, 0, 0, 0, 13, 0, 10, 10]])  # train ids: 13 car, 0 road, 10 sky
    m = _ours([(gt, ids, pred)])
    a = AVG_SIZE["car"]
    tpw = 3 * a / 4
    fnw = 1 * a / 4 + 2 * a / 2
    fp = 1  # the road pixel predicted as car
    assert m.per_class_iiou[13] == pytest.approx(tpw / (tpw + fp + fnw))
    assert m.per_class_iou[13] == pytest.approx(3 / (3 + 3 + 1))
    assert m.miiou == pytest.approx(tpw / (tpw + fp + fnw))  # the only instance class with pixels or predictions
    # the vehicle category: same counts (no other vehicle predicted); flat: road + sidewalk pooled
    vehicle = [c for c, _ in CITYSCAPES.categories].index("vehicle")
    assert m.per_category_iiou[vehicle] == pytest.approx(tpw / (tpw + fp + fnw))
    flat = [c for c, _ in CITYSCAPES.categories].index("flat")
    assert m.per_category_iou[flat] == pytest.approx(1 / (1 + 1 + 3))  # tp 1, fn 1 (road->car), fp 3 (car->road)


def test_metrics_output_reports_iiou_and_categories(tmp_path):
    rng = np.random.default_rng(1)
    m = _ours([_random_image(rng)])
    table = m.table()
    assert "iIoU" in table and "vehicle" in table and "category" in table
    data = json.load(open(m.save(str(tmp_path))[0]))
    assert data["iIoU"] == pytest.approx(m.miiou, abs=1e-6)
    assert set(data["per_class_iiou"]) == {c for c, _ in CITYSCAPES.instance_classes}
    assert data["category_mIoU"] == pytest.approx(m.category_miou, abs=1e-6)
    assert set(data["per_category_iiou"]) == {"human", "vehicle"}
    csv_text = open(os.path.join(tmp_path, "metrics.csv")).read()
    assert csv_text.splitlines()[0] == "class,iou,gt_pixels,pred_pixels,iiou"
    without = SegmentationMetrics.from_confusion(m.confusion, CITYSCAPES.class_names,
                                                 categories=category_indices(CITYSCAPES))
    assert without.miiou is None and "iIoU" not in without.to_dict() and "not computed" in without.table()


def test_evaluate_reads_instance_maps_and_matches_reference(tmp_path):
    root = tiny_cityscapes(str(tmp_path), n=2, instances=True)
    predictions = {}
    metrics = evaluate(pointwise_model(19), build_eval_dataset("cityscapes", root), CITYSCAPES, setting=TestSetting(),
                       progress=False, on_prediction=lambda path, pred: predictions.setdefault(path, pred))
    images = []
    for image_path, label_path in list_samples("cityscapes", root, "val"):
        gt = np.asarray(Image.open(label_path)).astype(np.int64)
        ids = np.asarray(Image.open(instance_label_path("cityscapes", image_path))).astype(np.int64)
        images.append((gt, ids, np.vectorize(LABEL_OF_TRAIN.get)(predictions[image_path])))
    assert len(images) == 2
    ref_class, ref_iiou, _, ref_cat_iiou = _reference(images)
    assert metrics.instance is not None
    assert metrics.miiou == pytest.approx(np.nanmean(list(ref_iiou.values())), rel=1e-12)
    assert metrics.category_miiou == pytest.approx(np.nanmean(list(ref_cat_iiou.values())), rel=1e-12)


def test_evaluate_without_instance_maps_skips_iiou_and_partial_maps_fail(tmp_path, capsys):
    root = tiny_cityscapes(str(tmp_path / "plain"), n=2)
    metrics = evaluate(pointwise_model(19), build_eval_dataset("cityscapes", root), CITYSCAPES, progress=False)
    assert metrics.instance is None and metrics.category_miou is not None
    assert "iIoU not computed" in capsys.readouterr().err
    root = tiny_cityscapes(str(tmp_path / "partial"), n=2, instances=True)
    missing = f"{root}/gtFine/val/aachen/aachen_000001_000019_gtFine_instanceIds.png"
    os.remove(missing)
    with pytest.raises(DatasetError, match="instance-id map not found: .*aachen_000001_000019_gtFine_instanceIds"):
        evaluate(pointwise_model(19), build_eval_dataset("cityscapes", root), CITYSCAPES, progress=False)
    write_png(missing, np.zeros((3, 3), np.uint16))
    with pytest.raises(DatasetError, match=r"aachen_000001_000019_gtFine_instanceIds.png: shape \(3, 3\), expected"):
        evaluate(pointwise_model(19), build_eval_dataset("cityscapes", root), CITYSCAPES, progress=False)
