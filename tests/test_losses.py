import keras
import numpy as np
import pytest
import tensorflow as tf

from gsto_tf.layers import resize_bilinear
from gsto_tf.models.outputs import AUX_LOSS_WEIGHTS
from gsto_tf.data import get_dataset_spec
from gsto_tf.training import SegmentationLoss, TorchSGD, poly_schedule


def _ce(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


def _data(seed=0, k=5, shape=(2, 6, 7)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, shape)
    labels[rng.random(shape) < 0.25] = 255
    logits = rng.normal(size=shape + (k,)).astype(np.float32) * 2
    return labels, logits


def test_plain_and_weighted_ce_match_pytorch_convention():
    labels, logits = _data()
    valid = labels != 255
    ce = _ce(logits, np.where(valid, labels, 0))
    assert float(SegmentationLoss(5)(labels, logits)) == pytest.approx(ce[valid].mean(), rel=1e-5)
    w = np.array([0.5, 1.0, 2.0, 1.5, 0.8], np.float32)
    wl = w[np.where(valid, labels, 0)]
    ref = (wl * ce)[valid].sum() / wl[valid].sum()
    assert float(SegmentationLoss(5, class_weights=w)(labels, logits)) == pytest.approx(ref, rel=1e-5)


def test_ohem_keeps_hard_pixels():
    labels, logits = _data(1)
    valid = labels != 255
    ce = _ce(logits, np.where(valid, labels, 0))[valid]
    p = np.exp(-ce)
    for min_kept in (5, 40):
        kth = np.sort(p)[min(min_kept, p.size - 1)]
        thr = max(kth, 0.7)
        ref = ce[p < thr].mean()
        got = float(SegmentationLoss(5, ohem=True, ohem_thresh=0.7, ohem_min_kept=min_kept)(labels, logits))
        assert got == pytest.approx(ref, rel=1e-5)


def test_ignored_pixels_get_no_gradient_and_all_ignored_gives_zero():
    labels, logits = _data(3)
    logits = tf.Variable(logits)
    for loss in (SegmentationLoss(5), SegmentationLoss(5, ohem=True, ohem_thresh=0.7, ohem_min_kept=5)):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(labels, logits))
        grad = tape.gradient(value, logits).numpy()
        assert np.all(grad[labels == 255] == 0)
        assert np.abs(grad[labels != 255]).sum() > 0
        all_ignored = np.full_like(labels, 255)
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(all_ignored, logits))
        grad = tape.gradient(value, logits).numpy()
        assert float(value) == 0.0 and np.all(grad == 0)


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("variant", ["plain", "weighted", "ohem"])
def test_gradient_matches_numpy_softmax_minus_onehot(variant):
    # The CE gradient is written out by hand (pixel_cross_entropy); check it against d/dz = a_p (softmax - onehot)
    # with a_p the pixel's weight over the normaliser, and against TensorFlow's own sparse CE op.
    labels, logits = _data(4)
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    w = np.array([0.5, 1.0, 2.0, 1.5, 0.8], np.float32)
    loss = {"plain": SegmentationLoss(5), "weighted": SegmentationLoss(5, class_weights=w),
            "ohem": SegmentationLoss(5, ohem=True, ohem_thresh=0.7, ohem_min_kept=10)}[variant]
    a = valid.astype(np.float64)
    if variant == "weighted":
        a = a * w[safe]
        a /= a.sum()
    elif variant == "ohem":
        p = np.exp(-_ce(logits, safe))
        kth = np.sort(p[valid])[10]
        kept = valid & (p < max(kth, 0.7))
        a = kept / kept.sum()
    else:
        a /= a.sum()
    expected = a[..., None] * (_softmax(logits.astype(np.float64)) - np.eye(5)[safe])
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(loss(labels, z))
    grad = tape.gradient(value, z).numpy()
    np.testing.assert_allclose(grad, expected, atol=2e-7)
    if variant == "plain":
        with tf.GradientTape() as tape:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(safe), z)
            ref = tf.reduce_sum(ce * valid) / valid.sum()
        np.testing.assert_allclose(grad, tape.gradient(ref, z).numpy(), atol=1e-7)
        assert float(value) == pytest.approx(float(ref), rel=1e-6)


def test_label_outside_classes_is_an_error():
    labels, logits = _data(5)
    labels[0, 0, 0] = 7  # not a class of K=5 and not the ignore label
    with pytest.raises(tf.errors.InvalidArgumentError, match="7"):
        SegmentationLoss(5)(labels, logits)


def test_logits_are_resized_to_labels():
    labels, logits = _data(2, shape=(1, 12, 14))
    small = logits[:, ::2, ::2]
    resized = resize_bilinear(tf.constant(small), (12, 14)).numpy()
    assert float(SegmentationLoss(5)(labels, small)) == pytest.approx(float(SegmentationLoss(5)(labels, resized)),
                                                                      rel=1e-6)


