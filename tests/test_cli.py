"""The command line as users run it: `gsto-tf`, `python -m gsto_tf` and `experiments/run.py` in a subprocess (help,
quiet start-up, one-line errors with exit status 2, tracebacks on --debug), and what the package declares."""

import argparse
import configparser
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from gsto_tf.cli import SUBCOMMANDS, build_parser
from gsto_tf.user_input import parse_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's start-up notices: oneDNN, cpu_feature_guard, absl's note before its log is initialised, C++ INFO lines.
BANNER = re.compile(r"oneDNN|cpu_feature_guard|absl::InitializeLog|^I\d{4} ", re.M)


def run_cli(args, command=(sys.executable, "-m", "gsto_tf"), **env):
    """Runs the command line in a fresh process that imports this tree's gsto_tf, with no log level or debug
    setting inherited from the test environment."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GSTO_TF_DEBUG")}
    environ["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    environ.update(env)
    return subprocess.run([*command, *args], capture_output=True, text=True, env=environ, cwd=REPO, timeout=300)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def top_help():
    return run_cli(["--help"])


def test_help_lists_subcommands_datasets_and_models(top_help):
    from gsto_tf.data import available_datasets

    assert top_help.returncode == 0, top_help.stderr[-3000:]
    assert top_help.stdout.startswith("usage: python -m gsto_tf ")
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\b", top_help.stdout, re.M), name
    assert set(SUBCOMMANDS) == {"train", "eval", "predict", "export", "convert", "counts", "data", "visualize", "zoo"}
    datasets = top_help.stdout.split("datasets (--dataset", 1)[1].split("\n\n", 1)[0]
    for name in available_datasets():
        assert name in datasets
    assert "gsto_hrnet_w48" in top_help.stdout and "hrnetv2_w18_small_v1" in top_help.stdout
    assert "pspnet_*" in top_help.stdout and "--list-models" in top_help.stdout


def test_start_up_is_quiet_and_verbose_shows_tensorflow_notices(top_help):
    assert not BANNER.search(top_help.stderr), top_help.stderr
    verbose = run_cli(["--verbose", "counts", "--help"])
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    if not BANNER.search(verbose.stderr):
        pytest.skip("this TensorFlow build prints no start-up notice, so there is nothing to hide")
    quiet = run_cli(["counts", "--help"])
    assert quiet.returncode == 0 and quiet.stdout == verbose.stdout
    assert not BANNER.search(quiet.stderr), quiet.stderr


def test_list_models_prints_every_registered_name():
    from gsto_tf.models import available_models

    result = run_cli(["--list-models"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == available_models()


@pytest.mark.parametrize("args, message", [
    # argparse's own errors, made one line: a bad HxW value names its argument
    (["counts", "--input-size", "12"],
     "python -m gsto_tf counts: error: argument --input-size: expected HxW with positive integers (e.g. 1024x2048), "
     "got '12' (see python -m gsto_tf counts --help)"),
    # options without a subcommand go to `train`
    (["--strategy", "bogus"], "python -m gsto_tf train: error: argument --strategy: invalid choice: 'bogus'"),
    # a subcommand's own check
    (["convert", "in.npz", "--model", "hrnetv2_w18_small_v1", "--output", "out.h5"],
     "--output: expected a path ending in .keras, got 'out.h5'"),
    # counts that would divide by zero or never end
    (["data", "browse", "--num", "0"], "python -m gsto_tf data browse: error: argument --num: expected an integer in "
     "1..64, got '0'"),
    (["data", "browse", "--num", "-2"], "python -m gsto_tf data browse: error: argument --num: expected an integer"),
    (["visualize", "predictions", "--output", "p.png", "--num", "0"], "python -m gsto_tf visualize: error: argument "
     "--num: expected an integer in 1..32, got '0'"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_status_2(args, message):
    result = run_cli(args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    assert error_lines(result) == [error_lines(result)[0]] and error_lines(result)[0].startswith(message), \
        result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("debug", [["--debug"], []])
def test_debug_shows_the_traceback(debug):
    env = {} if debug else {"GSTO_TF_DEBUG": "1"}
    result = run_cli(["convert", "in.npz", *debug, "--model", "hrnetv2_w18_small_v1", "--output", "out.h5"], **env)
    assert result.returncode == 2
    lines = error_lines(result)
    assert lines[0] == "Traceback (most recent call last):", result.stderr
    assert any(re.search(r"gsto_tf/cli/convert\.py.*in main", line) for line in lines), result.stderr
    assert "gsto_tf.cli.common.UsageError: --output: expected a path ending in .keras" in result.stderr
    assert lines[-1] == "--output: expected a path ending in .keras, got 'out.h5'"


def test_experiments_run_py_is_the_same_command_line():
    result = run_cli(["--help"], command=(sys.executable, os.path.join(REPO, "experiments", "run.py")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: run.py ")
    assert all(re.search(rf"^\s+{name}\b", result.stdout, re.M) for name in SUBCOMMANDS)
    assert not BANNER.search(result.stderr), result.stderr


def test_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "gsto-tf")
    if not os.path.exists(script):
        pytest.skip(f"no gsto-tf beside {sys.executable}: this environment's package was installed before the entry "
                    "point existed (reinstall with `pip install -e .`)")
    result = run_cli(["counts", "--input-size", "0x5"], command=(script,))
    assert result.returncode == 2
    assert error_lines(result) == ["gsto-tf counts: error: argument --input-size: expected HxW with positive integers "
                                   "(e.g. 1024x2048), got '0x5' (see gsto-tf counts --help)"]
    result = run_cli(["--help"], command=(script,))
    assert result.returncode == 0 and result.stdout.startswith("usage: gsto-tf ")
    assert not BANNER.search(result.stderr), result.stderr


@pytest.mark.parametrize("text, size", [("512x1024", (512, 1024)), ("97X131", (97, 131)), (" 8x 16", (8, 16))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12", "0x5", "5x-1", "axb", "1x2x3", "", "1.5x2"])
def test_parse_size_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"expected HxW with positive integers "
                                                                   f"(e.g. 1024x2048), got {text!r}")):
        parse_size(text)


def test_size_options_parse_to_tuples():
    assert build_parser("p", "counts").parse_args(["counts"]).input_size == (1024, 2048)
    assert build_parser("p", "export").parse_args(["export", "--checkpoint", "c", "--output", "o", "--input-size",
                                                   "dynamic"]).input_size is None
    args = build_parser("p", "eval").parse_args(["eval", "--checkpoint", "c", "--crop-size", "512x1024"])
    assert args.crop_size == (512, 1024)


def test_train_strategies_are_the_configs():
    from gsto_tf.training.config import STRATEGIES

    parser = build_parser("p", "train")
    for name in STRATEGIES:
        assert parser.parse_args(["train", "--strategy", name]).strategy == name


def test_packaging_declares_the_entry_point_and_tensorflow_extras():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    assert setup["options.entry_points"]["console_scripts"].split() == ["gsto-tf", "=", "gsto_tf.cli:main"]
    install_requires = setup["options"]["install_requires"].split()
    assert not [r for r in install_requires if r.startswith("tensorflow") and not r.startswith("tensorflow-datasets")]
    with open(os.path.join(REPO, "requirements.txt")) as f:
        pinned = re.search(r"^tensorflow-cpu==([\d.]+)$", f.read(), re.M).group(1)
    extras = setup["options.extras_require"]
    assert extras["cpu"].split() == [f"tensorflow-cpu=={pinned}"]
    assert extras["gpu"].split() == [f"tensorflow[and-cuda]=={pinned}"]


def test_no_sys_path_inserts_in_scripts():
    found = []
    for folder in ("benchmarks", "experiments", os.path.join("tests", "scripts")):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(root, name)) as f:
                        found += [f"{name}: {line.strip()}" for line in f
                                  if re.search(r"sys\.path\.(insert|append)", line)]
    assert found == []


def test_tflite_export_is_quiet(tmp_path):
    pytest.importorskip("ai_edge_litert")
    import keras

    from gsto_tf.data import ensure_synthetic

    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, {"logits": keras.layers.Conv2D(8, 1)(inputs)}).save(tmp_path / "pointwise.keras")
    data = ensure_synthetic(str(tmp_path / "data"), height=16, width=32, train=2, val=2)
    result = run_cli(["export", "--checkpoint", str(tmp_path / "pointwise.keras"), "--format", "tflite",
                      "--input-size", "16x32", "--dataset", "synthetic", "--data-dir", data, "--num-images", "1",
                      "--output", str(tmp_path / "m.tflite")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "argmax agreement = 100.00%" in result.stdout
    # the TFLite converter's C++ INFO lines and LiteRT's "Created TensorFlow Lite XNNPACK delegate" notice
    assert not BANNER.search(result.stderr) and "INFO: " not in result.stderr, result.stderr


def test_int8_export_of_an_untrained_model_warns_and_stays_quiet(tmp_path):
    """A model whose classes are barely separated (as an undertrained one's): int8 flips many argmaxes, and the
    report must say so. Here classes 0 and 1 get classifier weights 0.1 % apart, so their logits nearly tie."""
    pytest.importorskip("ai_edge_litert")
    from gsto_tf.data import ensure_synthetic
    from gsto_tf.models import build

    model = build("hrnetv2_w18_small_v1", 8)
    classifier = [layer for layer in model.layers if hasattr(layer, "kernel")][-1]
    kernel, bias = (np.array(w) for w in classifier.get_weights())
    kernel[..., 1] = kernel[..., 0] * 1.001
    bias[:2] = bias[2:].max() + 10.0  # classes 0 and 1 win everywhere, by a hair between them
    classifier.set_weights([kernel, bias])
    model.save(tmp_path / "untrained.keras")
    data = ensure_synthetic(str(tmp_path / "data"), height=64, width=128, train=2, val=4)
    result = run_cli(["export", "--checkpoint", str(tmp_path / "untrained.keras"), "--format", "tflite",
                      "--quantize", "int8", "--input-size", "64x128", "--dataset", "synthetic", "--data-dir", data,
                      "--num-images", "4", "--output", str(tmp_path / "m.tflite")])
    assert result.returncode == 0, result.stderr[-3000:]
    agreement = float(re.search(r"argmax agreement = ([\d.]+)%", result.stdout).group(1))
    assert agreement < 97
    assert "WARNING: argmax agreement is below the 97 % that a trained model keeps with --quantize int8" in result.stdout
    assert "calibrating on 4 images may also be too few" in result.stdout
    # the ops of the file, not the interpreter's execution plan (XNNPACK shows its share as one DELEGATE node)
    ops = re.search(r"builtin ops in the file: ([A-Z_0-9, ]+);", result.stdout).group(1).split(", ")
    assert "CONV_2D" in ops and "QUANTIZE" in ops and "DELEGATE" not in ops
    # the converter's quantizer settings line is not printed
    assert "fully_quantize" not in result.stderr + result.stdout and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("command", sorted(__import__("gsto_tf.cli", fromlist=["SUBCOMMANDS"]).SUBCOMMANDS))
def test_every_argument_of_every_command_has_a_help_text(command):
    import argparse

    from gsto_tf.cli import build_parser

    parser = build_parser("gsto-tf", command)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    parsers = [commands[command]]
    parsers += [p for a in commands[command]._actions if isinstance(a, argparse._SubParsersAction)
                for p in a.choices.values()]
    silent = [(p.prog, a.option_strings or a.dest) for p in parsers for a in p._actions
              if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not silent, silent
