"""Work sharing against TVM's fixed per-thread shares, idle and with another process on the cores.

    .venv/bin/python benchmarks/work_sharing.py [--models efficientnet-lite0,mobilenet_v3_large,resnet-conv]
        [--batch 1,8] [--duty 0.2] [--period-ms 5] [--rounds 10] [--json F]

The same model built twice by `convhub compile`'s pipeline: "tvm" (parallel loops take guided chunks from a shared
counter, compile.schedules.work_sharing, the default) and "tvm-static" (TVM's fixed shares, `parallel="static"`),
next to ONNX Runtime, interleaved in one process (compile.bench). Each model and batch runs twice: idle, then with a
competing process that busy-loops `duty` of every `period` on one core (as the server's event loop does beside its
compute threads). Prints a markdown table with the ratios.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKENDS = ["onnxruntime", "tvm", "tvm-static"]


def _hog(duty: float, period_s: float, stop) -> None:
    """Busy-loop `duty` of every `period_s`, sleep the rest, until `stop` is set."""
    busy, idle = duty * period_s, (1 - duty) * period_s
    while not stop.is_set():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < busy:
            pass
        time.sleep(idle)


class Competitor:
    """A process taking `duty` of one core while the block runs (duty 0: none)."""

    def __init__(self, duty: float, period_ms: float):
        self.duty, self.period = duty, period_ms / 1e3
        self._stop = mp.Event()
        self._proc: mp.Process | None = None

    def __enter__(self) -> "Competitor":
        if self.duty > 0:
            self._proc = mp.Process(target=_hog, args=(self.duty, self.period, self._stop), daemon=True)
            self._proc.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._stop.set()
            self._proc.join(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet-lite0,mobilenet_v3_large,resnet-conv")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--duty", type=float, default=0.2, help="share of one core the competing process takes")
    ap.add_argument("--period-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=0.25)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not 0 <= args.duty < 1:
        ap.error(f"--duty must be in [0, 1), got {args.duty}")

    import hub
    from compile import bench
    from compile.bench_cli import _load_model

    threads = os.cpu_count() or 1
    print(f"# Work sharing vs fixed shares: {bench.machine_line()}; competing process: {args.duty:.0%} of one core "
          f"in {args.period_ms:g} ms periods\n")
    print("| model | batch | competitor | ORT ms | TVM shared ms | TVM static ms | shared/ORT | static/ORT "
          "| shared/static |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        module = _load_model(name)
        size = int(hub.info(name).preprocess.input_size)
        cache: dict = {}
        for batch in [int(b) for b in args.batch.split(",")]:
            for duty in (0.0, args.duty):
                with Competitor(duty, args.period_ms):
                    res = bench.benchmark(name, BACKENDS, [batch], module=module, size=size, rounds=args.rounds,
                                          seconds=args.seconds, threads=threads, cache=cache)
                by = {r.backend: r for r in res}
                bad = [f"{b}: {by[b].error}" for b in BACKENDS if by[b].error]
                if bad:
                    raise SystemExit("; ".join(bad))
                ort, shared, static = (by[b].p50_ms for b in BACKENDS)
                rows.append(dict(model=name, batch=batch, duty=duty, ort_ms=ort, shared_ms=shared, static_ms=static))
                print(f"| {name} | {batch} | {'none' if duty == 0 else f'{duty:.0%} of a core'} | {ort:.2f} | "
                      f"{shared:.2f} | {static:.2f} | {shared / ort:.2f} | {static / ort:.2f} | "
                      f"**{shared / static:.2f}** |", flush=True)
        del module
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=bench.machine_line(), duty=args.duty,
                                                   period_ms=args.period_ms, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
