"""PyTorch eager backend: hub.load(...) in inference mode."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

import hub

from .base import POOLED, Backend


class TorchBackend(Backend):
    """hub.load(model, output="features") on CPU; pooled is the mean of the deepest stage (as in hub)."""

    kind = "torch"

    def __init__(self, model: str, *, threads: int | None = None, module: torch.nn.Module | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.module = module if module is not None else hub.load(model, output="features", progress=False)
        self.module.eval()
        super().__init__(model, self.module.feature_info.names)
        self.target = f"cpu ({torch.get_num_threads()} threads, torch {torch.__version__.split('+')[0]})"
        self.max_batch = 256

    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            feats = self.module(torch.from_numpy(x))
            res = {}
            for name in outputs:
                t = feats[self.stages[-1]].mean((2, 3)) if name == POOLED else feats[name]
                res[name] = t.numpy()
            return res

    def close(self) -> None:
        self.module = None
