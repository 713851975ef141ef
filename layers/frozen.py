"""Freezing: BatchNorm that cannot change, dropout that does nothing, parameters without gradients."""
from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.stochastic_depth import StochasticDepth

INERT_IN_TRAINING = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, StochasticDepth)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics and epsilon."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.weight.copy_(module.weight.detach())
        frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def set_trainable(modules: list[nn.Module], trainable: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(trainable)
