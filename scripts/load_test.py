#!/usr/bin/env python
"""Bounded load / soak test for `convhub serve` on loopback.

Concurrent clients send JSON tensors, binary FP32 and UINT8 tensors and JPEG uploads (round-robin) for a fixed time
and/or number of requests, check every reply, and report throughput, p50/p99 latency, errors and the
server's RSS (from /metrics) before and after.

    python scripts/load_test.py --url http://127.0.0.1:8000 --duration 30 --concurrency 8
    python scripts/load_test.py --requests 5000 --concurrency 8          # soak: flat memory?
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httptools
import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# binary = FP32 tensors (600 KB per 224x224 image); binary-u8 = the same crop as UINT8 pixels (150 KB), which
# the server normalizes itself
MODES = ("json", "binary", "binary-u8", "jpeg")


@dataclass
class ModeStats:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    images: int = 0


@functools.cache  # built once per process: the benchmark calls run() once per round and counts its CPU
def _payloads(model: str, batch: int) -> dict[str, tuple[str, bytes, dict]]:
    import hub
    import hub.samples

    photo = hub.samples.sample_photos()[0].open()
    x = np.repeat(hub.transforms(model)(photo).numpy()[None], batch, axis=0)
    infer, embed = f"/v2/models/{model}/infer", f"/v1/models/{model}/embed"
    js = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                 "data": x.ravel().tolist()}]}).encode()
    p = hub.info(model).preprocess
    mean = np.asarray(p.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(p.std, np.float32).reshape(1, 3, 1, 1)
    pixels = np.clip(np.rint((x * std + mean) * 255), 0, 255).astype(np.uint8)  # undo the normalization
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    if batch == 1:
        jpeg = (embed, jpg, {"content-type": "image/jpeg"})
    else:
        req = httpx.Request("POST", "http://x/", files=[("files", (f"{i}.jpg", jpg, "image/jpeg"))
                                                        for i in range(batch)])
        jpeg = (embed, req.read(), {"content-type": req.headers["content-type"]})
    return {"json": (infer, js, {"content-type": "application/json"}),
            "binary": (infer, *_binary_request(x, "FP32")), "binary-u8": (infer, *_binary_request(pixels, "UINT8")),
            "jpeg": jpeg}


def _binary_request(x: np.ndarray, datatype: str) -> tuple[bytes, dict[str, str]]:
    """An infer body with the binary tensor extension: JSON header, then the raw tensor bytes."""
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "pooled", "parameters": {"binary_data": True}}]}).encode()
    return head + x.tobytes(), {"content-type": "application/octet-stream",
                                "inference-header-content-length": str(len(head))}


class _HttpError(Exception):
    """A malformed or cut-off reply."""


# what a broken connection or a cut-off/malformed reply raises: the request counts as an error, the client reconnects
_NET_ERRORS = (OSError, asyncio.TimeoutError, _HttpError, httptools.HttpParserError)


class _Connection:
    """One keep-alive HTTP/1.1 connection; all clients share one event loop (uvloop when installed).

    Neither httpx nor one thread per client: the load generator shares the server's cores, and here httpx
    spent ~4 ms of CPU per 600 KB request and 16 blocking stdlib clients ~1.2 ms (GIL hand-offs), all of it
    charged to the server by the benchmark. Replies are parsed by httptools, uvicorn's C parser."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float):
        u = urlparse(url)
        self._host, self._port, self._timeout = u.hostname, u.port or 80, timeout
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        try:
            return await asyncio.wait_for(self._post(path, body, headers), self._timeout)
        except _NET_ERRORS:
            self.close()  # reconnect on the next request
            raise

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._writer.write(f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n{self._extra}{head}"
                           f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1"))
        self._writer.write(body)
        await self._writer.drain()
        reply = _Reply()
        parser = httptools.HttpResponseParser(reply)
        while not reply.complete:
            data = await self._reader.read(1 << 16)
            if not data:
                raise _HttpError("the server closed the connection mid-reply")
            parser.feed_data(data)
        if reply.headers.get("connection", "").lower() == "close":
            self.close()
        return parser.get_status_code(), reply.headers, b"".join(reply.body)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class _Reply:
    """httptools callbacks: collect one response's headers and body."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def _embedding(mode: str, headers: dict[str, str], content: bytes) -> np.ndarray:
    # orjson: the load generator shares the server's cores, and json.loads took 0.44 ms per 1280-float reply
    if mode == "jpeg":
        return np.asarray(orjson.loads(content)["embeddings"], np.float32)
    if mode == "json":
        out = orjson.loads(content)["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])
    n = int(headers["inference-header-content-length"])
    out = orjson.loads(content[:n])["outputs"][0]
    return np.frombuffer(content[n:], "<f4").reshape(out["shape"])


def _run_loop(main) -> None:
    """asyncio.run on uvloop when it is installed (it is a serve dependency), else the stdlib loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def server_metric(client: httpx.Client, name: str) -> float | None:
    """One unlabelled sample from the server's Prometheus endpoint (None when it is not exported)."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", client.get("/metrics").text, re.M)
    return float(m.group(1)) if m else None


def server_rss(client: httpx.Client) -> float | None:
    """The server's resident memory in MiB."""
    rss = server_metric(client, "process_resident_memory_bytes")
    return rss / 2**20 if rss is not None else None


class _RssSampler(threading.Thread):
    """The server's RSS every `every` seconds while the load runs (a thread: the clients' event loop never waits
    on it), to tell a leak from warm-up: a leak keeps climbing, warm-up levels off."""

    def __init__(self, url: str, headers: dict[str, str], every: float):
        super().__init__(daemon=True)
        self.url, self.headers, self.every = url, headers, every
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as c:
            while not self.done.wait(self.every):
                try:
                    rss = server_rss(c)
                except httpx.HTTPError:  # a busy server may miss one sample; the next one counts
                    continue
                if rss is not None:
                    self.samples.append((round(time.monotonic() - t0, 1), rss))


def run(url: str, model: str, *, duration: float, requests: int | None, concurrency: int, modes: list[str],
        batch: int, api_key: str | None, rss_every: float | None = None) -> dict:
    """Drive the server; returns the report as a dict (also what --json prints). With `rss_every`, the server's
    RSS is also sampled every that many seconds during the run."""
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {host}: loopback only")
    headers = {"X-API-Key": api_key} if api_key else {}
    payloads = _payloads(model, batch)
    stats = {m: ModeStats() for m in modes}
    reference: dict[str, np.ndarray] = {}
    counter = iter(range(10**12))
    end = time.monotonic() + duration

    with httpx.Client(base_url=url, headers=headers, timeout=120) as admin:
        rss_before = server_rss(admin)

    async def client() -> None:
        c = _Connection(url, headers, timeout=120)
        try:
            while time.monotonic() < end:
                i = next(counter)
                if requests is not None and i >= requests:
                    return
                mode = modes[i % len(modes)]  # round-robin: every mode from the first requests on
                path, body, h = payloads[mode]
                t0 = time.perf_counter()
                try:
                    status, rh, content = await c.post(path, body, h)
                    dt = time.perf_counter() - t0
                    if status != 200:
                        err = f"HTTP {status}: {content[:120].decode(errors='replace')}"
                    else:
                        emb = _embedding(mode, rh, content)
                        ref = reference.setdefault(mode, emb)
                        # same payload, same answer: catches replies routed to the wrong request
                        cos = (emb * ref).sum() / (np.linalg.norm(emb) * np.linalg.norm(ref))
                        err = None if emb.shape == ref.shape and cos > 0.999 else f"inconsistent reply (cos {cos:.4f})"
                except (*_NET_ERRORS, ValueError, KeyError) as exc:
                    dt, err = time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
                s = stats[mode]
                if err:
                    s.errors[err] = s.errors.get(err, 0) + 1
                else:
                    s.latencies.append(dt)
                    s.images += batch
        finally:
            c.close()

    async def clients() -> None:
        await asyncio.gather(*(client() for _ in range(concurrency)))

    sampler = _RssSampler(url, headers, rss_every) if rss_every else None
    if sampler:
        sampler.start()
    t_start = time.perf_counter()
    try:
        _run_loop(clients())
    finally:
        if sampler:
            sampler.done.set()
            sampler.join()
    elapsed = time.perf_counter() - t_start
    with httpx.Client(base_url=url, headers=headers, timeout=120) as admin:
        rss_after = server_rss(admin)

    rows = {}
    for m, s in stats.items():
        lat = np.array(s.latencies) * 1000 if s.latencies else np.array([np.nan])
        rows[m] = {"ok": len(s.latencies), "errors": sum(s.errors.values()), "error_kinds": s.errors,
                   "req_per_s": len(s.latencies) / elapsed, "images_per_s": s.images / elapsed,
                   "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
    all_lat = np.concatenate([np.array(s.latencies) for s in stats.values()]) * 1000
    total_ok = sum(r["ok"] for r in rows.values())
    return {"url": url, "model": model, "concurrency": concurrency, "batch": batch, "seconds": elapsed,
            "modes": rows, "requests_ok": total_ok, "errors": sum(r["errors"] for r in rows.values()),
            "req_per_s": total_ok / elapsed, "images_per_s": sum(r["images_per_s"] for r in rows.values()),
            "p50_ms": float(np.percentile(all_lat, 50)) if len(all_lat) else None,
            "p99_ms": float(np.percentile(all_lat, 99)) if len(all_lat) else None,
            "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "rss_samples": sampler.samples if sampler else []}


def print_report(rep: dict) -> None:
    print(f"{rep['url']}  model {rep['model']}  {rep['concurrency']} clients  batch {rep['batch']}  "
          f"{rep['seconds']:.1f} s")
    print(f"{'mode':8} {'ok':>7} {'errors':>7} {'req/s':>8} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for m, r in rep["modes"].items():
        print(f"{m:8} {r['ok']:7d} {r['errors']:7d} {r['req_per_s']:8.1f} {r['images_per_s']:8.1f} "
              f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f}")
        for kind, n in r["error_kinds"].items():
            print(f"         {n} x {kind}")
    print(f"{'all':8} {rep['requests_ok']:7d} {rep['errors']:7d} {rep['req_per_s']:8.1f} {rep['images_per_s']:8.1f} "
          f"{rep['p50_ms'] or float('nan'):8.1f} {rep['p99_ms'] or float('nan'):8.1f}")
    if rep["rss_before_mib"] is not None:
        print(f"server RSS: {rep['rss_before_mib']:.0f} MiB before, {rep['rss_after_mib']:.0f} MiB after "
              f"({rep['rss_after_mib'] - rep['rss_before_mib']:+.0f} MiB)")
    if rep["rss_samples"]:
        print("server RSS during the run (s: MiB): " + ", ".join(f"{t:g}: {m:.0f}" for t, m in rep["rss_samples"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--duration", type=float, default=30.0, help="seconds (upper bound)")
    p.add_argument("--requests", type=int, default=None, help="stop after this many requests (soak)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    p.add_argument("--batch", type=int, default=1, help="images per request")
    p.add_argument("--api-key", default=None)
    p.add_argument("--rss-every", type=float, default=None, metavar="S",
                   help="also sample the server's RSS every S seconds during the run (soak: leak or warm-up?)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"unknown mode(s) {bad}; accepted: {', '.join(MODES)}")
    if a.duration <= 0 or a.concurrency < 1 or a.batch < 1 or (a.rss_every is not None and a.rss_every <= 0):
        p.error("--duration, --concurrency, --batch and --rss-every must be positive")
    rep = run(a.url, a.model, duration=a.duration, requests=a.requests, concurrency=a.concurrency, modes=modes,
              batch=a.batch, api_key=a.api_key, rss_every=a.rss_every)
    print(json.dumps(rep, indent=1)) if a.json else print_report(rep)
    return 0 if rep["errors"] == 0 and rep["requests_ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
