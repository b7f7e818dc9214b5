"""Test-wide settings: quiet TensorFlow, fixed seeds, and the path of the shared fixtures."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared/fixtures next to the checkout (CI clones main with shared/ beside it); GSTO_TF_FIXTURES overrides.
FIXTURES_DIR = pathlib.Path(os.environ.get("GSTO_TF_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(autouse=True)
def _seed_and_reset_policy():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def fixtures_dir():
    if not FIXTURES_DIR.is_dir():
        pytest.fail(f"parity fixtures not found at {FIXTURES_DIR} (set GSTO_TF_FIXTURES to their folder)")
    return FIXTURES_DIR


@pytest.fixture
def float64_floatx():
    """floatx float64 for one test (a float64 model's compiled loss and loss metrics compute in floatx)."""
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(previous)
