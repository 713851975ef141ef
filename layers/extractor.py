"""FrozenFeatures: run a trunk, return named multi-stage feature maps (or a pooled embedding)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from hub.errors import InputShapeError

from .frozen import INERT_IN_TRAINING

Output = Literal["features", "pooled"]


@dataclass(frozen=True)
class StageInfo:
    """One output stage: its name, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int

    def as_dict(self) -> dict:
        return asdict(self)


class FeatureInfo(list):
    """List of StageInfo with column accessors (like timm's FeatureInfo)."""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self]

    @property
    def channels(self) -> list[int]:
        return [s.channels for s in self]

    @property
    def strides(self) -> list[int]:
        return [s.stride for s in self]


class FrozenFeatures(nn.Module):
    """Frozen convolutional trunk with per-stage outputs.

    forward(x: N x 3 x H x W float) -> {stage: N x C x H/s x W/s} (output="features", shallow to deep)
                                     -> N x C pooled last stage     (output="pooled")
    """

    def __init__(self, modules: list[tuple[str, nn.Module]], taps: dict[str, str], feature_info: FeatureInfo,
                 output: Output, *, model_name: str = "", min_size: int = 32):
        super().__init__()
        last = max(i for i, (n, _) in enumerate(modules) if n in taps)
        kept = modules[: last + 1]  # modules after the deepest requested stage never run
        self.body = nn.ModuleList([m for _, m in kept])
        self.node_names = [n for n, _ in kept]
        self._taps = {i: taps[n] for i, (n, _) in enumerate(kept) if n in taps}
        self.feature_info = feature_info
        self.output = output
        self.model_name = model_name
        self.min_size = min_size

    def forward(self, x: torch.Tensor):
        if not torch.compiler.is_compiling():
            self._check_input(x)
        feats: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.body):
            x = module(x)
            if i in self._taps:
                feats[self._taps[i]] = x
        if self.output == "pooled":
            return feats[self.feature_info[-1].name].mean((2, 3))
        return feats

    def train(self, mode: bool = True) -> "FrozenFeatures":
        # Dropout and stochastic depth stay inert: a frozen extractor gives the same output in train mode.
        super().train(mode)
        for m in self.modules():
            if isinstance(m, INERT_IN_TRAINING):
                m.eval()
        return self

    def _check_input(self, x) -> None:
        expected = f"a float tensor of shape (N, 3, H, W) with H, W >= {self.min_size}"
        if not isinstance(x, torch.Tensor):
            raise InputShapeError(f"{self.model_name}: expected {expected}, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
            raise InputShapeError(f"{self.model_name}: expected {expected}, got shape {tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise InputShapeError(f"{self.model_name}: expected {expected}, got dtype {x.dtype} (use hub.transforms(name))")
        if x.shape[2] < self.min_size or x.shape[3] < self.min_size:
            raise InputShapeError(f"{self.model_name}: expected {expected}, got spatial size {tuple(x.shape[2:])}")
        p = next(self.parameters(), None)
        if p is not None and x.dtype != p.dtype:
            raise InputShapeError(f"{self.model_name}: input dtype {x.dtype} does not match the weights' {p.dtype}; "
                                  f"cast with x.to({p.dtype})")

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, output={self.output!r}, stages={self.feature_info.names}"
