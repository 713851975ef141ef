"""The backend interface shared by torch, ONNX Runtime and TVM."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

POOLED = "pooled"


class Backend(ABC):
    """Runs one model. `outputs` are the names it can return: "pooled" and stage names."""

    kind: str = ""
    target: str = "cpu"
    max_batch: int = 64

    def __init__(self, model: str, stages: Sequence[str]):
        self.model = model
        self.stages = tuple(stages)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (POOLED, *self.stages)

    @abstractmethod
    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """x: float32 (N, 3, H, W) -> {name: array} for each requested output name."""

    def instance(self) -> "Backend":
        """A handle for one more compute thread (serve's `workers.compute_instances`). The default shares this
        one: ONNX Runtime sessions and torch modules in inference mode may run from several threads at once."""
        return self

    def close(self) -> None:
        """Release sessions/modules (optional)."""

    def handles(self, instances: int) -> list["Backend"]:
        """This backend plus `instances - 1` more handles, one per compute thread (each may close)."""
        return [self] + [self.instance() for _ in range(instances - 1)]

    def describe(self) -> dict:
        return {"backend": self.kind, "target": self.target, "max_batch": self.max_batch}


def needed_stages(outputs: Sequence[str], stages: Sequence[str]) -> list[str]:
    """Stage maps to compute: the requested ones, plus the deepest stage when "pooled" is asked."""
    want = {o for o in outputs if o != POOLED}
    if POOLED in outputs:
        want.add(stages[-1])
    return [s for s in stages if s in want]


def pooled_from(last_stage: np.ndarray) -> np.ndarray:
    """Global average of the deepest stage, as hub.load(output='pooled') computes it."""
    return last_stage.mean(axis=(2, 3), dtype=np.float32)
