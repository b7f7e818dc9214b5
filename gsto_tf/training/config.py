"""Experiment configuration: dataclasses, the published recipes, YAML and ``--set key=value`` overrides.

Precedence: the recipe of the dataset's card (:mod:`gsto_tf.data.card`) < ``--config file.yaml`` < command-line flags < ``--set section.key=value``.
The resolved config is written to ``<run_dir>/config.yaml``.
"""

import dataclasses
import math
import os
import typing
from typing import Optional

import yaml

from gsto_tf.atomic import write_atomically
from gsto_tf.checkpoints.zoo import resolve_checkpoint
from gsto_tf.user_input import YAMLInputError, did_you_mean, load_yaml, shorten, size_or_none

# tf.distribute strategies by name, made by gsto_tf.training.distribute.make_strategy (`--strategy`, train.strategy).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# Keras mixed-precision policies a run may use (`--mixed-precision`, train.mixed_precision; None: float32).
MIXED_PRECISION_POLICIES = ("mixed_bfloat16", "mixed_float16")
# Bounds that catch typos (an extra zero) before a run starts and fails hours later out of memory: far above any
# published recipe (crops of 1024x2048 at most, global batches of 16 to 64).
MAX_CROP_SIDE = 8192
MAX_GLOBAL_BATCH = 4096


@dataclasses.dataclass
class DataConfig:
    dataset: str = "synthetic"  # a built-in dataset name or the path of a dataset card (.yaml)
    data_dir: Optional[str] = None  # synthetic: generated into the cache when None
    crop_size: Optional[list] = None  # [h, w]; None = the card's default
    scale_range: Optional[list] = None  # [lo, hi]; None = the card's default
    base_size: Optional[int] = None  # long side at scale 1; None = the card's default (none: the image's own)
    photometric: bool = False
    # Splits of the card to train on and to evaluate on during and after training (e.g. a split held out by
    # video sequence for tuning, or train + val for a final run).
    train_split: str = "train"
    val_split: str = "val"


@dataclasses.dataclass
class ModelConfig:
    name: str = "gsto_hrnet_w18_small_v2"
    # Keyword arguments of the model's builder, passed to `build(name, num_classes, **options)` as they are, e.g.
    # {"gate_style": "paper"} or {"gsto_parts": ["fusion_gates"]} for GSTO-HRNet, {"output_stride": 16} for a
    # ResNet context head. `sync_batchnorm` is set by the trainer from the number of replicas.
    options: dict = dataclasses.field(default_factory=dict)
    # official ImageNet HRNet .pth / .npz (backbone keys), or a model trained here (.keras / zoo name: fine-tuning)
    pretrained: Optional[str] = None


@dataclasses.dataclass
class TrainConfig:
    global_batch_size: int = 8  # over all replicas (per-replica = global / replicas)
    lr: float = 0.01
    weight_decay: float = 5e-4  # coupled (L2 on the gradient), like PyTorch SGD
    momentum: float = 0.9
    lr_power: float = 0.9
    epochs: Optional[int] = None  # dataset epochs; `steps` wins when both are set
    steps: Optional[int] = None
    class_weights: bool = False  # weight the loss with the card's class_weights
    ohem: bool = False
    ohem_thresh: float = 0.9
    ohem_min_kept: int = 131072
    seed: int = 0
    mixed_precision: Optional[str] = None  # None, "mixed_bfloat16" (CPU) or "mixed_float16" (GPU)
    strategy: str = "auto"  # one of STRATEGIES
    checkpoint_every: int = 50  # steps between resumable backups (one Keras "epoch" of the progress bar)
    eval_every: int = 0  # evaluate + keep best.keras every N backups (0: only at the end)


@dataclasses.dataclass
class EvalConfig:
    single_scale: bool = False  # --ss: one scale, no flip (reported as such)
    limit: Optional[int] = None  # evaluate only the first N validation images
    # PreciseBN (gsto_tf/training/precise_bn.py): before every evaluation and before final.keras is written,
    # re-estimate the BN statistics as the average batch statistics over this many augmented training batches,
    # weights frozen. 0: off (the running averages of training are used as they are).
    precise_bn_batches: int = 0


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path):
        def write(tmp):
            with open(tmp, "w") as f:
                yaml.safe_dump(self.to_dict(), f, sort_keys=False)

        write_atomically(path, write)


