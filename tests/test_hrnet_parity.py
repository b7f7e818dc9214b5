"""The proof that the architecture is right: official PyTorch outputs reproduced from official-format weights."""

import numpy as np
import pytest

from gsto_tf.models import build, load_torch_weights, read_state_dict

CASES = {
    "hrnetv2_w18s2_c19": ("hrnetv2_w18_small_v2", ["logits"]),
    "gsto_hrnet_w18s2_c19": ("gsto_hrnet_w18_small_v2", ["logits", "aux_stage3", "aux_stage2"]),
}
_models = {}


def _loaded_model(fixtures_dir, case, source):
    key = (case, source)
    if key not in _models:
        name, _ = CASES[case]
        model = build(name, 19)
        path = fixtures_dir / (f"{case}.pth" if source == "pth" else f"{case}_weights.npz")
        report = load_torch_weights(model, path, strict=True)
        assert report.ok and not report.missing
        _models[key] = model
    return _models[key]


@pytest.mark.parametrize("source", ["pth", "npz"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_official(fixtures_dir, case, source):
    model = _loaded_model(fixtures_dir, case, source)
    io = np.load(fixtures_dir / f"{case}_io.npz")
    for i in range(2):
        x = io[f"input_{i}"].transpose(0, 2, 3, 1)
        outputs = model(x, training=False)
        assert set(outputs) == set(CASES[case][1])
        for k, key in enumerate(CASES[case][1]):
            ref = io[f"out_{i}_{k}"].transpose(0, 2, 3, 1)
            got = outputs[key].numpy()
            assert got.shape == ref.shape, (key, got.shape, ref.shape)
            rel = np.abs(got - ref).max() / ref.std()
            assert rel <= 1e-4, f"{case} input_{i} {key}: max|diff| = {rel:.2e} x std"


def test_pth_reader_equals_npz(fixtures_dir):
    for case in CASES:
        a = read_state_dict(fixtures_dir / f"{case}.pth")
        b = read_state_dict(fixtures_dir / f"{case}_weights.npz")
        assert set(a) == set(b)
        assert "loss.criterion.weight" not in a and not any(k.startswith("model.") for k in a)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_gsto_att1_is_ignored_by_design(fixtures_dir):
    model = _loaded_model(fixtures_dir, "gsto_hrnet_w18s2_c19", "npz")
    report = load_torch_weights(model, fixtures_dir / "gsto_hrnet_w18s2_c19_weights.npz", strict=True)
    assert report.ignored and all(k.startswith("att1.") for k in report.ignored)
    assert len(report.loaded) == 1084