def test_aux_outputs_weighted_in_compile():
    inp = keras.Input((8, 8, 3))
    outs = {n: keras.layers.Conv2D(4, 1, name=n)(inp) for n in ("logits", "aux_stage3", "aux_stage2")}
    model = keras.Model(inp, outs)
    model.compile(loss={n: SegmentationLoss(4) for n in outs}, loss_weights={n: AUX_LOSS_WEIGHTS[n] for n in outs})
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 4, (2, 8, 8))
    pred = model(x)
    expected = sum(AUX_LOSS_WEIGHTS[n] * float(SegmentationLoss(4)(y, pred[n])) for n in outs)
    total = model.evaluate(x, {n: y for n in outs}, verbose=0, return_dict=True)["loss"]
    assert total == pytest.approx(expected, rel=1e-4)
    assert (AUX_LOSS_WEIGHTS["aux_stage3"], AUX_LOSS_WEIGHTS["aux_stage2"]) == (0.5, 0.3)


def test_cityscapes_weights_and_bad_weights():
    weights = get_dataset_spec("cityscapes").class_weights  # HRNet's datasets/cityscapes.py, train-id order
    assert len(weights) == 19 and weights[0] == 0.8373 and weights[-1] == 1.0507
    with pytest.raises(ValueError, match="class_weights has 3 entries, expected 5"):
        SegmentationLoss(5, class_weights=[1, 1, 1])


def _hrnet_lrs(base, max_it, power, steps):
    """The lr of each optimizer step in HRNet's loop (lib/core/function.py): the optimizer starts at base; after
    the step of iteration i, adjust_learning_rate sets base * (1 - i / max_it) ** power for the next one."""
    lrs, lr = [], base
    for i in range(steps):
        lrs.append(lr)  # optimizer.step() runs with the current lr
        lr = base * (1 - i / max_it) ** power  # then adjust_learning_rate(..., cur_iters=i)
    return lrs


def test_poly_schedule_follows_hrnet_order():
    sched = poly_schedule(0.01, 1000, 0.9)
    expected = _hrnet_lrs(0.01, 1000, 0.9, 6)
    assert expected[0] == expected[1] == 0.01
    for k, lr in enumerate(expected):
        assert float(sched(k)) == pytest.approx(lr, rel=1e-12)
    for k in (500, 999, 1000, 1001, 5000):  # step k runs at poly(k - 1), clipped at max_it
        assert float(sched(k)) == pytest.approx(0.01 * (1 - min(k - 1, 1000) / 1000) ** 0.9, rel=1e-12, abs=1e-15)
    keras_order = poly_schedule(0.01, 1000, 0.9, hrnet_order=False)
    for k in (0, 1, 500, 1000):
        assert float(keras_order(k)) == pytest.approx(0.01 * (1 - k / 1000) ** 0.9, rel=1e-12, abs=1e-15)
        assert float(keras_order(k)) == pytest.approx(
            float(keras.optimizers.schedules.PolynomialDecay(0.01, 1000, 0.0, 0.9)(k)), rel=1e-6, abs=1e-12)
    assert float(poly_schedule(0.02, 10, 0.0)(10)) == 0.02  # power 0: a constant lr


def test_poly_schedule_config_round_trip_and_bad_steps():
    sched = poly_schedule(0.02, 240, 0.9)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert again.get_config() == sched.get_config() and float(again(7)) == float(sched(7))
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        poly_schedule(0.01, 0)


def test_fit_runs_each_step_at_the_hrnet_lr():
    # Through model.fit, resumed in the middle: the lr of each step is read from the optimizer's iteration counter.
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(inp))
    model.compile(optimizer=TorchSGD(poly_schedule(0.1, 8, 0.9), momentum=0.0), loss="mse")
    x, y = np.ones((1, 3), np.float32), np.ones((1, 1), np.float32)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate))

    model.fit(x, y, epochs=3, verbose=0, callbacks=[Record()])
    model.fit(x, y, epochs=5, initial_epoch=3, verbose=0, callbacks=[Record()])
    np.testing.assert_allclose(seen, _hrnet_lrs(0.1, 8, 0.9, 5), rtol=1e-6)


@pytest.mark.parametrize("mom, dtype, rtol", [(0.9, "float32", 1e-5), (0.0, "float32", 1e-5),
                                             (0.9, "float64", 1e-13)])
def test_torch_sgd_matches_pytorch_update_rule(mom, dtype, rtol):
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], dtype)
    grads = [np.array([[0.1, 0.2], [-0.3, 0.4]], dtype) * (i + 1) for i in range(3)]
    lr, wd = 0.1, 0.01
    sched = poly_schedule(lr, 10, 0.9)
    var = keras.Variable(w0.copy(), dtype=dtype)
    opt = TorchSGD(sched, momentum=mom, weight_decay_l2=wd)
    # PyTorch SGD: d = g + wd * p; buf = mom * buf + d (buf = d at the first step); p -= lr_t * buf
    p, buf = w0.astype(np.float64), None
    for it, g in enumerate(grads):
        opt.apply_gradients([(tf.constant(g), var)])
        d = g + wd * p
        buf = d if buf is None else mom * buf + d
        p = p - _hrnet_lrs(lr, 10, 0.9, 3)[it] * buf
    assert var.dtype == dtype
    np.testing.assert_allclose(var.numpy(), p, rtol=rtol)
    if mom:
        np.testing.assert_allclose(opt.momentums[0].numpy(), buf, rtol=rtol)
