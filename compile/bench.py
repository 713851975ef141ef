"""Side-by-side CPU benchmark of one hub model on several backends (torch, onnxruntime, tvm, ...).

Every backend gets the same input arrays; measurement is interleaved round by round (backend order
rotates each round) so that load from other processes on this shared machine hits all backends alike.
Backends plug in through `BACKENDS`: name -> factory(ctx, batch) -> Runner.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class Runner:
    """A prepared backend at one batch size: `run(x)` executes one batch (x: float32 NCHW numpy)."""

    run: Callable[[np.ndarray], Any]
    note: str = ""
    close: Callable[[], None] | None = None
    #: a backend too slow to time properly (untuned TVM) is run at most this many times per round
    max_runs_per_round: int | None = None
    #: ...and in at most this many rounds
    max_rounds: int | None = None


@dataclass
class BenchContext:
    """What factories share: the model, its name, input shape and a scratch directory."""

    name: str
    module: Any
    size: int
    threads: int
    workdir: Path
    target: str | None = None
    tvm_db: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """Measured figures of one backend at one batch size (latencies in ms, memory in MiB)."""

    backend: str
    batch: int
    runs: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    setup_s: float
    peak_rss_delta_mib: float
    note: str = ""
    ratio_to_fastest: float = 1.0
    error: str | None = None


# --------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------

def _torch_factory(ctx: BenchContext, batch: int) -> Runner:
    import torch

    torch.set_num_threads(ctx.threads)
    module = ctx.module

    def run(x: np.ndarray):
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return Runner(run, note=f"eager, {ctx.threads} threads")


def _onnx_path(ctx: BenchContext) -> Path:
    if "onnx" not in ctx.cache or not Path(ctx.cache["onnx"]).exists():
        from compile.onnx_export import export_onnx

        ctx.cache["onnx"] = export_onnx(ctx.module, ctx.workdir / f"{ctx.name}.onnx", dynamic_batch=True, max_batch=64)
    return Path(ctx.cache["onnx"])


def _ort_factory(ctx: BenchContext, batch: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = ctx.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(_onnx_path(ctx)), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    return Runner(lambda x: sess.run(None, {in_name: x}), note=f"CPUExecutionProvider, {ctx.threads} threads")


def _tvm_build(ctx: BenchContext, batch: int, schedule: str, precision: str = "fp32", parallel: str = "shared"):
    """(Compiled or None, note) for a static batch.

    schedule: "rules" (our schedule rules, what `convhub compile` builds; `precision` "bf16" as its --precision
    bf16; `parallel` "static": TVM's fixed per-thread shares instead of compile.schedules.work_sharing), "tuned"
    (--tvm-db or the shipped MetaSchedule database) or "stock" (TVM's default pipeline, no schedules).
    """
    from compile import tuning

    preset, target = _preset_target(ctx.target)
    shape = (batch, 3, ctx.size, ctx.size)
    db = None
    if schedule == "tuned":
        db = Path(ctx.tvm_db) if ctx.tvm_db else tuning.find_database(ctx.name, preset, shape, target=target)
        if db is None:
            return None, f"no tuned database for {ctx.name} / {preset} / {tuning.shape_key(shape)}"
    bkey = f"tvm-{schedule}-{precision}-{parallel}-{batch}"
    if bkey not in ctx.cache:
        mkey = f"tvm-mod-{batch}"
        if mkey not in ctx.cache:
            ctx.cache[mkey] = tuning.export_relax(ctx.module, shape, ctx.name)
        mod, params = ctx.cache[mkey]
        ctx.cache[bkey] = tuning.build(mod, params, target, db, schedule=schedule, precision=precision,
                                       parallel=parallel)
    notes = {"rules": "convhub schedule rules, no tuning" + (f", {precision}" if precision != "fp32" else "")
             + (", fixed per-thread shares" if parallel == "static" else ""),
             "stock": "TVM default pipeline (no schedules)"}
    return ctx.cache[bkey], (f"tuned db {db.name if ctx.tvm_db else _short(db)}" if db else notes[schedule])


def _short(p: Path) -> str:
    try:
        return str(p.relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return str(p)


def _preset_target(preset: str | None):
    from compile import targets

    p = targets.get_preset(preset or "host")
    return p.name, p.target


def _tvm_factory(ctx: BenchContext, batch: int, parallel: str = "shared") -> Runner:
    compiled, note = _tvm_build(ctx, batch, "rules", parallel=parallel)
    return Runner(compiled.run_numpy, note=note)  # numpy out, like ORT


def _tvm_bf16_factory(ctx: BenchContext, batch: int) -> Runner:
    from compile.schedules.bf16 import supports_bf16
    from compile.tuning import make_target
    if not supports_bf16(make_target(_preset_target(ctx.target)[1])):
        raise RuntimeError("bf16 needs a CPU with AVX512_BF16 (Zen 4, Sapphire Rapids ...); this target has none")
    compiled, note = _tvm_build(ctx, batch, "rules", "bf16")
    return Runner(compiled.run_numpy, note=note)


def _tvm_tuned_factory(ctx: BenchContext, batch: int) -> Runner:
    compiled, note = _tvm_build(ctx, batch, "tuned")
    if compiled is not None:
        return Runner(compiled.run_numpy, note=note)
    if batch > 1:
        # Tuned schedules are per static shape; with only a batch-1 database, running the batch-1 kernels
        # image by image is far faster than untuned batch-B kernels, and is what a server would do.
        one, note1 = _tvm_build(ctx, 1, "tuned")
        if one is not None:
            def run(x: np.ndarray):
                return [one.run_numpy(x[i:i + 1]) for i in range(x.shape[0])]
            return Runner(run, note=f"batch-1 {note1}, looped x{batch}")
    raise RuntimeError(note + " (run `convhub tune`, or use backend tvm)")


def _tvm_untuned_factory(ctx: BenchContext, batch: int) -> Runner:
    compiled, note = _tvm_build(ctx, batch, "stock")
    return Runner(compiled.run_numpy, note=note, max_runs_per_round=1, max_rounds=3)


#: backend name -> factory(ctx, batch) -> Runner. Other packages add theirs (e.g. "litert") here.
BACKENDS: dict[str, Callable[[BenchContext, int], Runner]] = {
    "torch": _torch_factory,
    "onnxruntime": _ort_factory,
    "tvm": _tvm_factory,
    # "tvm" with TVM's fixed per-thread shares instead of compile.schedules.work_sharing
    "tvm-static": lambda ctx, batch: _tvm_factory(ctx, batch, parallel="static"),
    "tvm-bf16": _tvm_bf16_factory,
    "tvm-tuned": _tvm_tuned_factory,
    "tvm-untuned": _tvm_untuned_factory,
}


def register_backend(name: str, factory: Callable[[BenchContext, int], Runner]) -> None:
    """Add (or replace) a backend: factory(ctx, batch) -> Runner."""
    BACKENDS[name] = factory


def _load_plugins() -> None:
    """Backends living in other modules register themselves on import (optional, e.g. compile.litert_bench)."""
    import importlib

    for mod in ("compile.litert_bench",):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


# --------------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------------

class _RssPeak:
    """Samples this process's RSS in a thread; `.peak` is the highest value seen (bytes)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._proc, self._interval = psutil.Process(), interval
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return (self.peak - self.start) / 2**20


def benchmark(name: str, backends: list[str], batches: list[int], *, module=None, size: int | None = None,
              rounds: int = 15, seconds: float = 0.25, threads: int | None = None, target: str | None = None,
              tvm_db: str | None = None, random_init: bool = False, log=None,
              cache: dict[str, Any] | None = None) -> list[Result]:
    """Measure `backends` on `name` at each batch size, interleaved; returns one Result per (backend, batch).

    Peak memory is the RSS high-water mark during a backend's setup and warm-up minus RSS before it
    (all backends share one process, so this is what each one adds; torch's eager module is shared and
    counted before any backend starts). `cache` (a dict the caller keeps) lets several calls on the
    same model share exports and TVM builds.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    _load_plugins()
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; available: {', '.join(sorted(BACKENDS))}")
    threads = threads or os.cpu_count() or 1
    if module is None:
        from compile.bench_cli import _load_model

        module = _load_model(name, random_init)
    if size is None:
        import hub

        size = int(hub.info(name).preprocess.input_size)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="convhub-bench-") as tmp:
        ctx = BenchContext(name, module, size, threads, Path(tmp), target, tvm_db,
                           cache if cache is not None else {})
        rng = np.random.default_rng(0)
        for batch in batches:
            x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
            runners: dict[str, Runner] = {}
            setup: dict[str, tuple[float, float]] = {}
            errors: dict[str, str] = {}
            for b in backends:
                gc.collect()
                mem = _RssPeak()
                t0 = time.perf_counter()
                try:
                    r = BACKENDS[b](ctx, batch)
                    r.run(x)  # warm-up inside the memory window: first-run allocations count
                    runners[b] = r
                except Exception as exc:  # one broken backend must not hide the others' numbers
                    errors[b] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                    log(f"[bench] {b} batch {batch}: {errors[b]}")
                setup[b] = (time.perf_counter() - t0, mem.stop())
                if b in runners:
                    log(f"[bench] {b} batch {batch}: ready in {setup[b][0]:.1f} s ({runners[b].note})")
            times: dict[str, list[float]] = {b: [] for b in runners}
            order = list(runners)
            for rnd in range(rounds):
                order = order[1:] + order[:1]
                for b in order:
                    r = runners[b]
                    if r.max_rounds is not None and rnd >= r.max_rounds:
                        continue
                    if r.max_rounds is None:
                        # Untimed settle call: the backend that ran before leaves its worker threads spinning
                        # for a while, and the first call after a switch shares the cores with them (a TVM run
                        # right after ORT's took 78 ms instead of 14 ms). Single-backend serving never sees that.
                        r.run(x)
                    end = time.perf_counter() + seconds
                    n = 0
                    while True:
                        t = time.perf_counter()
                        r.run(x)
                        times[b].append(time.perf_counter() - t)
                        n += 1
                        if time.perf_counter() >= end or (r.max_runs_per_round and n >= r.max_runs_per_round):
                            break
            for b in backends:
                if b in errors:
                    results.append(Result(b, batch, 0, float("nan"), float("nan"), float("nan"), 0.0,
                                          setup[b][0], setup[b][1], error=errors[b]))
                    continue
                ts = np.array(times[b]) * 1e3
                p50 = float(np.percentile(ts, 50))
                results.append(Result(b, batch, len(ts), p50, float(np.percentile(ts, 99)), float(ts.mean()),
                                      batch / (p50 / 1e3), setup[b][0], setup[b][1], runners[b].note))
            for r in runners.values():
                if r.close:
                    r.close()
            runners.clear()
    for batch in batches:
        ok = [r for r in results if r.batch == batch and r.error is None]
        if ok:
            fastest = min(r.p50_ms for r in ok)
            for r in ok:
                r.ratio_to_fastest = r.p50_ms / fastest
    return results


def format_table(results: list[Result], title: str = "") -> str:
    """Markdown table of the results (ratios are p50 latency / fastest p50 at that batch)."""
    lines = [title] if title else []
    lines += ["| backend | batch | p50 ms | p99 ms | images/s | x fastest | peak RSS +MiB | runs | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.backend} | {r.batch} | - | - | - | - | {r.peak_rss_delta_mib:.0f} | 0 | "
                         f"failed: {r.error} |")
            continue
        lines.append(f"| {r.backend} | {r.batch} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.images_per_s:.1f} | "
                     f"{r.ratio_to_fastest:.2f} | {r.peak_rss_delta_mib:.0f} | {r.runs} | {r.note} |")
    return "\n".join(lines)


def plot(results: list[Result], path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bar chart: p50 latency (log scale) per batch size and backend, ratio to fastest on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r.batch for r in results})
    backends = list(dict.fromkeys(r.backend for r in results))
    width = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(batches) * max(1, len(backends)) / 2, 4.5))
    for i, b in enumerate(backends):
        xs, ys, labels = [], [], []
        for j, batch in enumerate(batches):
            r = next((r for r in results if r.backend == b and r.batch == batch and r.error is None), None)
            if r is None:
                continue
            xs.append(j + (i - (len(backends) - 1) / 2) * width)
            ys.append(r.p50_ms)
            labels.append(f"{r.ratio_to_fastest:.1f}x")
        bars = ax.bar(xs, ys, width, label=b)
        for bar, lab in zip(bars, labels):
            ax.annotate(lab, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("p50 latency per batch (ms, log)")
    ax.set_title(title or "latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def machine_line() -> str:
    """'date, CPU model, cores, load average' for table captions."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{time.strftime('%Y-%m-%d %H:%M')}, {model}, {os.cpu_count()} cores, load average {load:.1f}"


def main_from_args(args) -> int:
    """`convhub bench` implementation (args from compile.bench_cli)."""
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results = benchmark(args.name, backends, args.batch, size=args.size, rounds=args.rounds, seconds=args.seconds,
                        threads=args.threads, target=args.target, tvm_db=args.tvm_db, random_init=args.random_init)
    title = f"{args.name}: {machine_line()}"
    print(format_table(results, title))
    if args.plot:
        print(f"plot: {plot(results, args.plot, title)}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.error is None for r in results) else 1
