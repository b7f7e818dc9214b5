"""Test-wide settings: quiet TensorFlow, fixed seeds, and where the parity fixtures are."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The compact official fixtures (w18_small_v1 width) are part of the repository, so a clone alone runs every parity
# test. GSTO_TF_FIXTURES may name a folder with more fixtures in the same format (e.g. the w18_small_v2 ones); the
# tests that use it are skipped when it is not set.
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
EXTRA_FIXTURES_DIR = os.environ.get("GSTO_TF_FIXTURES") or None


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default options): one test process per core, at most 4 (each holds TensorFlow and its
    models, a few GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed_and_reset_policy():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def fixtures_dir():
    """The vendored fixtures (always there: a missing folder is a broken checkout, not a reason to skip)."""
    if not FIXTURES_DIR.is_dir():
        pytest.fail(f"vendored fixtures missing: {FIXTURES_DIR}")
    return FIXTURES_DIR


@pytest.fixture
def extra_fixtures_dir():
    """The optional GSTO_TF_FIXTURES folder; a set but missing folder is an error, an unset one skips."""
    if EXTRA_FIXTURES_DIR is None:
        pytest.skip("GSTO_TF_FIXTURES is not set (optional larger fixtures)")
    path = pathlib.Path(EXTRA_FIXTURES_DIR)
    if not path.is_dir():
        pytest.fail(f"GSTO_TF_FIXTURES={EXTRA_FIXTURES_DIR!r} is not a folder")
    return path


@pytest.fixture
def float64_floatx():
    """floatx float64 for one test (a float64 model's compiled loss and loss metrics compute in floatx)."""
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(previous)
