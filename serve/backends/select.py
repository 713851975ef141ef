"""Build the backend a model asks for; for `auto`, time every verified candidate and keep the fastest."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import hub
import hub.samples

from ..errors import BackendError
from .base import POOLED, Backend
from .torch_backend import TorchBackend

log = logging.getLogger("serve.backends")
MIN_COSINE = 0.9999


@dataclass
class Trial:
    """One candidate's result at start-up: milliseconds per photo batch, worst cosine, or why it was skipped."""

    kind: str
    ms: float | None = None
    cosine: float | None = None
    skipped: str | None = None

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.kind}: skipped ({self.skipped})"
        cos = "" if self.cosine is None else f", cosine {self.cosine:.6f}"
        return f"{self.kind}: {self.ms:.1f} ms{cos}"


def photo_batch(model: str, n: int) -> np.ndarray:
    """Real photos (hub.samples), preprocessed as the model's weights expect, as a float32 NCHW batch."""
    tf = hub.transforms(model)
    photos = hub.samples.sample_photos()
    if not photos:
        raise BackendError("no sample photos to verify backends with (scikit-image's data folder is missing)")
    imgs = [tf(photos[i % len(photos)].open()).numpy() for i in range(max(1, n))]
    return np.ascontiguousarray(np.stack(imgs), dtype=np.float32)


def min_cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Worst per-image cosine similarity over all outputs present in both."""
    worst = 1.0
    for name in a:
        x = a[name].reshape(a[name].shape[0], -1).astype(np.float64)
        y = b[name].reshape(b[name].shape[0], -1).astype(np.float64)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-30)
        worst = min(worst, float(cos.min()))
    return worst


def time_ms(backend: Backend, x: np.ndarray, repeats: int = 2) -> float:
    """Best of `repeats` runs after one warm-up (best-of: other jobs share these cores)."""
    outs = [POOLED]
    backend.run(x, outs)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.run(x, outs)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def _build_ort(model: str, ref: TorchBackend, threads: int, max_batch: int) -> Backend:
    from .onnxruntime_backend import OnnxRuntimeBackend, ensure_onnx

    path = ensure_onnx(ref.module, model, max_batch)
    return OnnxRuntimeBackend(model, path, ref.stages, threads=threads, max_batch=max_batch)


def _build_tvm(model: str, ref: TorchBackend, threads: int, artifact: Path | None) -> Backend:
    from .tvm_backend import TvmBackend

    if artifact is None:
        raise BackendError("no artifact configured (models: - name: ... artifact: DIR)")
    return TvmBackend(model, artifact, ref.stages, threads=threads)


def _verified(build: Callable[[], Backend], x: np.ndarray, expected: dict[str, np.ndarray], kind: str
              ) -> tuple[Backend, float]:
    backend = build()
    n = min(len(x), backend.max_batch)
    outs = [o for o in backend.outputs if o in expected]
    got = backend.run(x[:n], outs)
    cos = min_cosine({k: expected[k][:n] for k in outs}, got)
    bar = getattr(backend, "min_cosine", MIN_COSINE)  # a compiled artifact's own bar (TvmBackend.min_cosine)
    if cos < bar:
        backend.close()
        raise BackendError(f"{kind} does not match PyTorch on real photos: worst cosine {cos:.6f} < {bar}")
    return backend, cos


def build(model: str, kind: str, *, threads: int, max_batch: int, artifact: Path | None = None
          ) -> tuple[Backend, str]:
    """The backend for `model` (kind: torch, onnxruntime, tvm or auto) and a one-line report of the choice."""
    log.info("%s: loading PyTorch reference, then backend %s", model, kind)
    ref = TorchBackend(model, threads=threads)
    x = photo_batch(model, min(8, max_batch))
    expected = ref.run(x, ref.outputs)  # PyTorch is the reference every other backend must match
    builders: dict[str, Callable[[], Backend]] = {
        "tvm": lambda: _build_tvm(model, ref, threads, artifact),
        "onnxruntime": lambda: _build_ort(model, ref, threads, max_batch),
    }
    if kind == "torch":
        ms = time_ms(ref, x)
        return ref, f"{model}: backend torch ({ref.target}); batch {len(x)} of real photos in {ms:.1f} ms"
    if kind in builders:
        backend, cos = _verified(builders[kind], x, expected, kind)
        ms = time_ms(backend, x[: backend.max_batch])
        ref.close()
        return backend, (f"{model}: backend {kind} ({backend.target}); verified against PyTorch on real photos "
                         f"(worst cosine {cos:.6f}); batch {min(len(x), backend.max_batch)} in {ms:.1f} ms")
    if kind != "auto":
        raise BackendError(f"unknown backend {kind!r}; accepted: auto, torch, onnxruntime, tvm")
    trials: list[Trial] = []
    built: dict[str, Backend] = {"torch": ref}
    for k in ("tvm", "onnxruntime"):
        if k == "tvm" and artifact is None:
            trials.append(Trial(k, skipped="no artifact configured"))
            continue
        try:
            backend, cos = _verified(builders[k], x, expected, k)
        except BackendError as exc:
            trials.append(Trial(k, skipped=str(exc)))
            continue
        built[k] = backend
        trials.append(Trial(k, cosine=cos))
    # time at a batch every candidate supports, so the comparison is like for like
    n = min(len(x), *(b.max_batch for b in built.values()))
    for t in trials:
        if t.kind in built:
            t.ms = time_ms(built[t.kind], x[:n])
    trials.append(Trial("torch", ms=time_ms(ref, x[:n])))
    ok = [t for t in trials if t.ms is not None]
    best = min(ok, key=lambda t: t.ms)
    for k, b in built.items():
        if k != best.kind:
            b.close()
    why = "; ".join(str(t) for t in sorted(trials, key=lambda t: (t.ms is None, t.ms or 0)))
    chosen = built[best.kind]
    return chosen, (f"{model}: backend auto chose {best.kind} ({chosen.target}), fastest verified on a batch of "
                    f"{n} real photos: {why}")
