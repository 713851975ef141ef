"""EfficientNet-Lite (Google's mobile variant: no squeeze-excite, ReLU6, fixed stem/head widths).

torchvision has no EfficientNet-Lite, and timm's parameter names differ from the checkpoint we ship
against, so this small module is ours. Padding is symmetric (PyTorch style); the real-photo test in
tests/layers proves the checkpoint and this definition agree.
"""
from __future__ import annotations

import torch
from torch import nn

# (repeats, kernel, stride, expand ratio, out channels) per stage, lite0 (width 1.0, depth 1.0)
LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
BN_EPS = 1e-3  # the TensorFlow-trained weights' BatchNorm epsilon


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid, 1) if expand != 1 else None
        self.dw = conv_bn(mid, mid, k, stride, groups=mid)
        self.project = conv_bn(mid, cout, 1, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """stem -> 16 MBConv blocks -> 1x1 head (1280) -> pool -> classifier."""

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2)
        blocks, cin = [], 32
        for repeats, k, stride, expand, cout in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, 1280, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(x.mean((2, 3))))


def efficientnet_lite0() -> EfficientNetLite:
    return EfficientNetLite(LITE0_STAGES)