# The recipe of a dataset card that sets none of these (docs/data.md); the card's recipe is merged over it. The
# augmentation defaults (crop, scales, base size) are gsto_tf.data.pipeline.AUGMENTATION_DEFAULTS.
CARD_RECIPE_DEFAULTS = {"train": {"epochs": 100}}


def _merge(config, overrides, where):
    for section, values in overrides.items():
        if not hasattr(config, section) or not dataclasses.is_dataclass(getattr(config, section)):
            raise ConfigError(f"{where}: unknown config section {section!r}; "
                              f"{did_you_mean(section, ('data', 'model', 'train', 'eval'))}valid: data, model, train, eval")
        target = getattr(config, section)
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {shorten(values)}")
        names = {f.name for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in names:
                raise ConfigError(f"{where}: unknown key {section}.{key}; {did_you_mean(key, names)}valid: "
                                  f"{sorted(names)}")
            current = getattr(target, key)
            if isinstance(current, dict):
                # Mapping fields (model.options) merge key by key, so a later source changes one option only.
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: {section}.{key} must be a mapping, got {shorten(value)}")
                value = {**current, **value}
            setattr(target, key, value)


def parse_set(items):
    """``["train.lr=0.01", "model.options.gate_style=paper"]`` -> nested dict; values parsed as YAML.

    A key with more than one dot sets an entry of a mapping field (``model.options.<option>``).
    """
    out = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set: expected section.key=value (e.g. train.lr=0.01), got {shorten(item)}")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set: empty name in {key!r}; expected section.key=value (e.g. train.lr=0.01)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set: {key!r} sets an entry inside a value that is not a mapping")
        try:
            node[parts[-1]] = load_yaml(value, f"--set {key}")
        except YAMLInputError as exc:
            raise ConfigError(str(exc)) from None
    return out


