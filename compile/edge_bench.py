"""Benchmark backends for exported edge files, for `convhub bench` and benchmarks/edge_formats.py.

    from compile.edge_bench import backends
    run = backends()["litert"]("lite0.tflite", num_threads=2)   # callable: float32 N x 3 x S x S -> {name: array}
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from .edge_runtime import OnnxRunner, TFLiteRunner

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def backends() -> dict[str, Callable[..., Runner]]:
    """Backend name -> factory(path, *, num_threads=None) returning a runner for that file kind.

    "onnxruntime" runs .onnx files (CPU execution provider); "litert" runs .tflite files with the
    ai-edge-litert interpreter (XNNPACK); both take float32 NCHW input and return outputs by name.
    """
    return {"onnxruntime": OnnxRunner, "litert": TFLiteRunner}


def backend_for(path: str | os.PathLike) -> str:
    """The backend name that runs `path` (by suffix)."""
    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    return {"onnx": "onnxruntime", "tflite": "litert"}.get(suffix, "")


def interleaved_latency(runners: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, *, rounds: int = 30,
                        warmup: int = 3) -> dict[str, dict[str, float]]:
    """p50/p90 ms per call of each runner on `x`, measured in interleaved rounds (one call each per round),
    so that load from other processes hits every runner alike."""
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))} for k, v in times.items()}
