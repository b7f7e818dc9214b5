import pytest
import yaml

from gsto_tf.data import get_dataset_spec
from gsto_tf.training.config import make_config, parse_set


def test_recipes_reproduce_published_iterations():
    per_epoch = {"cityscapes": 2975, "pascal_context": 4998, "pascal_context_60": 4998, "lip": 30462}
    expected = {"cityscapes": 119_548, "pascal_context": 62_400, "pascal_context_60": 62_400, "lip": 114_150}
    for name, images in per_epoch.items():
        c = make_config(name)
        assert c.train.epochs * (images // c.train.global_batch_size) == expected[name]
    c = make_config("cityscapes")
    assert (c.train.lr, c.train.weight_decay, c.train.global_batch_size, c.train.class_weights) == (0.01, 5e-4, 12, True)
    assert make_config("lip").train.lr == 0.007 and make_config("pascal_context").train.lr == 0.004


def test_precedence_recipe_yaml_flags_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.5, "seed": 7}, "data": {"crop_size": [64, 64]}}))
    c = make_config("synthetic", str(path), {"train": {"seed": 9}}, ["train.lr=0.25", "eval.single_scale=true"])
    assert (c.train.lr, c.train.seed, c.data.crop_size, c.eval.single_scale) == (0.25, 9, [64, 64], True)
    assert c.model.name == get_dataset_spec("synthetic").recipe["model"]["name"] == "gsto_hrnet_w18_small_v2"


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown key train.learning_rate"):
        make_config("synthetic", sets=["train.learning_rate=1"])
    with pytest.raises(ValueError, match="expected section.key=value"):
        parse_set(["lr=1"])
    with pytest.raises(ValueError, match="file not found"):
        make_config("synthetic", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="unknown dataset 'ade20k'; built-in: camvid, cityscapes"):
        make_config("ade20k")


def test_model_options_reach_the_built_model():
    from gsto_tf.training.trainer import build_model

    c = make_config("synthetic", sets=["model.options.gsto_parts=[fusion_gates, aux_heads]"])
    assert c.model.options == {"gsto_parts": ["fusion_gates", "aux_heads"]}
    model = build_model(c, 8)
    assert sorted(model.output) == ["aux_stage2", "aux_stage3", "logits"]
    assert not [layer for layer in model.layers if layer.name.startswith(("att2.", "att3."))]
    # Any builder keyword gets through, not only a fixed list: an unknown one is the builder's error.
    c = make_config("synthetic", sets=["model.name=pspnet_resnet50", "model.options.output_stride=16",
                                       "model.options.blocks=[1,1,1,1]", "model.options.base_channels=8",
                                       "model.options.head_channels=8"])
    model = build_model(c, 3)
    assert model.output["logits"].shape[-1] == 3
    assert build_model(c, 3, replicas=2).get_layer("decode_head.bottleneck.bn").synchronized


def test_mapping_options_merge_key_by_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"options": {"gate_style": "paper", "gsto_parts": ["aux_heads"]}}}))
    c = make_config("synthetic", str(path), sets=["model.options.gate_style=official"])
    assert c.model.options == {"gate_style": "official", "gsto_parts": ["aux_heads"]}
    assert parse_set(["model.options.a.b=1"]) == {"model": {"options": {"a": {"b": 1}}}}
    with pytest.raises(ValueError, match="model.options must be a mapping"):
        make_config("synthetic", sets=["model.options=paper"])
    with pytest.raises(ValueError, match="empty name"):
        parse_set(["model..x=1"])


def test_precise_bn_on_for_the_main_job_only_and_settable():
    assert make_config("synthetic").eval.precise_bn_batches == 40
    for name in ("cityscapes", "pascal_context", "pascal_context_60", "lip"):
        assert make_config(name).eval.precise_bn_batches == 0
        assert make_config(name, sets=["eval.precise_bn_batches=100"]).eval.precise_bn_batches == 100
    assert make_config("synthetic", sets=["eval.precise_bn_batches=0"]).eval.precise_bn_batches == 0
