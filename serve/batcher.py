"""Dynamic batching per model: requests queue (bounded), the model's compute threads pack them into batches of
at most `max_batch` rows, waiting up to `max_delay` for more, run each batch and hand results back to the
event loop.

The compute thread forms batches itself (a scheduler thread, as in Triton's dynamic batcher): when a batch
ends it starts the next one from the queue at once, instead of waiting for the event loop -- busy reading
other requests -- to get round to it (that hop cost ~5 % of throughput under load).

With `instances` > 1 (Triton's instance count), that many compute threads each take whole batches from the one
queue and run them at the same time, each on its own backend handle (`Backend.instance`). On this 2-core VM,
two single-threaded instances at batch 4 served the most images/s over HTTP at 8 clients (the event loop then
delays one batch instead of stalling a barrier both intra-op threads wait on); they need at least
instances x max_batch requests in flight to pay (docs/serve.md)."""
from __future__ import annotations

import asyncio
import collections
import threading
import time
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


def _resolve(batch: list[_Item], parts: list[dict[str, np.ndarray]] | None, exc: BaseException | None) -> None:
    """On the event loop: complete the futures of requests that are still waiting."""
    for i, it in enumerate(batch):
        if it.future.done():  # timed out or cancelled meanwhile
            continue
        if exc is not None:
            it.future.set_exception(exc)
        else:
            it.future.set_result(parts[i])


class Batcher:
    """One per model. `submit` returns the outputs for its rows; raises Overloaded when the queue is full."""

    def __init__(self, backend: Backend, *, max_batch: int, max_delay_s: float, max_queue: int,
                 instances: int = 1, on_batch: Callable[[BatchStats], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        self.backend = backend
        # made here, not in start(): a TVM handle loads a VM (~1 s), so callers build Batchers off the event loop
        self._handles = backend.handles(instances)
        self.max_batch = max(1, min(max_batch, backend.max_batch))  # never above what the backend supports
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._items: collections.deque[_Item] = collections.deque()
        self._pending_rows = 0
        self._cv = threading.Condition()  # guards _items, _pending_rows, _running, _closing, _stopped
        self._on_batch = on_batch or (lambda s: None)
        self._on_depth = on_depth or (lambda d: None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._stopped = False
        self._running = 0  # batches being computed now
        self._forming = threading.Lock()  # held by the compute thread that is filling the next batch

    def start(self) -> None:
        """Start the compute threads (one per instance); results go back to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._threads = [threading.Thread(target=self._run, args=(h,), name=f"compute-{self.backend.model}-{i}",
                                          daemon=True) for i, h in enumerate(self._handles)]
        for t in self._threads:
            t.start()

    @property
    def instances(self) -> int:
        return len(self._handles)

    @property
    def depth(self) -> int:
        return self._pending_rows

    async def submit(self, x: np.ndarray, outputs: Sequence[str], timeout_s: float) -> dict[str, np.ndarray]:
        """Queue `x` (N rows); rows above max_batch go as several chunks. Waits at most `timeout_s`."""
        n = len(x)
        loop = asyncio.get_running_loop()
        outs = frozenset(outputs)
        items = [_Item(x[i:i + self.max_batch], outs, loop.create_future()) for i in range(0, n, self.max_batch)]
        with self._cv:
            if self._closing:
                raise Overloaded("the server is shutting down", headers={"Retry-After": "1"})
            if self._pending_rows + n > self.max_queue:
                raise Overloaded(f"{self.backend.model}: queue full ({self._pending_rows} of {self.max_queue} "
                                 "images waiting); retry later", headers={"Retry-After": "1"})
            self._items.extend(items)
            self._pending_rows += n
            depth = self._pending_rows
            self._cv.notify()
        self._on_depth(depth)
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

    def _take_batch(self) -> list[_Item] | None:
        """Compute thread: the next batch (may be empty when everything queued was cancelled); None to stop.
        One thread at a time forms a batch, so instances never split what could be one batch between them."""
        with self._forming, self._cv:
            while not self._items:
                if self._stopped:
                    return None
                self._cv.wait()
            batch, rows = [], 0
            deadline = time.perf_counter() + self.max_delay_s
            while True:
                while self._items and rows + len(self._items[0].x) <= self.max_batch:
                    it = self._items.popleft()
                    self._pending_rows -= len(it.x)
                    if it.future.cancelled():  # read across threads: at worst one wasted row of compute
                        continue
                    batch.append(it)
                    rows += len(it.x)
                remaining = deadline - time.perf_counter()
                if rows >= self.max_batch or self._items or remaining <= 0 or self._closing or self._stopped:
                    break  # full, or the next item does not fit, or waited long enough
                self._cv.wait(remaining)
            self._running += bool(batch)
            depth = self._pending_rows
        self._on_depth(depth)
        return batch

    @staticmethod
    def _compute(backend: Backend, batch: list[_Item]) -> tuple[list[dict[str, np.ndarray]], float]:
        t0 = time.perf_counter()
        x = batch[0].x if len(batch) == 1 else np.concatenate([it.x for it in batch])
        outputs = sorted(set().union(*(it.outputs for it in batch)))
        res = backend.run(x, outputs)
        parts, start = [], 0
        for it in batch:
            n = len(it.x)
            parts.append({k: res[k][start:start + n] for k in it.outputs})
            start += n
        return parts, time.perf_counter() - t0

    def _hand_back(self, batch: list[_Item], parts: list | None, exc: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_resolve, batch, parts, exc)
        except RuntimeError:  # the event loop is gone (process shutting down): nobody is waiting
            pass

    def _run(self, backend: Backend) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            started = time.perf_counter()
            try:
                parts, compute_s = self._compute(backend, batch)
            except Exception as exc:  # a backend failure fails this batch, not the server
                self._hand_back(batch, None, exc)
            else:
                self._hand_back(batch, parts, None)
                self._on_batch(BatchStats(sum(len(it.x) for it in batch), [started - it.enqueued for it in batch],
                                          compute_s))
            finally:
                with self._cv:
                    self._running -= 1

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, let queued items finish (up to timeout_s), then stop the compute threads."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        end = time.perf_counter() + timeout_s
        while (self._items or self._running) and time.perf_counter() < end:
            await asyncio.sleep(0.02)
        with self._cv:
            self._stopped = True
            left = list(self._items)
            self._items.clear()
            self._pending_rows = 0
            self._cv.notify_all()
        _resolve(left, None, Overloaded("the server shut down before this request ran", headers={"Retry-After": "1"}))
        for t in self._threads:
            await asyncio.to_thread(t.join, max(0.0, end - time.perf_counter()) + 1)
        for h in self._handles:  # the extra handles are ours; the caller closes `backend`
            if h is not self.backend:
                h.close()
