"""The dynamic batcher with a real backend: packing, splitting, queue bound, time-outs."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serve.backends.torch_backend import TorchBackend
from serve.batcher import Batcher, BatchStats
from serve.errors import Overloaded, Timeout

from .helpers import photos


@pytest.fixture(scope="module")
def backend(reference):
    return TorchBackend("efficientnet-lite0", threads=1, module=reference.module)


def test_packs_splits_and_matches_direct_runs(backend, reference):
    x = reference.inputs(photos(5))
    want = backend.run(x, ["pooled"])["pooled"]
    seen: list[BatchStats] = []

    async def go():
        b = Batcher(backend, max_batch=3, max_delay_s=0.05, max_queue=32, on_batch=seen.append)
        b.start()
        # one request of 5 rows (split 3 + 2) and two single rows, all at once
        res = await asyncio.gather(b.submit(x, ["pooled"], 60), b.submit(x[1:2], ["pooled", "stage5"], 60),
                                   b.submit(x[4:5], ["pooled"], 60))
        await b.drain(5)
        return res

    big, one, last = asyncio.run(go())
    np.testing.assert_allclose(big["pooled"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one["pooled"][0], want[1], rtol=1e-4, atol=1e-5)
    assert one["stage5"].shape == (1, 1280, 7, 7) and set(big) == {"pooled"}
    np.testing.assert_allclose(last["pooled"][0], want[4], rtol=1e-4, atol=1e-5)
    assert max(s.rows for s in seen) <= 3 and sum(s.rows for s in seen) == 7
    assert len(seen) == 3  # 7 rows at max 3: packed, not one batch per request


def test_never_above_backend_max_batch(backend):
    backend.max_batch, saved = 2, backend.max_batch
    try:
        b = Batcher(backend, max_batch=16, max_delay_s=0, max_queue=4)
        assert b.max_batch == 2
    finally:
        backend.max_batch = saved


def test_queue_bound_and_timeout(backend, reference):
    x = reference.inputs(photos(1))

    async def go():
        b = Batcher(backend, max_batch=1, max_delay_s=0, max_queue=2)
        b.start()
        first = asyncio.ensure_future(b.submit(np.repeat(x, 2, axis=0), ["pooled"], 60))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as full:
            await b.submit(x, ["pooled"], 60)
        with pytest.raises(Timeout) as slow:
            # the queue drains while we wait, but one compute takes far longer than 1 ms
            await first
            await b.submit(x, ["pooled"], 0.001)
        await b.drain(10)
        return full.value, slow.value

    full, slow = asyncio.run(go())
    assert full.status == 503 and full.headers["Retry-After"] == "1" and "queue full" in full.message
    assert slow.status == 504 and "request_timeout_s" in slow.message


def test_instances_run_whole_batches_side_by_side(backend, reference):
    x = reference.inputs(photos(4))
    want = backend.run(x, ["pooled"])["pooled"]
    threads: list[str] = []
    seen: list[BatchStats] = []

    def record(stats: BatchStats) -> None:  # called on the compute thread that ran the batch
        threads.append(threading.current_thread().name)
        seen.append(stats)

    async def go():
        b = Batcher(backend, max_batch=2, max_delay_s=0.05, max_queue=64, instances=2, on_batch=record)
        b.start()
        # 8 requests of 2 rows: two compute threads, each taking whole batches from the one queue
        res = await asyncio.gather(*(b.submit(x[i % 2 * 2:i % 2 * 2 + 2], ["pooled"], 60) for i in range(8)))
        await b.drain(5)
        return res

    res = asyncio.run(go())
    for i, r in enumerate(res):
        np.testing.assert_allclose(r["pooled"], want[i % 2 * 2:i % 2 * 2 + 2], rtol=1e-4, atol=1e-5)
    assert sorted(s.rows for s in seen) == [2] * 8  # never a split batch
    assert len(set(threads)) == 2, threads


def test_instances_must_be_positive(backend):
    with pytest.raises(ValueError, match="instances must be >= 1"):
        Batcher(backend, max_batch=2, max_delay_s=0, max_queue=4, instances=0)
