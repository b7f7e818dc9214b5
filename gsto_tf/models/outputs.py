"""Names of model outputs and the loss weight each one gets in training.

Every gsto_tf segmentation model returns a dict. ``"logits"`` is the final prediction; the other keys are
auxiliary predictions used only for training (deep supervision). Keeping names and weights here means the
models, the loss and the docs cannot disagree.
"""

import keras

FINAL_LOGITS = "logits"

# GSTO-HRNet (official GSTO utils/utils.py FullModel): loss = CE(final) + 0.5 CE(stage-3 aux)
# + 0.3 CE(stage-2 aux).
AUX_STAGE3 = "aux_stage3"
AUX_STAGE2 = "aux_stage2"
# PSPNet / DeepLab-style heads: the standard FCN auxiliary head on stage-3 features (weight 0.4).
AUX_FCN = "aux_fcn"
# PPM / ASPP "w/ sup" variants: the class-score map P predicted from the head's input (GSTO paper eq. 5), supervised
# by the ground truth; in "gsto_sup" it drives the gates. No published weight: 0.4 = the weight of the FCN aux head
# on the same (stride-8) features, inside GSTO-HRNet's 0.3-0.5 range for its class-map predictors.
AUX_CLASS_MAP = "aux_class_map"

AUX_LOSS_WEIGHTS = {
    FINAL_LOGITS: 1.0,
    AUX_STAGE3: 0.5,
    AUX_STAGE2: 0.3,
    AUX_FCN: 0.4,
    AUX_CLASS_MAP: 0.4,
}


def final_logits(outputs):
    """The final logits among a model's outputs: the ``"logits"`` entry of a dict, the first of a list / tuple,
    or the tensor itself (symbolic or eager)."""
    if isinstance(outputs, dict):
        return outputs[FINAL_LOGITS]
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


def loss_weight(output_name):
    """Loss weight of a model output; raises for names that have none registered."""
    try:
        return AUX_LOSS_WEIGHTS[output_name]
    except KeyError:
        raise KeyError(
            f"no loss weight registered for model output '{output_name}'; "
            f"known outputs: {sorted(AUX_LOSS_WEIGHTS)} (see gsto_tf/models/outputs.py)"
        ) from None


def logits_dtype():
    """dtype of the layers that produce logits, from the global dtype policy at build time.

    float32, also under a mixed-precision policy (a stable softmax and loss), unless the policy keeps its variables
    in float64: a float64 model keeps float64 logits.
    """
    return "float64" if keras.config.dtype_policy().variable_dtype == "float64" else "float32"
