"""The proof that the architecture is right: official PyTorch outputs reproduced from official-format weights.

The w18_small_v1 cases are vendored in tests/fixtures and always run; the w18_small_v2 cases run when
GSTO_TF_FIXTURES names a folder that holds them.
"""

import pathlib

import numpy as np
import pytest

from gsto_tf.checkpoints import load_torch_weights, read_state_dict
from gsto_tf.models import build

OUTPUTS = {"hrnetv2": ["logits"], "gsto_hrnet": ["logits", "aux_stage3", "aux_stage2"]}
VENDORED = {"hrnetv2_w18s1_c19": "hrnetv2_w18_small_v1", "gsto_hrnet_w18s1_c19": "gsto_hrnet_w18_small_v1"}
EXTRA = {"hrnetv2_w18s2_c19": "hrnetv2_w18_small_v2", "gsto_hrnet_w18s2_c19": "gsto_hrnet_w18_small_v2"}
_models = {}


def _family(case):
    return case.split("_w18")[0]


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory):
    """`<case>_weights.npz` written from the vendored `.pth`: the same state dict in the numpy format."""
    folder = tmp_path_factory.mktemp("npz")
    vendored = pathlib.Path(__file__).parent / "fixtures"
    for case in VENDORED:
        np.savez(folder / f"{case}_weights.npz", **read_state_dict(vendored / f"{case}.pth"))
    return folder


def _loaded_model(path, name):
    if path not in _models:
        model = build(name, 19)
        report = load_torch_weights(model, path, strict=True)
        assert report.ok and not report.missing
        _models[path] = model
    return _models[path]


def _assert_matches_official(model, io_path, case):
    io = np.load(io_path)
    for i in range(2):
        x = io[f"input_{i}"].transpose(0, 2, 3, 1)
        outputs = model(x, training=False)
        assert set(outputs) == set(OUTPUTS[_family(case)])
        for k, key in enumerate(OUTPUTS[_family(case)]):
            ref = io[f"out_{i}_{k}"].transpose(0, 2, 3, 1)
            got = outputs[key].numpy()
            assert got.shape == ref.shape, (key, got.shape, ref.shape)
            rel = np.abs(got - ref).max() / ref.std()
            assert rel <= 1e-4, f"{case} input_{i} {key}: max|diff| = {rel:.2e} x std"


@pytest.mark.parametrize("source", ["pth", "npz"])
@pytest.mark.parametrize("case", sorted(VENDORED))
def test_outputs_match_official(fixtures_dir, npz_dir, case, source):
    path = fixtures_dir / f"{case}.pth" if source == "pth" else npz_dir / f"{case}_weights.npz"
    _assert_matches_official(_loaded_model(str(path), VENDORED[case]), fixtures_dir / f"{case}_io.npz", case)


@pytest.mark.parametrize("case", sorted(EXTRA))
def test_outputs_match_official_extra_fixtures(extra_fixtures_dir, case):
    for path in (extra_fixtures_dir / f"{case}.pth", extra_fixtures_dir / f"{case}_weights.npz"):
        _assert_matches_official(_loaded_model(str(path), EXTRA[case]), extra_fixtures_dir / f"{case}_io.npz", case)


def test_pth_reader_equals_npz(fixtures_dir, npz_dir):
    for case in VENDORED:
        a = read_state_dict(fixtures_dir / f"{case}.pth")
        b = read_state_dict(npz_dir / f"{case}_weights.npz")
        assert set(a) == set(b)
        assert "loss.criterion.weight" not in a and not any(k.startswith("model.") for k in a)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_gsto_att1_is_ignored_by_design(fixtures_dir):
    path = str(fixtures_dir / "gsto_hrnet_w18s1_c19.pth")
    model = _loaded_model(path, VENDORED["gsto_hrnet_w18s1_c19"])
    report = load_torch_weights(model, path, strict=True)
    assert report.ignored and all(k.startswith("att1.") for k in report.ignored)
    official = read_state_dict(path)
    assert len(report.loaded) == len(official) - len(report.ignored)
    assert sorted(report.loaded) == sorted(k for k in official if not k.startswith("att1."))
