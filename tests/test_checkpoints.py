import os
import pickle
import zipfile

import keras
import numpy as np
import pytest

from gsto_tf.models import CheckpointError, build, load_checkpoint, load_torch_weights, read_state_dict
from gsto_tf.models.checkpoints import model_torch_keys


def _tiny_state(model):
    """A random state dict in PyTorch layout for every weight the model expects."""
    rng = np.random.default_rng(0)
    state = {}
    for key, (variable, _) in model_torch_keys(model).items():
        shape = tuple(variable.shape)
        if len(shape) == 4:  # keras [kh, kw, I, O] -> torch [O, I, kh, kw]
            shape = (shape[3], shape[2], shape[0], shape[1])
        value = rng.normal(size=shape).astype("float32")
        if key.endswith("running_var"):
            value = np.abs(value) + 0.5
        state[f"model.{key}"] = value
    return state


@pytest.fixture(scope="module")
def small_model():
    return build("hrnetv2_w18_small_v1", 5)


def test_npz_round_trip_strict_and_report(small_model, tmp_path):
    state = _tiny_state(small_model)
    state["loss.criterion.weight"] = np.ones(5, "float32")
    path = tmp_path / "ckpt.npz"
    np.savez(path, **state)
    report = load_torch_weights(small_model, path, strict=True)
    assert report.ok and len(report.loaded) == len(state) - 1
    w = small_model.get_layer("conv1").kernel.numpy()
    np.testing.assert_array_equal(w, state["model.conv1.weight"].transpose(2, 3, 1, 0))
    bn = small_model.get_layer("last_layer.1")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["model.last_layer.1.running_var"])


