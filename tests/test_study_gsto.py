"""The GSTO study's pieces: the trunk hand-over from HRNetV2 to GSTO-HRNet, the seed summary, and (slow) a tiny
end-to-end run of experiments/study_gsto.py."""

import csv
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from gsto_tf.checkpoints import is_head_key, load_torch_weights, model_torch_keys, torch_state_dict
from gsto_tf.models import build

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("study_gsto", ROOT / "experiments" / "study_gsto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hrnetv2_trunk_loads_into_gsto_hrnet_and_leaves_head_and_gates_fresh(tmp_path):
    source = build("hrnetv2_w18_small_v1", 5)
    rng = np.random.default_rng(0)
    for variable in source.weights:  # distinct values, so a wrong hand-over cannot pass by chance
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    trunk = torch_state_dict(source, include=lambda key: not is_head_key(key))
    assert trunk and not any(k.startswith("last_layer") for k in trunk)
    path = tmp_path / "trunk.npz"
    np.savez(path, **trunk)

    target = build("gsto_hrnet_w18_small_v1", 5)
    before = {k: v.numpy().copy() for k, (v, _) in model_torch_keys(target).items()}
    report = load_torch_weights(target, str(path), backbone_only=True)
    assert not report.mismatched and not report.unexpected
    assert sorted(report.loaded) == sorted(trunk)
    source_keys = model_torch_keys(source)
    for key, (variable, _) in model_torch_keys(target).items():
        if key in trunk:
            np.testing.assert_array_equal(variable.numpy(), source_keys[key][0].numpy(), err_msg=key)
        else:  # the head and GSTO's gates keep their fresh initialisation
            assert is_head_key(key), key
            np.testing.assert_array_equal(variable.numpy(), before[key], err_msg=key)


def test_state_dict_round_trip_is_exact_in_torch_layout():
    model = build("hrnetv2_w18_small_v1", 3)
    state = torch_state_dict(model)
    assert state["conv1.weight"].shape == (64, 3, 3, 3)  # [O, I, kh, kw]
    copy = build("hrnetv2_w18_small_v1", 3)
    assert load_torch_weights(copy, state, strict=True).ok
    for a, b in zip(model.weights, copy.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_summary_is_mean_and_sample_sd_over_seeds(tmp_path):
    study = _study()
    rows = [("ft", "hrnetv2", 0, 40, 0.5), ("ft", "hrnetv2", 1, 40, 0.7), ("ft", "hrnetv2", 2, 40, 0.6),
            ("ft", "gsto_hrnet", 0, 40, 0.4)]
    summary = study.summarise(rows)
    mean, sd, n = summary[("ft", "hrnetv2", 40)]
    assert n == 3 and mean == pytest.approx(0.6) and sd == pytest.approx(0.1)
    assert summary[("ft", "gsto_hrnet", 40)] == (0.4, 0.0, 1)
    args = study.parse_args(["--seeds", "0", "1", "2"])
    study.write_summary(tmp_path / "s.md", summary, args)
    text = (tmp_path / "s.md").read_text()
    assert "| 40 | 60.0 +- 10.0 | 40.0 +- 0.0 |" in text


@pytest.mark.parametrize("argv, message", [(["--steps", "50"], "multiple of --eval-every"),
                                           (["--eval-every", "0"], "--eval-every must be >= 1")])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _study().parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_study_runs_end_to_end(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, str(ROOT / "experiments" / "study_gsto.py"), "--out", str(out), "--width", "w18_small_v1",
           "--pretrain-steps", "2", "--steps", "4", "--eval-every", "2", "--seeds", "0", "1",
           "--precise-bn-batches", "2", "--eval-limit", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 models x 2 seeds x evaluations at steps 2 and 4
    assert sorted((r["model"], r["seed"], r["step"]) for r in rows) == sorted(
        (m, s, st) for m in ("hrnetv2", "gsto_hrnet") for s in ("0", "1") for st in ("2", "4"))
    assert all(0.0 <= float(r["miou"]) <= 1.0 for r in rows)
    assert (out / "study_gsto.png").stat().st_size > 1000
    assert "| 4 |" in (out / "summary.md").read_text()
