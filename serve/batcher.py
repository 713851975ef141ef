"""Dynamic batching per model: requests queue (bounded), a worker packs them into batches of at most
`max_batch` rows, waiting up to `max_delay` for more, and runs each batch on the model's compute thread."""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .backends.base import Backend
from .errors import Overloaded, Timeout


@dataclass
class _Item:
    x: np.ndarray
    outputs: frozenset[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What one batch cost, for metrics: rows, seconds each item waited, seconds of compute."""

    rows: int
    queue_s: list[float]
    compute_s: float


class Batcher:
    """One per model. `submit` returns the outputs for its rows; raises Overloaded when the queue is full."""

    def __init__(self, backend: Backend, *, max_batch: int, max_delay_s: float, max_queue: int,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        self.backend = backend
        self.max_batch = max(1, min(max_batch, backend.max_batch))  # never above what the backend supports
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._items: collections.deque[_Item] = collections.deque()
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"compute-{backend.model}")
        self._on_batch = on_batch or (lambda s: None)
        self._on_depth = on_depth or (lambda d: None)
        self._task: asyncio.Task | None = None
        self._closing = False
        self._busy = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.backend.model}")

    @property
    def depth(self) -> int:
        return self._pending_rows

    async def submit(self, x: np.ndarray, outputs: Sequence[str], timeout_s: float) -> dict[str, np.ndarray]:
        """Queue `x` (N rows); rows above max_batch go as several chunks. Waits at most `timeout_s`."""
        n = len(x)
        if self._closing:
            raise Overloaded("the server is shutting down", headers={"Retry-After": "1"})
        if self._pending_rows + n > self.max_queue:
            raise Overloaded(f"{self.backend.model}: queue full ({self._pending_rows} of {self.max_queue} images "
                             "waiting); retry later", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        outs = frozenset(outputs)
        items = [_Item(x[i:i + self.max_batch], outs, loop.create_future()) for i in range(0, n, self.max_batch)]
        self._items.extend(items)
        self._pending_rows += n
        self._on_depth(self._pending_rows)
        self._wake.set()
        try:
            parts = await asyncio.wait_for(asyncio.gather(*(it.future for it in items)), timeout_s)
        except asyncio.TimeoutError:
            raise Timeout(f"{self.backend.model}: no result within {timeout_s:g} s (limits.request_timeout_s); "
                          "the server is busy, retry later", headers={"Retry-After": "1"}) from None
        finally:
            for it in items:  # timed-out or cancelled requests leave the queue without costing compute
                if not it.future.done():
                    it.future.cancel()
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    async def _next_batch(self) -> list[_Item]:
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        batch, rows = [], 0
        deadline = time.perf_counter() + self.max_delay_s
        while True:
            while self._items and rows + len(self._items[0].x) <= self.max_batch:
                it = self._items.popleft()
                self._pending_rows -= len(it.x)
                if it.future.cancelled():
                    continue
                batch.append(it)
                rows += len(it.x)
            remaining = deadline - time.perf_counter()
            if rows >= self.max_batch or self._items or remaining <= 0 or self._closing:
                break  # full, or the next item does not fit, or waited long enough
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        self._on_depth(self._pending_rows)
        return batch

    def _compute(self, batch: list[_Item]) -> tuple[list[dict[str, np.ndarray]], float]:
        t0 = time.perf_counter()
        x = batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])
        outputs = sorted(set().union(*(it.outputs for it in batch)))
        res = self.backend.run(x, outputs)
        parts, start = [], 0
        for it in batch:
            n = len(it.x)
            parts.append({k: res[k][start:start + n] for k in it.outputs})
            start += n
        return parts, time.perf_counter() - t0

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            started = time.perf_counter()
            self._busy = True
            try:
                parts, compute_s = await loop.run_in_executor(self._executor, self._compute, batch)
            except Exception as exc:  # a backend failure fails this batch, not the server
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            for it, part in zip(batch, parts):
                if not it.future.done():
                    it.future.set_result(part)
            self._on_batch(BatchStats(sum(len(it.x) for it in batch), [started - it.enqueued for it in batch],
                                      compute_s))

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, let queued items finish (up to timeout_s), then stop the worker."""
        self._closing = True
        self._wake.set()
        end = time.perf_counter() + timeout_s
        while (self._items or self._busy) and time.perf_counter() < end:
            await asyncio.sleep(0.02)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
