import keras
import numpy as np
import pytest

from gsto_tf.evaluation import Predictor, SegmentationMetrics, TestSetting, evaluate
from gsto_tf.data import build_eval_dataset, ensure_synthetic, get_dataset_spec
from helpers import pointwise_model


def _image(h, w, seed=0):
    return np.random.default_rng(seed).normal(size=(h, w, 3)).astype("float32")


def test_slide_equals_whole_for_position_independent_model():
    model = pointwise_model()
    image = _image(37, 53)
    whole = Predictor(model).scores(image).numpy()
    slide = Predictor(model, mode="slide", crop_size=(16, 24), stride=(10, 14)).scores(image).numpy()
    np.testing.assert_allclose(slide, whole, atol=1e-5)
    small = Predictor(model, mode="slide", crop_size=(64, 64)).scores(image).numpy()  # padded window
    np.testing.assert_allclose(small, whole, atol=1e-5)


def test_flip_of_mirror_symmetric_model_equals_plain():
    model = pointwise_model()
    image = _image(21, 34)
    np.testing.assert_allclose(Predictor(model, flip=True).scores(image).numpy(),
                               Predictor(model).scores(image).numpy(), atol=1e-5)


def test_lip_flip_swaps_channels_before_unflipping():
    inp = keras.Input((None, None, 3))
    # channel 14 = R, channel 15 = G, the rest 0
    out = keras.layers.Lambda(lambda x: keras.ops.pad(x[..., :2], [[0, 0], [0, 0], [0, 0], [14, 4]]))(inp)
    model = keras.Model(inp, out)
    image = _image(9, 13)
    scores = Predictor(model, flip=True, flip_pairs=get_dataset_spec("lip").flip_pairs).scores(image).numpy()
    mean = (image[..., 0] + image[..., 1]) / 2  # plain gives (R, G); flipped+swapped gives (G, R)
    np.testing.assert_allclose(scores[..., 14], mean, atol=1e-5)
    np.testing.assert_allclose(scores[..., 15], mean, atol=1e-5)


def test_multiscale_returns_original_size_on_odd_sizes():
    model = pointwise_model()
    yy, xx = np.mgrid[0:37, 0:53] / 9.0  # smooth image: resampling barely changes it
    image = np.stack([np.sin(yy), np.cos(xx), np.sin(xx + yy)], -1).astype("float32")
    predictor = Predictor(model, scales=(0.5, 0.75, 1.0, 1.5), flip=True)
    scores = predictor.scores(image).numpy()
    assert scores.shape == (37, 53, 4) and np.all(np.isfinite(scores)) and np.all(scores > 0)
    # a pointwise model gives the same argmax at every scale away from resampling edges
    plain = Predictor(model).predict(image).numpy()
    assert np.mean(predictor.predict(image).numpy() == plain) > 0.9


def test_bad_settings_are_explicit():
    model = pointwise_model()
    with pytest.raises(ValueError, match="crop_size"):
        Predictor(model, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        Predictor(model, mode="tiles")
    with pytest.raises(ValueError, match="expected one image"):
        Predictor(model).scores(np.zeros((2, 4, 4, 3), np.float32))


def test_evaluate_end_to_end_on_tiny_synthetic(tmp_path):
    root = ensure_synthetic(str(tmp_path), height=32, width=64, train=2, val=3)
    spec = get_dataset_spec("synthetic")
    metrics = evaluate(pointwise_model(8), build_eval_dataset("synthetic", root), spec,
                       setting=TestSetting(scales=(0.75, 1.0), flip=True), progress=False)
    assert isinstance(metrics, SegmentationMetrics)
    assert metrics.confusion.sum() == sum(
        int(np.sum(s["label"].numpy() != 255)) for s in build_eval_dataset("synthetic", root))
    assert "ms 0.75,1 + flip" in metrics.setting
    metrics.save(str(tmp_path / "eval"))
    assert (tmp_path / "eval" / "metrics.json").exists()
