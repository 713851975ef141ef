"""Prometheus metrics, one registry per app (so several apps in one process never share counters)."""
from __future__ import annotations

import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batcher import BatchStats

_LAT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Requests by route and status, latency split into decode/queue/compute, batch sizes, queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes: the soak script reads RSS from here
        self.requests = Counter("convhub_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("convhub_request_seconds", "HTTP request latency", ["route"], buckets=_LAT,
                                 registry=r)
        self.decode = Histogram("convhub_decode_seconds", "Image decoding + preprocessing / tensor parsing per request",
                                ["model", "kind"], buckets=_LAT, registry=r)
        self.queue = Histogram("convhub_queue_seconds", "Time a request waited for its batch", ["model"],
                               buckets=_LAT, registry=r)
        self.compute = Histogram("convhub_compute_seconds", "Backend time per batch", ["model"], buckets=_LAT,
                                 registry=r)
        self.batch = Histogram("convhub_batch_size", "Rows per executed batch", ["model"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.depth = Gauge("convhub_queue_depth", "Images waiting in the batch queue", ["model"], registry=r)
        self.images = Counter("convhub_images_total", "Images (batch rows) inferred", ["model"], registry=r)

    def on_batch(self, model: str):
        def record(stats: BatchStats) -> None:
            self.batch.labels(model).observe(stats.rows)
            self.images.labels(model).inc(stats.rows)
            self.compute.labels(model).observe(stats.compute_s)
            for q in stats.queue_s:
                self.queue.labels(model).observe(q)
        return record

    def on_depth(self, model: str):
        gauge = self.depth.labels(model)
        return gauge.set

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): counts every response by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # route templates, never raw paths: unknown URLs must not blow up label cardinality
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - t0)
