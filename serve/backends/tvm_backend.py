"""TVM backend: a compiled artifact directory loaded with compile.load(DIR)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

import hub

from ..errors import BackendError
from .base import POOLED, Backend, pooled_from


class TvmBackend(Backend):
    """Runs `compile.load(DIR)`; outputs are the artifact's (stage maps or one pooled tensor)."""

    kind = "tvm"

    def __init__(self, model: str, artifact: Path, stages: Sequence[str], *, threads: int | None = None):
        # TVM runs on one thread unless told before import (DESIGN.md)
        os.environ.setdefault("TVM_NUM_THREADS", str(threads or os.cpu_count() or 1))
        # Idle TVM workers spin-wait for the next kernel and take the cores the HTTP stack needs, as ONNX Runtime's
        # do (that backend sets allow_spinning=0): with the default spin, the server spent 11.0-12.8 ms of CPU per
        # lite0 image against 9.9-10.3 ms without (serve_overhead.py, bf16 artifact, 8 clients, two runs each).
        # Read when TVM's thread pool starts, so set before the first artifact runs.
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
        try:
            import compile
        except ImportError as exc:
            raise BackendError(f"TVM artifacts need the compile package ({exc})") from None
        if not Path(artifact).is_dir():
            raise BackendError(f"TVM artifact {artifact} is not a directory (make one with `convhub compile`)")
        try:
            self.fn = compile.load(artifact)
        except Exception as exc:  # its own errors already say what is wrong and what to do
            raise BackendError(f"cannot use TVM artifact {artifact}: {exc}") from exc
        m = self.fn.manifest
        built_for = hub.info(m["model"]["name"]).name
        if built_for != hub.info(model).name:
            raise BackendError(f"artifact {artifact} was compiled for {built_for!r}, not {model!r}")
        super().__init__(model, stages)
        self.names = list(self.fn.output_names)
        self.single = m["model"].get("output_kind") == "tensor"
        self.min_batch, self.max_batch = int(self.fn.min_batch), int(self.fn.max_batch)
        self.artifact = Path(artifact)
        self.threads = threads
        t = m.get("target", {})
        from compile.verify import cosine_bar
        self.precision = m.get("precision", "fp32")
        self.min_cosine = cosine_bar(m)  # the bar the artifact was built to: 0.999 for --precision bf16
        self.target = (f"{t.get('preset', '?')} ({t.get('tvm_target', {}).get('mcpu', t.get('device', ''))}"
                       f"{', ' + self.precision if self.precision != 'fp32' else ''})")

    def instance(self) -> "TvmBackend":
        """A second VM over the same artifact: a Relax VM keeps per-call state and is not safe to share."""
        return TvmBackend(self.model, self.artifact, self.stages, threads=self.threads)

    @property
    def outputs(self) -> tuple[str, ...]:
        names = list(self.names)
        if POOLED not in names and self.stages[-1] in names:
            names.insert(0, POOLED)
        return tuple(names)

    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        n = len(x)
        if n < self.min_batch:  # the compiled batch range may not start at 1: pad, then drop the padding
            x = np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)])
        got = self.fn(x)
        if self.single:
            got = {self.names[0]: got}
        res = {}
        for o in outputs:
            if o in got:
                res[o] = np.asarray(got[o])[:n]
            elif o == POOLED:
                res[o] = pooled_from(np.asarray(got[self.stages[-1]]))[:n]
            else:
                raise BackendError(f"TVM artifact {self.artifact} does not produce output {o!r}")
        return res
