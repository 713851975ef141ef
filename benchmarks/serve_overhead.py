#!/usr/bin/env python
"""Serving overhead: images/s through HTTP vs. calling the same backend in-process at the same batch.

Starts `python -m serve` on 127.0.0.1 (dynamic batching, max batch B), builds the same backend in this
process, and measures in one run, side by side: the backend alone on batches of B, then C concurrent
HTTP clients sending one image per request as binary FP32 tensors, binary UINT8 pixel tensors and JPEG
uploads. Prints a table, with the CPU each side spent per image (server process, load generator = this
process, the bare backend) so the overhead can be placed.

    python benchmarks/serve_overhead.py --backend onnxruntime --clients 8 --batch 8 --seconds 10
    python benchmarks/serve_overhead.py --backend tvm --artifact DIR --rounds 8 --seconds 32 \
        --server-cpus 0 --client-cpus 1     # load generator off the server's core (how the README goal is read)
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from serve.config import Batching  # noqa: E402  (after the path set-up)

MODES = ("binary", "binary-u8", "jpeg")  # FP32 tensors, UINT8 pixel tensors, JPEG uploads (load_test modes)


@functools.cache
def _load_test():
    """scripts/load_test.py as a module (loaded once)."""
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "scripts" / "load_test.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def in_process(handles: list, make_batch, seconds: float) -> tuple[float, float]:
    """images/s of backend.run on the batches make_batch() returns, one thread per handle running side by side
    (as the server's compute instances do), after one warm-up each; and CPU ms per image."""
    for h in handles:
        h.run(make_batch(), ["pooled"])
    counts = [0] * len(handles)

    def loop(i: int) -> None:
        while time.perf_counter() - t0 < seconds:
            x = make_batch()
            handles[i].run(x, ["pooled"])
            counts[i] += len(x)

    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(1, len(handles))]
    for t in threads:
        t.start()
    loop(0)
    for t in threads:
        t.join()
    n = sum(counts)
    return n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n


