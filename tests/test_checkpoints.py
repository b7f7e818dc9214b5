import os
import pathlib
import pickle
import re
import zipfile

import keras
import numpy as np
import pytest

from gsto_tf.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_torch_weights,
    model_torch_keys,
    read_state_dict,
)
from gsto_tf.models import build


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
    same = build("hrnetv2_w18_small_v1", 5)  # the weights file alone loads into a freshly built model
    same.load_weights(tmp_path / "converted.weights.h5")
    for a, b in zip(model.weights, same.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
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
    assert main(["convert", str(src), "--model", "hrnetv2_w18_small_v1", "--backbone-only",
                 "--output", str(out)]) == 2
    assert re.search("cannot infer the number of classes", capsys.readouterr().err)
    assert main(["convert", str(src), "--model", "hrnetv2_w18_small_v1", "--backbone-only", "--num-classes", "3",
                 "--output", str(out)]) == 0
    assert "not in a backbone checkpoint (left initialised)" in capsys.readouterr().out
    assert keras.saving.load_model(out).output["logits"].shape[-1] == 3


def test_official_gsto_checkpoint_loads_into_an_ablation_subset(fixtures_dir):
    full = build("gsto_hrnet_w18_small_v1", 19)
    full_report = load_torch_weights(full, str(fixtures_dir / "gsto_hrnet_w18s1_c19.pth"))
    model = build("gsto_hrnet_w18_small_v1", 19, gsto_parts=["fusion_gates"])
    report = load_torch_weights(model, str(fixtures_dir / "gsto_hrnet_w18s1_c19.pth"))
    assert not report.missing
    extra = set(report.unexpected) - set(full_report.unexpected)
    assert extra and all(k.startswith(("last_layer_stage", "att2.", "att3.")) for k in extra), sorted(extra)[:5]
    for layer in model.layers:  # every weight the subset has is the official one
        if "att_layers" in layer.name and layer.weights:
            np.testing.assert_array_equal(layer.weights[0].numpy(), full.get_layer(layer.name).weights[0].numpy())


# --- crafted .pth files: every tensor is checked against its storage before a byte is read ----------------------

from torch_zip import Call, Global, Storage, tensor, write_pth, write_state_dict  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def test_crafted_writer_mirrors_torch_save(tmp_path):
    """The test writer produces files the reader reads like the vendored torch.save fixture."""
    official = read_state_dict(FIXTURES / "hrnetv2_w18s1_c19.pth")
    again = read_state_dict(write_state_dict(tmp_path / "again.pth", {f"model.{k}": v for k, v in official.items()}))
    assert sorted(again) == sorted(official)
    for key in official:
        np.testing.assert_array_equal(again[key], official[key])


def test_strided_offset_and_shared_storage_tensors_are_read_like_torch(tmp_path):
    data = np.arange(24, dtype=np.float32)
    state = {
        "a": tensor(Storage("0"), 0, (2, 3, 4), (12, 4, 1)),  # contiguous
        "t": tensor(Storage("0"), 0, (4, 6), (1, 4)),  # a transposed view of the same storage
        "s": tensor(Storage("0"), 5, (3, 2), (6, 2)),  # offset + strides
        "one": tensor(Storage("0"), 23, (1, 1), (99, 7)),  # strides of size-1 dims are irrelevant
        "empty": tensor(Storage("0"), 24, (0, 3), (3, 1)),
        "p": Call(Global("torch._utils", "_rebuild_parameter"), tensor(Storage("0"), 4, (2,), (1,)), True,
                  Call(Global("collections", "OrderedDict"))),
    }
    got = read_state_dict(write_pth(tmp_path / "views.pth", state, {"0": data}))
    np.testing.assert_array_equal(got["a"], data.reshape(2, 3, 4))
    np.testing.assert_array_equal(got["t"], data.reshape(6, 4).T)
    np.testing.assert_array_equal(got["s"], np.lib.stride_tricks.as_strided(data[5:], (3, 2), (24, 8)))
    np.testing.assert_array_equal(got["one"], [[23.0]])
    assert got["empty"].shape == (0, 3)
    np.testing.assert_array_equal(got["p"], [4.0, 5.0])


_STORAGE = {"0": np.arange(12, dtype=np.float32)}


@pytest.mark.parametrize("name,state,storages,match", [
    ("offset", {"w": tensor(Storage("0"), 10, (4,), (1,))}, _STORAGE, r"reach element 13.*holds 12 elements"),
    ("stride", {"w": tensor(Storage("0"), 0, (3, 4), (4, 2))}, _STORAGE, r"reach element 14.*out of range"),
    ("size", {"w": tensor(Storage("0"), 0, (5, 3), (3, 1))}, _STORAGE, r"size \(5, 3\).*reach element 14"),
    ("huge_size", {"w": tensor(Storage("0"), 0, (1 << 40,), (1,))}, _STORAGE, r"out of range"),
    ("huge_broadcast", {"w": tensor(Storage("0"), 0, (1 << 20, 1 << 20), (0, 0))}, _STORAGE,
     r"more than its storage's 12"),
    ("too_large_dim", {"w": tensor(Storage("0"), 0, (1 << 70,), (1,))}, _STORAGE, r"expected a tuple of non-neg"),
    ("negative_stride", {"w": tensor(Storage("0"), 11, (4,), (-1,))}, _STORAGE, r"stride \(-1,\).*non-negative"),
    ("negative_offset", {"w": tensor(Storage("0"), -4, (4,), (1,))}, _STORAGE, r"offset -4.*non-negative int"),
    ("short_storage", {"w": tensor(Storage("0", numel=12), 0, (12,), (1,))}, {"0": np.arange(10, dtype="f4")},
     r"holds 40 bytes.*declares 12 x 4-byte.*truncated or corrupt"),
    ("declared_longer", {"w": tensor(Storage("0", numel=100), 0, (100,), (1,))}, _STORAGE, r"holds 48 bytes"),
    ("missing_storage", {"w": tensor(Storage("7", numel=4), 0, (4,), (1,))}, _STORAGE, r"data/7 is missing"),
    ("offset_type", {"w": tensor(Storage("0"), "0", (4,), (1,))}, _STORAGE, r"offset '0', expected"),
    ("float_stride", {"w": tensor(Storage("0"), 0, (4,), (1.5,))}, _STORAGE, r"stride \(1\.5,\)"),
    ("size_type", {"w": tensor(Storage("0"), 0, "abcd", (1,))}, _STORAGE, r"size 'abcd'"),
    ("bool_size", {"w": tensor(Storage("0"), 0, (True,), (1,))}, _STORAGE, r"size \(True,\)"),
    ("rank_mismatch", {"w": tensor(Storage("0"), 0, (2, 2), (1,))}, _STORAGE, r"equally long"),
    ("not_a_storage", {"w": tensor(12, 0, (4,), (1,))}, _STORAGE, r"storage is 12, not a storage"),
    ("few_args", {"w": Call(Global("torch._utils", "_rebuild_tensor_v2"), Storage("0"))}, _STORAGE,
     r"with 1 arguments"),
    ("bad_pid", {"w": tensor(Storage("0", pid=("storage", "x")), 0, (4,), (1,))}, _STORAGE,
     r"unsupported storage reference"),
    ("pid_numel_type", {"w": tensor(Storage("0", numel="12"), 0, (4,), (1,))}, _STORAGE,
     r"malformed storage reference"),
    ("unknown_dtype", {"w": tensor(Storage("0", "BFloat16Storage"), 0, (4,), (1,))}, _STORAGE,
     r"torch\.BFloat16Storage is not supported"),
    ("two_types", {"a": tensor(Storage("0"), 0, (4,), (1,)), "w": tensor(Storage("0", "IntStorage"), 0, (4,), (1,))},
     _STORAGE, r"two different types"),
    ("not_a_tensor", {"w": 3}, _STORAGE, r"expected a tensor, got 3"),
])
def test_crafted_bad_tensor_is_refused_naming_key_and_file(tmp_path, name, state, storages, match):
    path = write_pth(tmp_path / f"{name}.pth", state, storages)
    with pytest.raises(CheckpointError, match=match) as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "tensor 'w'" in str(info.value)


def test_truncated_and_corrupt_archives_say_so(tmp_path):
    good = write_state_dict(tmp_path / "good.pth", {"w": np.ones((64, 64), np.float32)})
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.pth: truncated or corrupt zip archive"):
            read_state_dict(tmp_path / "cut.pth")
    flipped = bytearray(data)
    flipped[data.index(np.ones(4, np.float32).tobytes()) + 1] ^= 0xFF  # a storage byte: the CRC fails
    (tmp_path / "crc.pth").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"crc\.pth: truncated or corrupt zip archive.*CRC"):
        read_state_dict(tmp_path / "crc.pth")
    pickled = bytearray(data)
    start = data.index(b"\x80\x02")
    pickled[start + 5:start + 40] = b"\xff" * 35  # garbage opcodes in data.pkl
    (tmp_path / "pkl.pth").write_bytes(bytes(pickled))
    with pytest.raises(CheckpointError, match=r"pkl\.pth: (corrupt PyTorch checkpoint|truncated or corrupt)"):
        read_state_dict(tmp_path / "pkl.pth")


