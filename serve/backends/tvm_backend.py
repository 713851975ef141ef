"""TVM backend: a compiled artifact directory loaded with compile.load(DIR)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BackendError
from .base import POOLED, Backend, pooled_from


class TvmBackend(Backend):
    """Runs `compile.load(DIR)`; its outputs come from the artifact (a dict of stages, or one array)."""

    kind = "tvm"

    def __init__(self, model: str, artifact: Path, stages: Sequence[str], *, threads: int | None = None):
        # TVM runs on one thread unless told before import (DESIGN.md)
        os.environ.setdefault("TVM_NUM_THREADS", str(threads or os.cpu_count() or 1))
        try:
            from compile import load
        except ImportError as exc:
            raise BackendError(f"TVM artifacts need compile.load, which is not available ({exc})") from None
        if not Path(artifact).is_dir():
            raise BackendError(f"TVM artifact {artifact} is not a directory (make one with `convhub compile`)")
        try:
            self.fn = load(artifact)
        except Exception as exc:
            raise BackendError(f"compile.load({artifact}) failed: {exc}") from exc
        self.manifest = dict(getattr(self.fn, "manifest", {}) or {})
        art_model = self.manifest.get("model")
        if art_model and art_model != model:
            raise BackendError(f"artifact {artifact} was compiled for {art_model!r}, not {model!r}")
        super().__init__(model, stages)
        self.max_batch = int(getattr(self.fn, "max_batch", 1) or 1)
        self.artifact = Path(artifact)
        self.target = str(self.manifest.get("target", "unknown target"))
        self._single = None

    @property
    def outputs(self) -> tuple[str, ...]:
        out = self.manifest.get("output")
        if out == POOLED:
            return (POOLED,)
        return super().outputs

    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        got = self.fn(x)
        if not isinstance(got, dict):
            # one array: the artifact's pooled embedding, or its deepest stage
            arr = np.asarray(got)
            got = {POOLED: arr} if arr.ndim == 2 else {self.stages[-1]: arr}
        res = {}
        for o in outputs:
            if o in got:
                res[o] = np.asarray(got[o])
            elif o == POOLED and self.stages[-1] in got:
                res[o] = pooled_from(np.asarray(got[self.stages[-1]]))
            else:
                raise BackendError(f"TVM artifact {self.artifact} does not produce output {o!r}")
        return res