def test_missing_unexpected_and_mismatched_keys_are_reported(small_model, tmp_path):
    state = _tiny_state(small_model)
    del state["model.conv1.weight"]
    state["model.extra.weight"] = np.zeros(3, "float32")
    state["model.conv2.weight"] = np.zeros((1, 1, 3, 3), "float32")
    report = load_torch_weights(small_model, state, strict=False)
    assert report.missing == ["conv1.weight"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == [("conv2.weight", (1, 1, 3, 3), (64, 64, 3, 3))]
    with pytest.raises(CheckpointError, match=r"(?s)missing in checkpoint.*conv1\.weight.*unexpected.*extra"):
        load_torch_weights(small_model, state, strict=True)


def test_backbone_only_checkpoint_leaves_head_initialised(small_model):
    state = {k: v for k, v in _tiny_state(small_model).items() if "last_layer" not in k}
    state["model.classifier.weight"] = np.zeros((1000, 2048), "float32")  # ImageNet head: not ours
    report = load_torch_weights(small_model, state, strict=True, backbone_only=True)
    assert report.ok and report.allowed_missing and all("last_layer" in k for k in report.allowed_missing)
    assert "classifier.weight" in report.ignored


def test_load_checkpoint_infers_classes_and_reads_keras_formats(small_model, tmp_path):
    path = tmp_path / "official.npz"
    np.savez(path, **_tiny_state(small_model))
    model, report = load_checkpoint(path, name="hrnetv2_w18_small_v1")
    assert model.output["logits"].shape[-1] == 5 and report.ok
    model.save(tmp_path / "m.keras")
    again, none = load_checkpoint(tmp_path / "m.keras")
    assert none is None
    x = np.random.default_rng(1).normal(size=(1, 33, 45, 3)).astype("float32")
    np.testing.assert_allclose(again(x)["logits"].numpy(), model(x)["logits"].numpy(), atol=0)
    model.save_weights(tmp_path / "m.weights.h5")
    third, _ = load_checkpoint(tmp_path / "m.weights.h5", name="hrnetv2_w18_small_v1", num_classes=5)
    np.testing.assert_allclose(third(x)["logits"].numpy(), model(x)["logits"].numpy(), atol=0)


def _torch_like_zip(path, pickled):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/gsto_tf_pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    _torch_like_zip(path, pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to unpickle 'posix.system'|refusing to unpickle 'os.system'"):
        read_state_dict(path)
    assert not os.path.exists("/tmp/gsto_tf_pwned")


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("notzip.pth", b"hello", "not a PyTorch zip checkpoint"),
        ("broken.npz", b"garbage", "not a readable .npz"),
        ("weights.ckpt", b"x", "unknown checkpoint extension"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    np.savez(tmp_path / "x.npz", a=np.zeros(1))
    with pytest.raises(CheckpointError, match="needs `model` or a model `name`"):
        load_checkpoint(tmp_path / "x.npz")


def test_convert_cli_writes_keras_model(small_model, tmp_path):
    from gsto_tf.cli import main

    src = tmp_path / "official.npz"
    np.savez(src, **_tiny_state(small_model))
    out = tmp_path / "converted.keras"
    assert main(["convert", str(src), "--model", "hrnetv2_w18_small_v1", "--output", str(out)]) == 0
    model = keras.saving.load_model(out)
    assert (tmp_path / "converted.weights.h5").exists()
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(),
                                  np.load(src)["model.conv1.weight"].transpose(2, 3, 1, 0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_failed_strict_load_names_the_file_and_assigns_nothing(small_model, tmp_path):
    state = _tiny_state(small_model)
    state["model.last_layer.3.weight"] = np.zeros((7, 3, 1, 1), "float32")  # wrong head shape
    path = tmp_path / "wrong_head.npz"
    np.savez(path, **state)
    before = small_model.get_layer("conv1").kernel.numpy().copy()
    with pytest.raises(CheckpointError, match=r"(?s)wrong_head\.npz.*shape mismatch.*last_layer\.3\.weight"):
        load_checkpoint(path, model=small_model, strict=True)
    np.testing.assert_array_equal(small_model.get_layer("conv1").kernel.numpy(), before)


def test_load_checkpoint_backbone_only_builds_with_given_classes(small_model, tmp_path):
    state = {k: v for k, v in _tiny_state(small_model).items() if "last_layer" not in k}
    state["model.classifier.weight"] = np.zeros((1000, 2048), "float32")
    path = tmp_path / "imagenet.npz"
    np.savez(path, **state)
    model, report = load_checkpoint(path, name="gsto_hrnet_w18_small_v1", num_classes=3, backbone_only=True)
    assert report.ok and report.source == str(path)
    # the gates and the auxiliary heads of GSTO are not in an HRNet ImageNet file either
    assert any(".att_layers." in k for k in report.allowed_missing)
    assert any(k.startswith("last_layer_stage2") for k in report.allowed_missing)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(),
                                  state["model.conv1.weight"].transpose(2, 3, 1, 0))


def test_convert_cli_backbone_only_needs_classes_and_reports(small_model, tmp_path, capsys):
    from gsto_tf.cli import main

    state = {k: v for k, v in _tiny_state(small_model).items() if "last_layer" not in k}
    src = tmp_path / "imagenet.npz"
    np.savez(src, **state)
    out = tmp_path / "init.keras"
    with pytest.raises(SystemExit, match="cannot infer the number of classes"):
        main(["convert", str(src), "--model", "hrnetv2_w18_small_v1", "--backbone-only", "--output", str(out)])
    assert main(["convert", str(src), "--model", "hrnetv2_w18_small_v1", "--backbone-only", "--num-classes", "3",
                 "--output", str(out)]) == 0
    assert "not in a backbone checkpoint (left initialised)" in capsys.readouterr().out
    assert keras.saving.load_model(out).output["logits"].shape[-1] == 3


def test_official_gsto_checkpoint_loads_into_an_ablation_subset(fixtures_dir):
    full = build("gsto_hrnet_w18_small_v2", 19)
    full_report = load_torch_weights(full, str(fixtures_dir / "gsto_hrnet_w18s2_c19_weights.npz"))
    model = build("gsto_hrnet_w18_small_v2", 19, gsto_parts=["fusion_gates"])
    report = load_torch_weights(model, str(fixtures_dir / "gsto_hrnet_w18s2_c19_weights.npz"))
    assert not report.missing
    extra = set(report.unexpected) - set(full_report.unexpected)
    assert extra and all(k.startswith(("last_layer_stage", "att2.", "att3.")) for k in extra), sorted(extra)[:5]
    for layer in model.layers:  # every weight the subset has is the official one
        if "att_layers" in layer.name and layer.weights:
            np.testing.assert_array_equal(layer.weights[0].numpy(), full.get_layer(layer.name).weights[0].numpy())
