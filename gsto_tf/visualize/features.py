"""Access to HRNet branch features for the scale-confusion figure."""

import re

import keras

_FUSED = re.compile(r"^stage4\.(\d+)\.fuse\.(\d+)\.relu$")


def branch_features(model):
    """A model: image -> the four stage-4 branch outputs (strides 4..32) of an HRNetV2 / GSTO-HRNet model."""
    last = {}
    for layer in model.layers:
        m = _FUSED.match(layer.name)
        if m:
            module, branch = int(m.group(1)), int(m.group(2))
            if module >= last.get(branch, (-1, None))[0]:
                last[branch] = (module, layer)
    if not last:
        raise ValueError(f"model '{model.name}' has no HRNet stage-4 branches")
    outputs = [last[b][1].output for b in sorted(last)]
    return keras.Model(model.input, outputs, name=f"{model.name}_branches")
