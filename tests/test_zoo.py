"""The model zoo: every shipped model loads through the safe loader, predicts its card's classes with finite weights,
and its card's numbers match its history; names work wherever a checkpoint goes. With ``GSTO_TF_CAMVID`` set to a
CamVid folder, the stated scores are measured again."""

import csv
import os

import keras
import numpy as np
import pytest

from data_utils import write_png
from gsto_tf.checkpoints import CheckpointError, load_checkpoint, load_pretrained, resolve_checkpoint, zoo_entry, zoo_names
from gsto_tf.checkpoints.zoo import ZOO_DIR
from gsto_tf.cli import main
from gsto_tf.data import get_dataset_spec
from gsto_tf.models import build

NAMES = zoo_names()


def test_the_zoo_ships_models():
    assert NAMES, f"no model in {ZOO_DIR}"


@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_loads_with_its_classes_and_finite_weights(name):
    entry = zoo_entry(name)
    spec = get_dataset_spec(entry.card["dataset"])
    assert entry.card["classes"] == list(spec.class_names)
    assert os.path.getsize(entry.checkpoint) <= 20 * 2**20
    model, report = load_checkpoint(name, num_classes=spec.num_classes)  # the name, through the safe loader
    assert report is None and model.name == entry.card["model"]
    assert model.output["logits"].shape[-1] == spec.num_classes
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights)
    # trainable: BatchNorm kept as layers (not folded), so the model fine-tunes
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in _layers(model))


def _layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


@pytest.mark.parametrize("name", NAMES)
def test_zoo_card_matches_its_history(name):
    entry = zoo_entry(name)
    with open(entry.history, newline="") as f:
        rows = list(csv.DictReader(f))
    card = entry.card
    assert int(rows[-1]["step"]) == card["steps"] == card["config"]["train"]["steps"]
    assert round(float(rows[-1]["loss"]), 4) == card["final_loss"]
    assert [int(r["step"]) for r in rows] == sorted({int(r["step"]) for r in rows})  # no chunk twice
    assert card["config"]["model"]["name"] == card["model"] and card["config"]["data"]["dataset"] == card["dataset"]
    for split, scores in card["scores"].items():
        ious = [v for v in scores["per_class_iou"].values() if v is not None]
        assert scores["miou"] == pytest.approx(np.mean(ious), abs=0.011), split  # the mean of the stated classes
        assert split in card["measure"] and f"--checkpoint {name}" in card["measure"][split]


@pytest.mark.parametrize("name", NAMES)
def test_zoo_scores_are_measured_again_when_the_data_is_given(name, capsys):
    data_dir = os.environ.get("GSTO_TF_CAMVID")
    entry = zoo_entry(name)
    if not data_dir or entry.card["dataset"] != "camvid":
        pytest.skip("GSTO_TF_CAMVID (a CamVid folder) is not set")
    import json

    for split, scores in entry.card["scores"].items():
        out = os.path.join(str(os.environ.get("TMPDIR", "/tmp")), f"zoo_{name}_{split}")
        assert main(["eval", "--dataset", "camvid", "--data-dir", data_dir, "--split", split, "--checkpoint", name,
                     "--ss", "--run-dir", out]) == 0
        measured = json.load(open(os.path.join(out, f"metrics{'' if split == 'val' else '_' + split}_ss.json")))
        assert 100 * measured["mIoU"] == pytest.approx(scores["miou"], abs=0.05), split


def test_zoo_names_work_as_checkpoints_and_list(tmp_path, capsys, monkeypatch):
    name = NAMES[0]
    assert resolve_checkpoint(name) == zoo_entry(name).checkpoint
    (tmp_path / name).write_text("a file of that name wins")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(name) == name
    monkeypatch.undo()
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert name in out and "dev mIoU" in out
    assert main(["zoo", name]) == 0 and "per_class_iou" in capsys.readouterr().out
    assert main(["zoo", "nope"]) == 2 and "no zoo model 'nope'; the zoo has:" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"checkpoint not found: nope \(neither a file nor a zoo model: "):
        load_checkpoint("nope")


def test_a_street_photo_is_segmented_by_zoo_name(tmp_path):
    name = NAMES[0]
    dataset = zoo_entry(name).card["dataset"]
    photo = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    write_png(str(tmp_path / "street.png"), photo)
    assert main(["predict", str(tmp_path / "street.png"), "--checkpoint", name, "--dataset", dataset,
                 "--output", str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["street_labels.png", "street_overlay.png"]


def test_train_pretrained_takes_a_zoo_model(tmp_path):
    name = NAMES[0]
    card = zoo_entry(name).card
    trained, _ = load_checkpoint(name)
    fresh = build(card["model"], 3)  # another class count: the head stays initialised
    summary = load_pretrained(fresh, name)
    theirs = {w.path: keras.ops.convert_to_numpy(w) for w in trained.weights}
    head = {w.path for w in fresh.weights if w.path not in theirs or theirs[w.path].shape != tuple(w.shape)}
    shapes = {w.path: tuple(w.shape) for w in fresh.weights}
    assert head and all(3 in shapes[p] for p in head), head  # only where the class count enters
    assert f"loaded {len(fresh.weights) - len(head)} of {len(fresh.weights)} weights" in summary
    for w in fresh.weights:
        if w.path not in head:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), theirs[w.path])
    with pytest.raises(CheckpointError, match="no weight of model"):
        inputs = keras.Input((None, None, 3))
        load_pretrained(keras.Model(inputs, keras.layers.Dense(2, name="other")(inputs)), name)