def parse_cpus(text: str | None) -> set[int] | None:
    """'1', '0,2' or '0-3' as a CPU set; None (all CPUs) when not given."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    if not cpus:  # a range like 3-1
        raise ValueError(text)
    return cpus


def _cpu_text(cpus: set[int] | None) -> str:
    return f"CPUs {','.join(map(str, sorted(cpus)))}" if cpus else "all CPUs"


def pin_process(cpus: set[int] | None) -> None:
    """Move every thread of this process (the backend's thread pools included) onto `cpus`."""
    if not cpus:
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that just ended
            pass


def server_cpu_s(url: str) -> float:
    """The server process's CPU seconds so far (user + system), from its Prometheus endpoint."""
    with httpx.Client(base_url=url) as c:
        return _load_test().server_metric(c, "process_cpu_seconds_total")


def jpeg_batches(jpeg: bytes, preprocess, batch: int):
    """make_batch for in_process: this process also decodes and preprocesses each JPEG (no HTTP)."""
    from serve.images import decode, to_input

    return lambda: np.stack([to_input(decode(jpeg, max_pixels=10**8), preprocess) for _ in range(batch)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime", "tvm", "auto"])
    p.add_argument("--artifact", default=None, help="TVM artifact directory (backend tvm)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="server max batch = in-process batch")
    p.add_argument("--instances", type=int, default=1,
                   help="batches run at once (server workers.compute_instances; in-process: as many threads), "
                        "each on cores/instances intra-op threads")
    p.add_argument("--delay-ms", type=float, default=Batching().max_delay_ms,
                   help="server batching.max_delay_ms (default: the server's)")
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the time is split among them)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--server-cpus", default=None,
                   help="CPUs for the server and the in-process backend, e.g. 0 or 0-3 (default: all)")
    p.add_argument("--client-cpus", default=None,
                   help="CPUs for the load generator, e.g. 1 (default: all). Apart from --server-cpus, the "
                        "load generator's CPU is not taken from the server, as with clients on other machines")
    p.add_argument("--json", default=None, help="also write the results to this file")
    a = p.parse_args(argv)
    try:
        server_cpus, client_cpus = parse_cpus(a.server_cpus), parse_cpus(a.client_cpus)
    except ValueError:
        p.error(f"--server-cpus/--client-cpus: expected lists like 0 or 0,1 or 0-3, got {a.server_cpus!r} / "
                f"{a.client_cpus!r}")
    usable = os.sched_getaffinity(0)
    for flag, cpus in (("--server-cpus", server_cpus), ("--client-cpus", client_cpus)):
        if cpus is not None and not cpus <= usable:
            p.error(f"{flag}: CPUs {sorted(cpus - usable)} are not available; this process may use {sorted(usable)}")

    import hub
    import hub.samples
    from serve.backends import select
    from tests.serve.helpers import Server  # the same real-server launcher the tests use

    lt = _load_test()
    modes = [m for m in a.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes: choose from {', '.join(MODES)}; got {a.modes!r}")
    if a.instances < 1:
        p.error("--instances must be >= 1")
    threads = max(1, len(server_cpus or usable) // a.instances)
    model_cfg = {"name": a.model, "backend": a.backend}
    if a.artifact:
        model_cfg["artifact"] = a.artifact
    cfg = {"models": [model_cfg], "batching": {"max_batch_size": a.batch, "max_delay_ms": a.delay_ms,
                                               "max_queue": max(64, 4 * a.clients)},
           "workers": {"decode_threads": 2, "compute_threads": threads, "compute_instances": a.instances},
           "log_level": "warning"}
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    print(f"starting the server ({a.backend}) ...", file=sys.stderr)
    srv = Server(cfg, work, cpus=server_cpus)
    try:
        srv.wait_ready()
        pin_process(server_cpus)  # before the backend starts its threads: they inherit it
        backend, report = select.build(a.model, a.backend, threads=threads, max_batch=a.batch,
                                       artifact=Path(a.artifact) if a.artifact else None)
        print(report, file=sys.stderr)
        handles = backend.handles(a.instances)
        photo = hub.samples.sample_photos()[0].open()
        pre = hub.transforms(a.model)
        x = np.repeat(pre(photo).numpy()[None], a.batch, axis=0)
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=90)
        # interleave short rounds: other jobs on these cores then load both sides alike
        acc = {m: {"http": 0.0, "base": 0.0, "decode": 0.0, "lat": [], "errors": 0, "paired": [],
                   "server_cpu": 0.0, "client_cpu": 0.0, "base_cpu_ms": 0.0, "requests": 0}
               for m in modes}
        per = a.seconds / a.rounds
        for _ in range(a.rounds):
            for mode in modes:
                v = acc[mode]
                pin_process(server_cpus)
                speed, base_cpu = in_process(handles, lambda: x, per)
                pin_process(client_cpus)
                s0, c0 = server_cpu_s(srv.url), time.process_time()
                rep = lt.run(srv.url, a.model, duration=per, requests=None, concurrency=a.clients, modes=[mode],
                             batch=1, api_key=None)
                # where the CPU went, per image: the server, the load generator (this process), the bare backend
                v["server_cpu"] += server_cpu_s(srv.url) - s0
                v["client_cpu"] += time.process_time() - c0
                v["base_cpu_ms"] += base_cpu / a.rounds
                v["requests"] += rep["requests_ok"]
                v["base"] += speed / a.rounds
                v["http"] += rep["images_per_s"] / a.rounds
                v["lat"] += [rep["p50_ms"], rep["p99_ms"]]
                v["errors"] += rep["errors"]
                ref = speed
                if mode == "jpeg":
                    pin_process(server_cpus)
                    ref = in_process(handles, jpeg_batches(buf.getvalue(), pre, a.batch), per)[0]
                    v["decode"] += ref / a.rounds
                # this VM's speed drifts by tens of % within a minute: a ratio of two measurements seconds apart,
                # one per round, is steadier than the ratio of the totals
                v["paired"].append(rep["images_per_s"] / ref)
        rows = [{"mode": m, "http_img_s": v["http"], "in_process_img_s": v["base"],
                 "in_process_with_decode_img_s": v["decode"] or None, "ratio": v["http"] / v["base"],
                 "paired_ratios": v["paired"], "paired_median": float(np.median(v["paired"])),
                 "p50_ms": float(np.median(v["lat"][0::2])), "p99_ms": float(max(v["lat"][1::2])),
                 "errors": v["errors"], "server_cpu_ms_per_img": 1000 * v["server_cpu"] / max(1, v["requests"]),
                 "client_cpu_ms_per_img": 1000 * v["client_cpu"] / max(1, v["requests"]),
                 "in_process_cpu_ms_per_img": v["base_cpu_ms"]} for m, v in acc.items()]
        batches = [ln for ln in httpx.get(srv.url + "/metrics").text.splitlines()
                   if ln.startswith("convhub_batch_size_sum") or ln.startswith("convhub_batch_size_count")]
        print("server batches: " + "; ".join(batches), file=sys.stderr)
    finally:
        srv.stop()
    when = datetime.date.today().isoformat()
    print(f"\nserving overhead, {a.model}, backend {backend.kind}, {os.cpu_count()} cores ({platform.machine()}), "
          f"{when}; {a.instances} compute instance(s) x {threads} threads; {a.clients} clients x 1 image/request, "
          f"server max batch {a.batch} (delay {a.delay_ms:g} ms), in-process batch {a.batch}, {a.seconds:g} s each in {a.rounds} interleaved rounds")
    print(f"server and in-process backend on {_cpu_text(server_cpus)}, load generator on {_cpu_text(client_cpus)}")
    print(f"{'input':8} {'HTTP img/s':>11} {'in-proc img/s':>14} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7} {'in-proc + decode img/s':>23}   {'paired ratio: median':>20} {'range':>11}   "
          f"CPU ms/img: {'server':>7} {'client':>7} {'in-proc':>8}")
    for r in rows:
        extra = f"{r['in_process_with_decode_img_s']:23.1f}" if r["in_process_with_decode_img_s"] else f"{'-':>23}"
        span = f"{min(r['paired_ratios']):.2f}-{max(r['paired_ratios']):.2f}"
        print(f"{r['mode']:8} {r['http_img_s']:11.1f} {r['in_process_img_s']:14.1f} {r['ratio']:7.2f} "
              f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['errors']:7d} {extra}   {r['paired_median']:20.2f} {span:>11}   "
              f"{'':11} {r['server_cpu_ms_per_img']:7.2f} {r['client_cpu_ms_per_img']:7.2f} "
              f"{r['in_process_cpu_ms_per_img']:8.2f}")
    print("paired ratio: HTTP img/s over the in-process run just before it (for jpeg: the decode-inclusive run just "
          "after), one per round")
    if a.json:
        Path(a.json).write_text(json.dumps({"date": when, "backend": backend.kind, "instances": a.instances,
                                            "threads": threads, "server_cpus": sorted(server_cpus or []),
                                            "client_cpus": sorted(client_cpus or []), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
