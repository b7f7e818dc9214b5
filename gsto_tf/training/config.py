"""Experiment configuration: dataclasses, the published recipes, YAML and ``--set key=value`` overrides.

Precedence: recipe of the dataset < ``--config file.yaml`` < command-line flags < ``--set section.key=value``.
The resolved config is written to ``<run_dir>/config.yaml``.
"""

import dataclasses
import os
from typing import Optional

import yaml

from gsto_tf.atomic import write_atomically


@dataclasses.dataclass
class DataConfig:
    dataset: str = "synthetic"
    data_dir: Optional[str] = None  # synthetic: generated into the cache when None
    crop_size: Optional[list] = None  # [h, w]; None = the dataset's default
    scale_range: Optional[list] = None  # [lo, hi]; None = the dataset's default
    photometric: bool = False


@dataclasses.dataclass
class ModelConfig:
    name: str = "gsto_hrnet_w18_small_v2"
    # Keyword arguments of the model's builder, passed to `build(name, num_classes, **options)` as they are, e.g.
    # {"gate_style": "paper"} or {"gsto_parts": ["fusion_gates"]} for GSTO-HRNet, {"output_stride": 16} for a
    # ResNet context head. `sync_batchnorm` is set by the trainer from the number of replicas.
    options: dict = dataclasses.field(default_factory=dict)
    pretrained: Optional[str] = None  # official ImageNet HRNet .pth / .npz, backbone keys only


@dataclasses.dataclass
class TrainConfig:
    global_batch_size: int = 8  # over all replicas (per-replica = global / replicas)
    lr: float = 0.01
    weight_decay: float = 5e-4  # coupled (L2 on the gradient), like PyTorch SGD
    momentum: float = 0.9
    lr_power: float = 0.9
    epochs: Optional[int] = None  # dataset epochs; `steps` wins when both are set
    steps: Optional[int] = None
    class_weights: bool = False  # Cityscapes: HRNet's 19 class weights
    ohem: bool = False
    ohem_thresh: float = 0.9
    ohem_min_kept: int = 131072
    seed: int = 0
    mixed_precision: Optional[str] = None  # None, "mixed_bfloat16" (CPU) or "mixed_float16" (GPU)
    strategy: str = "auto"  # auto | default | mirrored
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


# The published recipes (HRNet experiments/*.yaml configs). Epoch counts give the published iteration counts:
# Cityscapes 484 x (2975 // 12) = 119,548; PASCAL-Context 200 x (4998 // 16) = 62,400; LIP 150 x (30462 // 40) = 114,150.
RECIPES = {
    "cityscapes": {
        "data": {"dataset": "cityscapes"},
        "model": {"name": "gsto_hrnet_w48"},
        "train": {"global_batch_size": 12, "lr": 0.01, "weight_decay": 5e-4, "epochs": 484, "class_weights": True,
                  "checkpoint_every": 500, "eval_every": 20},
    },
    "pascal_context": {
        "data": {"dataset": "pascal_context"},
        "model": {"name": "gsto_hrnet_w48"},
        "train": {"global_batch_size": 16, "lr": 0.004, "weight_decay": 1e-4, "epochs": 200,
                  "checkpoint_every": 500, "eval_every": 20},
    },
    "lip": {
        "data": {"dataset": "lip"},
        "model": {"name": "gsto_hrnet_w48"},
        "train": {"global_batch_size": 40, "lr": 0.007, "weight_decay": 5e-4, "epochs": 150,
                  "checkpoint_every": 500, "eval_every": 20},
    },
    # The README's main job: a few minutes on 2 CPU cores. 240 steps leave the BN running averages (momentum 0.01)
    # behind the weights, so PreciseBN re-estimates them over one epoch of the 320 training images (40 batches)
    # before evaluating; the long recipes above converge them and keep it off (0), but can set it.
    "synthetic": {
        "data": {"dataset": "synthetic"},
        "model": {"name": "gsto_hrnet_w18_small_v2"},
        "train": {"global_batch_size": 8, "lr": 0.02, "weight_decay": 1e-4, "steps": 240, "checkpoint_every": 40},
        "eval": {"precise_bn_batches": 40},
    },
}


# PASCAL-Context 60 trains exactly like the 59-class variant.
RECIPES["pascal_context_60"] = {**RECIPES["pascal_context"], "data": {"dataset": "pascal_context_60"}}


def _merge(config, overrides, where):
    for section, values in overrides.items():
        if not hasattr(config, section) or not dataclasses.is_dataclass(getattr(config, section)):
            raise ValueError(f"{where}: unknown config section {section!r}; valid: data, model, train, eval")
        target = getattr(config, section)
        if not isinstance(values, dict):
            raise ValueError(f"{where}: section {section!r} must be a mapping, got {values!r}")
        names = {f.name for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"{where}: unknown key {section}.{key}; valid: {sorted(names)}")
            current = getattr(target, key)
            if isinstance(current, dict):
                # Mapping fields (model.options) merge key by key, so a later source changes one option only.
                if not isinstance(value, dict):
                    raise ValueError(f"{where}: {section}.{key} must be a mapping, got {value!r}")
                value = {**current, **value}
            setattr(target, key, value)


def parse_set(items):
    """``["train.lr=0.01", "model.options.gate_style=paper"]`` -> nested dict; values parsed as YAML.

    A key with more than one dot sets an entry of a mapping field (``model.options.<option>``).
    """
    out = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set: expected section.key=value (e.g. train.lr=0.01), got {item!r}")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if not all(parts):
            raise ValueError(f"--set: empty name in {key!r}; expected section.key=value (e.g. train.lr=0.01)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set: {key!r} sets an entry inside a value that is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def make_config(dataset="synthetic", yaml_path=None, overrides=None, sets=None):
    """Recipe of ``dataset``, then the YAML file, then ``overrides`` (a nested dict), then ``--set`` items."""
    if dataset not in RECIPES:
        raise ValueError(f"no recipe for dataset {dataset!r}; valid: {sorted(RECIPES)}")
    config = ExperimentConfig()
    _merge(config, RECIPES[dataset], f"recipe {dataset}")
    if yaml_path:
        if not os.path.isfile(yaml_path):
            raise ValueError(f"--config: file not found: {yaml_path}")
        with open(yaml_path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {yaml_path}: expected a mapping of sections, got {type(loaded).__name__}")
        _merge(config, loaded, yaml_path)
    if overrides:
        _merge(config, overrides, "command line")
    if sets:
        _merge(config, parse_set(sets), "--set")
    return config
