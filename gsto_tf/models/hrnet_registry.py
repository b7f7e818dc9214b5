"""Registers HRNetV2 and GSTO-HRNet names in the model factory."""

import functools

from gsto_tf.models.factory import register_model
from gsto_tf.models.hrnet import build_hrnet
from gsto_tf.models.hrnet_specs import HRNET_SPECS


def _builder(spec, gsto, model_name, num_classes, **options):
    options.setdefault("name", model_name)
    return build_hrnet(spec, num_classes, gsto=gsto, **options)


for _spec in HRNET_SPECS:
    for _family, _gsto in (("hrnetv2", False), ("gsto_hrnet", True)):
        _name = f"{_family}_{_spec}"
        register_model(_name)(functools.partial(_builder, _spec, _gsto, _name))
