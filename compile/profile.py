"""Per-kernel time of a compiled artifact, measured in sequence inside the real VM run.

Kernels timed one by one (`lib.time_evaluator`) run with hot caches; inside a model each kernel reads what the
previous one just wrote, and the gap can be large (efficientnet-lite0: depthwise convs at 56x56-112x112 took
~5x longer in sequence than alone). This uses the Relax VM's instrument hook: a timestamp before and after
every call instruction, medians over several runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .artifact import CompiledArtifact


@dataclass(frozen=True)
class KernelTime:
    """One kernel (or VM builtin): calls per run, median ms per run summed over its calls, argument shapes."""

    name: str
    calls: int
    ms: float
    shapes: tuple[tuple[int, ...], ...]


def profile_artifact(artifact: CompiledArtifact, batch: int | None = None, runs: int = 10
                     ) -> tuple[list[KernelTime], float]:
    """Kernel times sorted by cost, and the median wall time (ms) of the un-instrumented run."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    _, x = sample_input(artifact, batch)
    main, params = artifact.entry(int(x.shape[0])), artifact._params
    for _ in range(3):
        main(x, *params)
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        main(x, *params)
        walls.append(time.perf_counter() - t0)

    with artifact._lock:
        shapes = {c.name: c.shapes for c in timed_calls(artifact, x, record_shapes=True)}
        per_run = [timed_calls(artifact, x) for _ in range(runs)]
    per_call: dict[str, list[float]] = {}  # kernel -> median seconds of each of its calls
    for i, call in enumerate(per_run[0]):
        per_call.setdefault(call.name, []).append(float(np.median([r[i].seconds for r in per_run])))
    kernels = [KernelTime(n, len(v), 1000 * sum(v), shapes.get(n, ())) for n, v in per_call.items()]
    kernels.sort(key=lambda k: -k.ms)
    return kernels, 1000 * float(np.median(walls))


def sample_input(artifact: CompiledArtifact, batch: int | None = None) -> tuple[np.ndarray, "tvm.runtime.Tensor"]:
    """A seeded random input batch (default: the artifact's smallest) as numpy and as a tensor on its device."""
    from ._tvm import tvm

    b = batch or artifact.min_batch
    if not artifact.min_batch <= b <= artifact.max_batch:
        raise ValueError(f"batch {b} is outside the artifact's range {artifact.min_batch}..{artifact.max_batch}")
    x = np.random.default_rng(0).random((b, *artifact.manifest["input"]["shape"][1:]), dtype=np.float32)
    return x, tvm.runtime.tensor(x, artifact._device)


@dataclass(frozen=True)
class Call:
    """One VM call of one run: kernel (or builtin) name, seconds, argument shapes (when recorded)."""

    name: str
    seconds: float
    shapes: tuple[tuple[int, ...], ...] = ()


def timed_calls(artifact: CompiledArtifact, x, record_shapes: bool = False) -> list[Call]:
    """One run of the artifact on tensor `x` with a timestamp around every VM call, in call order."""
    calls: list[Call] = []
    started: list[tuple[float, tuple]] = []

    def instrument(func, symbol, before_run, ret_value, *args) -> int:
        now = time.perf_counter()
        if before_run:
            shapes = (tuple(tuple(int(d) for d in a.shape) for a in args if hasattr(a, "shape"))
                      if record_shapes else ())
            started.append((now, shapes))
        else:
            t0, shapes = started.pop()
            calls.append(Call(symbol, now - t0, shapes))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm = artifact._vm
    vm.set_instrument(instrument)
    try:
        artifact.entry(int(x.shape[0]))(x, *artifact._params)
    finally:
        vm.set_instrument(None)  # removed, not replaced by a no-op: run() must not pay for it afterwards
    return calls
