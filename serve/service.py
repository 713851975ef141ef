"""The running service: loaded models (backend + batcher + input spec), readiness, shared thread pool."""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import hub
from hub.errors import HubError

from .backends import select
from .backends.base import POOLED, Backend
from .batcher import Batcher
from .config import ModelConfig, ServeConfig
from .errors import BackendError, NotFound, NotReady
from .metrics import Metrics
from .tensors import InputSpec

log = logging.getLogger("serve")


@dataclass
class LoadedModel:
    """One served model: what it accepts, what runs it, and why that backend was chosen."""

    name: str
    backend: Backend
    batcher: Batcher
    spec: InputSpec
    preprocess: Callable
    shapes: dict[str, list[int]]  # output name -> shape with -1 for the batch
    report: str
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {"name": self.name, **self.backend.describe(), "max_batch": self.batcher.max_batch,
                "instances": self.batcher.instances,
                "input": {"name": self.spec.name, "shape": [-1, *self.spec.chw], "datatypes": ["FP32", "FP16", "UINT8"]},
                "outputs": {k: v for k, v in self.shapes.items() if k in self.backend.outputs},
                "preprocess": repr(self.preprocess), "selection": self.report}


def _output_shapes(name: str, size: int) -> dict[str, list[int]]:
    entry = hub.info(name)
    shapes = {POOLED: [-1, entry.stages[-1].channels]}
    for s in entry.stages:
        side = -(-size // s.stride)  # convolutions with "same" padding round up
        shapes[s.name] = [-1, s.channels, side, side]
    return shapes


class Service:
    """Owns models and the decode pool; models load in the background so liveness answers at once."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.models: dict[str, LoadedModel] = {}
        self.ready = False
        self.failed: str | None = None
        self.decode_pool = ThreadPoolExecutor(config.workers.decode_threads, thread_name_prefix="decode")
        self.on_fatal: Callable[[str], None] = lambda msg: None

    def get(self, name: str) -> LoadedModel:
        """The loaded model `name`: 404 when it is not served, 503 while it is loading."""
        if name in self.models:
            return self.models[name]
        served = [m.name for m in self.config.models]
        if name not in served:
            raise NotFound(f"model {name!r} is not served here; served models: {served}", code="unknown_model")
        raise NotReady(f"model {name!r} is still loading; retry shortly", headers={"Retry-After": "2"})

    def _build(self, mc: ModelConfig) -> tuple[Backend, str]:
        b = self.config.batching_of(mc)
        return select.build(mc.name, self.config.backend_of(mc), threads=self.config.workers.compute_threads,
                            max_batch=b.max_batch_size, artifact=mc.artifact)

    async def load_all(self) -> None:
        """Build, verify and warm every model; then mark the service ready (or report the failure)."""
        try:
            for mc in self.config.models:
                t0 = time.perf_counter()
                backend, report = await asyncio.to_thread(self._build, mc)
                b = self.config.batching_of(mc)
                batcher = await asyncio.to_thread(
                    Batcher, backend, max_batch=b.max_batch_size, max_delay_s=b.max_delay_ms / 1000,
                    max_queue=b.max_queue, instances=self.config.workers.compute_instances,
                    on_batch=self.metrics.on_batch(mc.name), on_depth=self.metrics.on_depth(mc.name))
                batcher.start()
                entry = hub.info(mc.name)
                pre = hub.transforms(mc.name)
                p = entry.preprocess
                spec = InputSpec("input", pre.input_shape, tuple(p.mean), tuple(p.std), backend.outputs)
                self.models[mc.name] = LoadedModel(mc.name, backend, batcher, spec, pre,
                                                   _output_shapes(mc.name, p.input_size), report)
                log.info("%s (ready in %.1f s)", report, time.perf_counter() - t0)
            self.ready = True
            log.info("ready: %s", ", ".join(self.models))
        except (HubError, BackendError, ValueError, OSError) as exc:
            self.failed = f"loading models failed: {exc}"
            log.error(self.failed)
            self.on_fatal(self.failed)
        except Exception as exc:  # a bug, not a user error: keep the traceback in the log, never hang unready
            self.failed = f"loading models failed: {type(exc).__name__}: {exc}"
            log.exception(self.failed)
            self.on_fatal(self.failed)

    async def close(self) -> None:
        """Finish queued work (graceful shutdown), then release backends and threads."""
        timeout = self.config.graceful_timeout_s
        await asyncio.gather(*(m.batcher.drain(timeout) for m in self.models.values()))
        for m in self.models.values():
            m.backend.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
