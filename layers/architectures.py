"""Architecture builders and their trunks (the ordered modules up to the last conv stage).

Builders create the full classification network (random init) so that a checkpoint loads strictly;
`trunk_modules` then lists the modules a feature extractor runs, in order, leaving heads out.
torchvision provides every architecture except EfficientNet-Lite (see layers/efficientnet_lite.py).
"""
from __future__ import annotations

from typing import Callable

import torchvision.models as tvm
from torch import nn

from hub.errors import RegistryError

from .efficientnet_lite import efficientnet_lite0

_TORCHVISION = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "mobilenet_v3_small",
    "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "convnext_tiny", "regnet_y_800mf", "densenet121", "vgg16_bn",
]
BUILDERS: dict[str, Callable[[], nn.Module]] = {f"torchvision.{n}": (lambda n=n: getattr(tvm, n)(weights=None)) for n in _TORCHVISION}
BUILDERS["convhub.efficientnet_lite0"] = efficientnet_lite0


def build(architecture: str) -> nn.Module:
    """A randomly initialised full network for `architecture` (a key of BUILDERS)."""
    try:
        return BUILDERS[architecture]()
    except KeyError:
        raise RegistryError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(BUILDERS))}") from None


def trunk_modules(architecture: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of the convolutional trunk in execution order, named by their path in `model`."""
    name = architecture.split(".", 1)[1]
    if name.startswith("resnet"):
        return [(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")]
    if name.startswith("regnet"):
        return [("stem", model.stem)] + [(f"trunk_output.{n}", m) for n, m in model.trunk_output.named_children()]
    if name.startswith("efficientnet_lite"):
        return [("stem", model.stem)] + [(f"blocks.{n}", m) for n, m in model.blocks.named_children()] + [("head", model.head)]
    mods = [(f"features.{n}", m) for n, m in model.features.named_children()]
    if name.startswith("densenet"):
        mods.append(("relu", nn.ReLU()))  # torchvision applies F.relu after features.norm5 in forward()
    return mods
