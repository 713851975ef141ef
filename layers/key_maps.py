"""Checkpoint adapters: rename the keys of checkpoints from other code bases to our architectures."""
from __future__ import annotations

import re
from typing import Callable

import torch

StateDict = dict[str, torch.Tensor]

_LUKEMELAS_RULES = [
    (r"^_conv_stem\.", "stem.0."), (r"^_bn0\.", "stem.1."),
    (r"^_conv_head\.", "head.0."), (r"^_bn1\.", "head.1."),
    (r"^_fc\.", "classifier."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."), (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.dw.0."), (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.dw.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."), (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
]


def lukemelas_efficientnet(sd: StateDict) -> StateDict:
    """lukemelas/EfficientNet-PyTorch names (`_conv_stem`, `_blocks.N._depthwise_conv`) -> layers.efficientnet_lite."""
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _LUKEMELAS_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = value
    return out


def identity(sd: StateDict) -> StateDict:
    return dict(sd)


KEY_MAPS: dict[str, Callable[[StateDict], StateDict]] = {
    "identity": identity,
    "lukemelas_efficientnet": lukemelas_efficientnet,
}
