"""Segmentation models: HRNetV2, GSTO-HRNet, PPM / ASPP heads."""

from gsto_tf.models.outputs import AUX_LOSS_WEIGHTS, FINAL_LOGITS

__all__ = ["AUX_LOSS_WEIGHTS", "FINAL_LOGITS"]