def test_zip_bomb_storage_is_refused(tmp_path):
    state = {"w": tensor(Storage("0"), 0, (1 << 22,), (1,))}
    path = write_pth(tmp_path / "bomb.pth", state, {"0": np.zeros(1 << 22, np.float32)},
                     compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000  # 16 MiB of zeros
    with pytest.raises(CheckpointError, match=r"bomb\.pth: archive entry .*data/0 expands .*refused"):
        read_state_dict(path)


def test_convert_refuses_a_short_storage_and_writes_nothing(small_model, tmp_path, capsys):
    from gsto_tf.cli import main

    good = tmp_path / "good.pth"
    write_state_dict(good, _tiny_state(small_model))
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "short.pth", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-8] if info.filename == "archive/data/0" else data)  # conv1.weight short
    out = tmp_path / "out.keras"
    assert main(["convert", str(tmp_path / "short.pth"), "--model", "hrnetv2_w18_small_v1",
                 "--output", str(out)]) == 2
    assert re.search(r"short\.pth: tensor 'model\.conv1\.weight': storage entry", capsys.readouterr().err)
    assert not out.exists()
    assert main(["convert", str(good), "--model", "hrnetv2_w18_small_v1", "--output", str(out)]) == 0


def test_official_checkpoint_head_of_another_class_count_is_refused(small_model, tmp_path):
    path = tmp_path / "five.npz"
    np.savez(path, **_tiny_state(small_model))  # a 5-class head
    with pytest.raises(CheckpointError, match=r"five\.npz: the checkpoint predicts 5 classes, but dataset 'lip' has "
                                              r"20"):
        load_checkpoint(path, name="hrnetv2_w18_small_v1", num_classes=20, classes_of="dataset 'lip'")


