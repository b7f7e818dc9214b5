import numpy as np
import pytest
from PIL import Image

from gsto_tf import visualize
from gsto_tf.data import get_dataset_spec
from gsto_tf.evaluation import SegmentationMetrics
from gsto_tf.models import build, gate_model


def _png_size(path):
    with Image.open(path) as im:
        return im.size


def test_prediction_grid_and_confusion(tmp_path):
    spec = get_dataset_spec("synthetic")
    rng = np.random.default_rng(0)
    rows = [(rng.normal(size=(16, 32, 3)).astype("float32"), rng.integers(0, 8, (16, 32)),
             rng.integers(0, 8, (16, 32))) for _ in range(2)]
    w, h = _png_size(visualize.prediction_grid(rows, spec, str(tmp_path / "p.png")))
    assert w > 400 and h > 150
    cm = rng.integers(0, 50, (8, 8))
    cm[7] = 0
    cm[:, 7] = 0
    metrics = SegmentationMetrics.from_confusion(cm, spec.class_names, "single-scale, whole")
    assert _png_size(visualize.confusion_plot(metrics, str(tmp_path / "c.png")))[0] > 200


def test_gate_and_feature_grids_from_real_models(tmp_path):
    image = np.random.default_rng(1).normal(size=(48, 64, 3)).astype("float32")
    gsto = build("gsto_hrnet_w18_small_v1", 3)
    gates = {k: np.asarray(v) for k, v in gate_model(gsto)(image[None]).items()}
    assert len(gates) == 31
    visualize.gate_grid(gates, image, str(tmp_path / "g.png"))
    feats = {}
    for name in ("hrnetv2_w18_small_v1", "gsto_hrnet_w18_small_v1"):
        model = gsto if name.startswith("gsto") else build(name, 3)
        outs = visualize.branch_features(model)(image[None])
        assert [tuple(o.shape[1:3]) for o in outs] == [(12, 16), (6, 8), (3, 4), (2, 2)]
        feats[name] = [np.asarray(o) for o in outs]
    w, h = _png_size(visualize.branch_feature_grid(feats, image, str(tmp_path / "f.png")))
    assert w > h > 100


def test_training_curves_and_errors(tmp_path):
    (tmp_path / "history.csv").write_text(
        "epoch,logits_loss,loss,lr,val_loss\n0,1.5,2.0,0.01,NA\n1,1.0,1.4,0.005,NA\n")
    visualize.training_curves(str(tmp_path), str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").exists()
    with pytest.raises(FileNotFoundError, match="no history.csv"):
        visualize.training_curves(str(tmp_path / "nope"), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no HRNet stage-4 branches"):
        import keras

        inp = keras.Input((None, None, 3))
        visualize.branch_features(keras.Model(inp, keras.layers.Conv2D(2, 1)(inp)))
