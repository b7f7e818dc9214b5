"""HRNet stage specs (mmseg-style per-stage dicts; numbers from the official HRNet configs).

``stage1`` is the Bottleneck ``layer1``; stages 2-4 are HighResolutionModules of BasicBlocks.
"""

import copy


def _stage(num_modules, num_blocks, num_channels, block="BASIC"):
    return {
        "num_modules": num_modules,
        "num_branches": len(num_channels),
        "block": block,
        "num_blocks": list(num_blocks),
        "num_channels": list(num_channels),
    }


def _width(c):
    return {
        "stage1": _stage(1, [4], [64], "BOTTLENECK"),
        "stage2": _stage(1, [4, 4], [c, 2 * c]),
        "stage3": _stage(4, [4, 4, 4], [c, 2 * c, 4 * c]),
        "stage4": _stage(3, [4, 4, 4, 4], [c, 2 * c, 4 * c, 8 * c]),
    }


HRNET_SPECS = {
    "w18_small_v1": {
        "stage1": _stage(1, [1], [32], "BOTTLENECK"),
        "stage2": _stage(1, [2, 2], [16, 32]),
        "stage3": _stage(1, [2, 2, 2], [16, 32, 64]),
        "stage4": _stage(1, [2, 2, 2, 2], [16, 32, 64, 128]),
    },
    "w18_small_v2": {
        "stage1": _stage(1, [2], [64], "BOTTLENECK"),
        "stage2": _stage(1, [2, 2], [18, 36]),
        "stage3": _stage(3, [2, 2, 2], [18, 36, 72]),
        "stage4": _stage(2, [2, 2, 2, 2], [18, 36, 72, 144]),
    },
    "w18": _width(18),
    "w32": _width(32),
    "w48": _width(48),
}


def get_hrnet_spec(name):
    """A copy of the named spec, or a ValueError listing the valid names."""
    if isinstance(name, dict):
        return copy.deepcopy(name)
    if name not in HRNET_SPECS:
        raise ValueError(f"unknown HRNet spec {name!r}; valid names: {sorted(HRNET_SPECS)}")
    return copy.deepcopy(HRNET_SPECS[name])