def test_one_strided_tensor_under_many_keys_is_built_once(tmp_path):
    storage = np.arange(64 * 64, dtype=np.float32)
    transposed = tensor(Storage("0"), 0, (64, 64), (1, 64))  # non-contiguous: copied out of its storage
    path = write_pth(tmp_path / "shared.pth", {f"w{i}": transposed for i in range(200)}, {"0": storage})
    state = read_state_dict(path)
    assert len(state) == 200 and len({id(a) for a in state.values()}) == 1
    np.testing.assert_array_equal(state["w7"], storage.reshape(64, 64).T)


def test_distinct_strided_views_cannot_multiply_the_file(tmp_path):
    storage = np.zeros(1 << 19, np.float32)  # 2 MiB stored
    views = {f"w{i}": tensor(Storage("0"), i, (512, 1000), (1, 512)) for i in range(64)}  # 2 MB copy each
    path = write_pth(tmp_path / "views.pth", views, {"0": storage})
    with pytest.raises(CheckpointError, match=r"views\.pth: tensor 'w\d+': non-contiguous tensors would take "):
        read_state_dict(path)


def test_many_entries_just_under_the_ratio_check_are_refused_in_total(tmp_path):
    # 600 entries of 1 MiB of zeros each: every one under the per-entry floor, 600 MiB in all from ~1 MB of zip.
    storages = {str(i): np.zeros(1 << 18, np.float32) for i in range(600)}
    state = {f"w{i}": tensor(Storage(str(i)), 0, (1 << 18,), (1,)) for i in range(600)}
    path = write_pth(tmp_path / "many.pth", state, storages, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(CheckpointError, match=r"many\.pth: the archive's entries expand from \d+ to \d+ bytes in all"):
        read_state_dict(path)


def test_deeply_nested_pickle_is_refused_without_a_traceback(tmp_path):
    depth = 200_000
    pickled = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."  # [[[...]]] 200k deep
    with zipfile.ZipFile(tmp_path / "deep.pth", "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
    with pytest.raises(CheckpointError, match=r"deep\.pth: data\.pkl nests"):
        read_state_dict(tmp_path / "deep.pth")
