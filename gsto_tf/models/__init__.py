"""Segmentation models: HRNetV2, GSTO-HRNet, PPM / ASPP heads. Start with :func:`build`.

Checkpoints (official `.pth`, `.keras`) load with :mod:`gsto_tf.checkpoints`, which builds on this package.
"""

from gsto_tf.models.context_models import build_context_model
from gsto_tf.models.factory import available_models, build, inference_model, register_model
from gsto_tf.models.gates import gate_layer_names, gate_model
from gsto_tf.models.hrnet import build_hrnet, build_hrnet_backbone, hrnet_features
from gsto_tf.models.outputs import AUX_LOSS_WEIGHTS, FINAL_LOGITS
from gsto_tf.models.resnet import build_resnet_backbone

__all__ = [
    "AUX_LOSS_WEIGHTS",
    "FINAL_LOGITS",
    "available_models",
    "build",
    "build_context_model",
    "build_hrnet",
    "build_hrnet_backbone",
    "build_resnet_backbone",
    "gate_layer_names",
    "gate_model",
    "hrnet_features",
    "inference_model",
    "register_model",
]