class ConfigError(ValueError):
    """A configuration value has the wrong type or range; the message names every offending key."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(number):
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an int beyond float's range
        return False


def _coerce(key, value, annotation):
    """``value`` as the field's type, or a problem sentence. YAML 1.1 reads ``1e-3`` as a string, so numeric strings
    are accepted for float fields; ints are never silently truncated."""
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    if optional:
        if value is None:
            return None, None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None, f"{key} must be a number, got {shorten(value)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            return None, f"{key} must be a finite number, got {shorten(value)}"
        return float(value), None
    if annotation is int:
        if not _is_int(value):
            return None, f"{key} must be an integer, got {shorten(value)}"
        return value, None
    if annotation is bool:
        if not isinstance(value, bool):
            return None, f"{key} must be true or false, got {shorten(value)}"
        return value, None
    if annotation is str:
        if not isinstance(value, str) or not value:
            return None, f"{key} must be a non-empty string, got {shorten(value)}"
        return value, None
    if annotation in (list, dict):
        if not isinstance(value, annotation):
            return None, f"{key} must be a {'list' if annotation is list else 'mapping'}, got {shorten(value)}"
        return value, None
    raise TypeError(f"no type rule for config field {key} ({annotation})")


def _pair(key, value, positive_ints):
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 2
    if positive_ints:
        ok = ok and all(_is_int(v) and 0 < v <= MAX_CROP_SIDE for v in value)
        return None if ok else f"{key} must be two integers [h, w] in [1, {MAX_CROP_SIDE}], got {shorten(value)}"
    ok = ok and all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in value)
    ok = ok and 0 < value[0] <= value[1]
    return None if ok else f"{key} must be [lo, hi] with 0 < lo <= hi, got {shorten(value)}"


def _range_problems(config):
    """Range rules of the fields whose type is already right: (key, ok, what is expected)."""
    t, d, e = config.train, config.data, config.eval
    rules = [
        ("train.global_batch_size", 1 <= t.global_batch_size <= MAX_GLOBAL_BATCH,
         f"an integer in [1, {MAX_GLOBAL_BATCH}]"),
        ("train.lr", t.lr > 0, "a positive number"),
        ("train.weight_decay", t.weight_decay >= 0, "a number >= 0"),
        ("train.momentum", 0 <= t.momentum < 1, "a number in [0, 1)"),
        ("train.lr_power", t.lr_power >= 0, "a number >= 0"),
        ("train.epochs", t.epochs is None or t.epochs >= 1, "an integer >= 1 (or null)"),
        ("train.steps", t.steps is None or t.steps >= 1, "an integer >= 1 (or null)"),
        ("train.ohem_thresh", 0 < t.ohem_thresh <= 1, "a probability in (0, 1]"),
        ("train.ohem_min_kept", t.ohem_min_kept >= 1, "an integer >= 1"),
        ("train.seed", 0 <= t.seed < 2**32, "an integer in [0, 2**32)"),
        ("train.mixed_precision", t.mixed_precision in (None, *MIXED_PRECISION_POLICIES),
         f"null, {' or '.join(MIXED_PRECISION_POLICIES)}"),
        ("train.strategy", t.strategy in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
        ("train.checkpoint_every", t.checkpoint_every >= 1, "an integer >= 1"),
        ("train.eval_every", t.eval_every >= 0, "an integer >= 0"),
        ("eval.limit", e.limit is None or e.limit >= 1, "an integer >= 1 (or null)"),
        ("eval.precise_bn_batches", e.precise_bn_batches >= 0, "an integer >= 0 (0 = off)"),
    ]
    problems = [f"{key} must be {expected}, got {shorten(_get(config, key))}" for key, ok, expected in rules if not ok]
    if t.steps is None and t.epochs is None:
        problems.append("train.steps or train.epochs must be set")
    problems += [p for p in (_pair("data.crop_size", d.crop_size, True), _pair("data.scale_range", d.scale_range,
                                                                                  False)) if p]
    if d.base_size is not None and d.base_size < 1:
        problems.append(f"data.base_size must be an integer >= 1 (or null), got {shorten(d.base_size)}")
    if not all(isinstance(k, str) for k in config.model.options):
        problems.append(f"model.options must map option names to values, got {shorten(config.model.options)}")
    return problems


def _get(config, key):
    section, name = key.split(".", 1)
    return getattr(getattr(config, section), name)


def validate_config(config):
    """Check (and normalise) every value's type and range, the dataset, the model name and the pretrained file.

    Raises :class:`ConfigError` naming every offending key, before anything is built or written.
    """
    problems = []
    if isinstance(config.data.crop_size, str):  # "HxW", as sizes are written on the command line
        size = size_or_none(config.data.crop_size)
        if size is None:
            raise ConfigError(f"data.crop_size must be HxW or [h, w] (positive integers), got "
                              f"{shorten(config.data.crop_size)}")
        config.data.crop_size = list(size)
    for section in dataclasses.fields(config):
        target = getattr(config, section.name)
        hints = typing.get_type_hints(type(target))
        for field in dataclasses.fields(target):
            key = f"{section.name}.{field.name}"
            value, problem = _coerce(key, getattr(target, field.name), hints[field.name])
            if problem:
                problems.append(problem)
            else:
                setattr(target, field.name, value)
    if problems:  # range rules need the right types
        raise ConfigError("; ".join(problems))
    problems = _range_problems(config)
    from gsto_tf.data.registry import get_dataset_spec

    try:
        get_dataset_spec(config.data.dataset)
    except ValueError as exc:
        problems.append(f"data.dataset: {exc}")
    from gsto_tf.models import available_models

    if config.model.name not in available_models():
        hint = did_you_mean(config.model.name, available_models())
        problems.append(f"model.name: unknown model {shorten(config.model.name)}; {hint}`counts --all` lists every name")
    if config.model.pretrained is not None and not os.path.isfile(resolve_checkpoint(config.model.pretrained)):
        problems.append(f"model.pretrained: neither a file nor a zoo model: {config.model.pretrained}")
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def make_config(dataset="synthetic", yaml_path=None, overrides=None, sets=None):
    """The recipe of ``dataset``'s card (a built-in name or a card path), then the YAML file, then ``overrides`` (a
    nested dict), then ``--set`` items."""
    from gsto_tf.data.registry import get_dataset_spec

    spec = get_dataset_spec(dataset)
    config = ExperimentConfig()
    _merge(config, CARD_RECIPE_DEFAULTS, "card recipe defaults")
    _merge(config, spec.recipe_sections(), f"dataset card {spec.card}: recipe")
    config.data.dataset = dataset
    if yaml_path:
        if not os.path.isfile(yaml_path):
            raise ConfigError(f"--config: file not found: {yaml_path}")
        try:
            with open(yaml_path, encoding="utf-8") as f:
                loaded = load_yaml(f, f"--config {yaml_path}") or {}
        except YAMLInputError as exc:
            raise ConfigError(str(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--config {yaml_path}: cannot be read ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {yaml_path}: expected a mapping of sections, got {type(loaded).__name__}")
        _merge(config, loaded, yaml_path)
    if overrides:
        _merge(config, overrides, "command line")
    if sets:
        _merge(config, parse_set(sets), "--set")
    return validate_config(config)
