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
    """The history.csv of a real run is drawn in tests/test_train_e2e.py; here the errors and the val mIoU rows."""
    from gsto_tf.training.callbacks import HistoryLog

    log = HistoryLog(str(tmp_path / "history.csv"), steps_per_chunk=10)
    log.set_model(type("Model", (), {"stop_training": False})())
    log.on_epoch_end(0, {"loss": 2.0, "logits_loss": 1.5, "lr": 0.01})
    log.on_epoch_end(1, {"loss": 1.4, "logits_loss": 1.0, "lr": 0.005, "val_miou": 0.3})
    width = _png_size(visualize.training_curves(str(tmp_path), str(tmp_path / "curves.png")))[0]
    (tmp_path / "history.csv").write_text("chunk,step,loss,lr\n1,10,2.0,0.01\n")  # no evaluation yet: two panels
    assert _png_size(visualize.training_curves(str(tmp_path), str(tmp_path / "curves.png")))[0] < width
    (tmp_path / "history.csv").write_text("epoch,loss\n0,2.0\n")
    with pytest.raises(ValueError, match=r"history.csv: no 'step' column \(columns: epoch, loss\)"):
        visualize.training_curves(str(tmp_path), str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError, match="no history.csv"):
        visualize.training_curves(str(tmp_path / "nope"), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no HRNet stage-4 branches"):
        import keras

        inp = keras.Input((None, None, 3))
        visualize.branch_features(keras.Model(inp, keras.layers.Conv2D(2, 1)(inp)))


def test_gate_colour_range_uses_the_whole_scale_for_official_gates():
    official = [np.full((1, 4, 4, 1), 0.5), np.linspace(0.5, 1.0, 16).reshape(1, 4, 4, 1)]
    assert visualize.gate_value_range(official) == (0.5, 1.0)
    assert visualize.gate_value_range(official + [np.full((1, 2, 2, 1), 0.2)]) == (0.0, 1.0)  # the paper's gate


def test_prediction_samples_are_spread_over_the_split(tmp_path):
    from gsto_tf.data import build_eval_dataset, ensure_synthetic

    data = ensure_synthetic(str(tmp_path / "data"), height=16, width=32, train=2, val=12)
    paths = [s["path"].numpy().decode() for s in build_eval_dataset("synthetic", data)]
    spread = [s["path"].numpy().decode() for s in build_eval_dataset("synthetic", data, spread=3, seed=0)]
    picked = sorted(np.random.default_rng(0).choice(12, 3, replace=False))
    assert spread == [paths[i] for i in picked] and picked != [0, 1, 2]
    assert [s["path"].numpy().decode() for s in build_eval_dataset("synthetic", data, spread=50)] == paths
