"""MetaSchedule tuning for CPU targets, the shipped tuned databases, and the apply path.

A database is a MetaSchedule JSON work directory (`database_workload.json`,
`database_tuning_record.json`) plus our `meta.json`. It is applied with exactly the pipeline the
compile core uses::

    relax.get_pipeline("static_shape_tuning", target=T, total_trials=0, work_dir=DB,
                       cpu_weight_prepack=True)

Records match by the structural hash of each fused PrimFunc, so a database only applies to a module
produced the same way (torch.export -> from_exported_program(keep_params_as_input=True), same
static input shape, cpu_weight_prepack=True). We tune with our own call into MetaSchedule rather
than that pipeline's tuning step because the pipeline gives no control over builder/runner
time-outs, and on two busy cores the defaults lose whole rounds of candidates.
"""
from __future__ import annotations

import inspect
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


DATABASES_DIR = Path(__file__).resolve().parent / "databases"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
META_FILE = "meta.json"

#: The target the shipped x86 databases were tuned for (this machine: AMD EPYC Zen 3, AVX2+FMA, 2 cores);
#: compile.targets' "host" preset resolves to the same dict here.
HOST_X86_TARGET: dict[str, Any] = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}
#: The compile core applies databases with cpu_weight_prepack=<this>; our records are tuned that way.
CPU_WEIGHT_PREPACK = True


def shape_key(input_shape: Sequence[int]) -> str:
    """'1x3x224x224' for (1, 3, 224, 224): the static input shape part of a database's name."""
    return "x".join(str(int(d)) for d in input_shape)


def _canonical_model(model_name: str) -> str:
    """Resolve registry aliases (resnet-conv -> resnet50) so both names find the same database."""
    try:
        import hub

        entry = hub.info(model_name)
        return getattr(entry, "alias_of", None) or entry.name
    except Exception:  # the registry is optional here: an unknown name simply has no database
        return model_name


def _model_names(model_name: str) -> set[str]:
    return {model_name, _canonical_model(model_name)}


def _target_matches(meta_target: dict[str, Any], target: Any) -> bool:
    """Same kind/mcpu/triple: schedules tuned for one CPU are valid (if not optimal) elsewhere only then."""
    if target is None:
        return False
    try:
        import tvm

        t = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
        cfg = t.export() if hasattr(t, "export") else {}
        mine = {k: cfg.get(k) for k in ("kind", "mcpu", "mtriple")}
    except Exception:
        if not isinstance(target, dict):
            return False
        mine = {k: target.get(k) for k in ("kind", "mcpu", "mtriple")}
    theirs = {k: meta_target.get(k) for k in ("kind", "mcpu", "mtriple")}
    return str(mine["kind"]) == str(theirs["kind"]) and str(mine["mcpu"]) == str(theirs["mcpu"]) and (
        (mine["mtriple"] or None) == (theirs["mtriple"] or None) or theirs["mtriple"] is None)


def is_database(path: Path) -> bool:
    """True when `path` is a MetaSchedule JSON database directory with at least one tuning record."""
    rec = path / RECORD_FILE
    return (path / WORKLOAD_FILE).is_file() and rec.is_file() and rec.stat().st_size > 0


def read_meta(db: Path) -> dict[str, Any]:
    """The database's meta.json (model, presets, input_shape, target, trials, latencies), or {}."""
    try:
        return json.loads((Path(db) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def find_database(model_name: str, preset: str, input_shape: tuple, *, target: Any = None,
                  root: Path | None = None) -> Path | None:
    """The shipped tuned database for `model_name` on `preset` at the static `input_shape`, or None.

    Looks for `databases/<model>/<preset>/<shape>` first, then any database of the same model and
    shape whose meta.json lists `preset` among its presets or whose target matches `target`
    (kind/mcpu/mtriple). Apply it with `relax.get_pipeline("static_shape_tuning", target=...,
    total_trials=0, work_dir=DB, cpu_weight_prepack=True)`.
    """
    root = Path(root) if root is not None else DATABASES_DIR
    if not root.is_dir():
        return None
    names = _model_names(model_name)
    skey = shape_key(input_shape)
    for name in sorted(names):
        cand = root / name / preset / skey
        if is_database(cand):
            return cand
    for name in sorted(names):
        model_dir = root / name
        if not model_dir.is_dir():
            continue
        for cand in sorted(model_dir.glob(f"*/{skey}")):
            if not is_database(cand):
                continue
            meta = read_meta(cand)
            if preset in meta.get("presets", []) or _target_matches(meta.get("target", {}), target):
                return cand
    return None


def database_dir_for(model_name: str, preset: str, input_shape: Sequence[int], root: Path | None = None) -> Path:
    """Where `find_database` looks first for this model/preset/shape (used when shipping a database)."""
    root = Path(root) if root is not None else DATABASES_DIR
    return root / _canonical_model(model_name) / preset / shape_key(input_shape)


# --------------------------------------------------------------------------------------------------
# Relax module preparation, tuning, apply
# --------------------------------------------------------------------------------------------------

def make_target(target: Any):
    """A tvm Target from a dict / Target (strings like 'llvm -mcpu=..' are refused by TVM 0.27)."""
    import tvm

    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


def export_relax(module, input_shape: Sequence[int], model_name: str = "model"):
    """torch module -> (Relax IRModule with params as inputs, list of numpy params); the batch is static for
    input_shape[0] == 1, else dynamic in 1..input_shape[0] (as `convhub compile --max-batch N` builds).

    Goes through compile.export (the compile core's export/import) so tuned records hash the same as
    the kernels `convhub compile --max-batch 1` builds.
    """
    from compile import export as export_mod

    ep, _, _, _ = export_mod.export_program(module, model_name=model_name, input_shape=tuple(input_shape[1:]),
                                            max_batch=int(input_shape[0]))
    mod, params, _ = export_mod.import_program(ep, model_name=model_name)
    return mod, params


def prepare_for_tuning(mod, target):
    """The static_shape_tuning pipeline up to its tuning step (cpu_weight_prepack=True).

    Must stay in step with tvm.relax.pipeline.static_shape_tuning_pipeline: tasks extracted from
    anything else hash differently and the apply step would find no records.
    """
    import tvm
    from tvm import relax

    target = make_target(target)
    with target:
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod)


def apply_database(mod, target, work_dir: Path | str, *, prepack: bool = True):
    """Apply a tuning database (no tuning; compile.build uses this too); returns the scheduled module."""
    from tvm import relax

    return relax.get_pipeline("static_shape_tuning", target=make_target(target), total_trials=0,
                              work_dir=str(work_dir), cpu_weight_prepack=prepack)(mod)


@dataclass
class Compiled:
    """A built Relax VM plus its (pre-packed) params: call(x) -> output(s) as numpy."""

    vm: Any
    params: list
    dev: Any

    def __call__(self, x):
        import tvm

        out = self.vm["main"](tvm.runtime.tensor(x, self.dev), *self.params)
        return out

    def run_numpy(self, x):
        """Run and convert every output to numpy (tuple outputs become a list)."""
        from .artifact import host_array
        out = self(x)
        if hasattr(out, "numpy"):
            return host_array(out)
        return [host_array(o) for o in out]


def build(mod, params: list, target, work_dir: Path | str | None = None, *, schedule: str = "rules",
          precision: str = "fp32", parallel: str = "shared") -> Compiled:
    """Build for the host CPU. With `work_dir`: its tuned schedules, weights pre-packed. Without: our schedule
    rules (compile.cpu_pipeline, schedule="rules"; `precision` "bf16" as `convhub compile --precision bf16`;
    `parallel` "static" for TVM's fixed per-thread shares instead of compile.schedules.work_sharing) or TVM's
    stock default pipeline (schedule="stock")."""
    import tvm
    from tvm import relax

    from .build import compile_relax, params_transform_of

    target = make_target(target)
    dev = tvm.cpu()
    ex = compile_relax(mod, target, database=Path(work_dir) if work_dir is not None else None, prepack=True,
                       schedule=schedule, precision=precision, parallel=parallel)
    vm = relax.VirtualMachine(ex, dev)
    tparams = [tvm.runtime.tensor(p.numpy() if hasattr(p, "numpy") else p, dev) for p in params]
    transform = params_transform_of(ex)
    if transform:
        tparams = list(vm[transform](tparams))
    return Compiled(vm, tparams, dev)


def count_records(work_dir: Path | str) -> dict[int, int]:
    """Tuning records per workload index in a JSON database (0 for an absent database)."""
    counts: dict[int, int] = {}
    path = Path(work_dir) / RECORD_FILE
    if not path.is_file():
        return counts
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            idx = json.loads(line)[0]
            counts[idx] = counts.get(idx, 0) + 1
    return counts


def _fast_stack(context: int = 1) -> list:
    """inspect.stack() without source lookups (frames, file names and line numbers only)."""
    frame = sys._getframe(1)
    out = []
    while frame is not None:
        out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, None, None))
        frame = frame.f_back
    return out


def preload_tensor_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin (MetaSchedule's TuneContext does) in seconds instead of minutes.

    Its hundreds of TVMScript intrinsics each call inspect.stack(), whose source lookup scans
    sys.modules per frame: with torch loaded that took over 10 minutes of CPU on this 2-core machine.
    The parser only needs the frames, so a source-free stack is swapped in for the import.
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    orig = inspect.stack
    inspect.stack = _fast_stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = orig


def _worker_init() -> None:
    """Builder/runner worker start-up: MetaSchedule's default_build imports tensor_intrin in every
    fresh worker (LocalBuilder restarts its pool for each batch); the slow import ran into the build
    time-out on this busy machine and lost whole batches."""
    preload_tensor_intrinsics()


@dataclass
class TuneReport:
    """What a tuning run did."""

    tasks: int
    tasks_tuned: int
    trials_run: int
    trials_before: int
    seconds: float
    failures: int = 0
    timed_out: bool = False
    round_size: int = 0
    per_task_best_ms: dict[str, float] = field(default_factory=dict)


class _TimeUp(Exception):
    pass


def _progress_callback(total: int, task_names: list[str], out, report: TuneReport, deadline: float | None):
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    t0 = time.time()

    @derived_object
    class Progress(PyMeasureCallback):  # prints one line per measured batch: long jobs must show life
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            ok, best = 0, float("inf")
            for br, rr in zip(builder_results, runner_results):
                if br.error_msg is None and rr.error_msg is None and rr.run_secs:
                    ok += 1
                    best = min(best, sum(float(s) for s in rr.run_secs) / len(rr.run_secs) * 1e3)
            n = len(measure_candidates)
            report.trials_run += n
            report.failures += n - ok
            name = task_names[task_id] if task_id < len(task_names) else str(task_id)
            if best < report.per_task_best_ms.get(name, float("inf")):
                report.per_task_best_ms[name] = best
            print(f"[tune] {report.trials_run}/{total} trials  {time.time() - t0:7.0f} s  task {task_id + 1}/"
                  f"{len(task_names)} {name}: {ok}/{n} ok, batch best {best:.3f} ms, task best "
                  f"{report.per_task_best_ms.get(name, float('nan')):.3f} ms", file=out, flush=True)
            if deadline is not None and time.time() > deadline and report.trials_run >= report.round_size:
                # MetaSchedule joins a round's results task by task; stopping only after a whole round keeps
                # every measured candidate of it.
                report.timed_out = True
                raise _TimeUp("tuning time limit reached")

    return Progress()


def tune(mod, target, work_dir: Path | str, *, total_trials: int, max_trials_per_task: int | None = None,
         num_trials_per_iter: int = 32, builder_timeout: float = 120.0, runner_timeout: float = 60.0,
         builder_workers: int | None = None, population_size: int = 256, seed: int | None = None,
         time_limit: float | None = None, strategy: str = "evolutionary", top_tasks: int | None = None,
         out=sys.stdout) -> TuneReport:
    """MetaSchedule-tune a Relax module (pre-pipeline) into the JSON database at `work_dir`.

    Resumable: `total_trials` and `max_trials_per_task` count records already in `work_dir`, so an
    interrupted run started again with the same arguments only does the remainder (and the
    evolutionary search starts from the best records so far). `time_limit` (seconds) stops after the
    batch that crosses it, keeping every record measured so far. `strategy="replay-trace"` samples the
    design space at random with no cost model: on a loaded 2-core machine the evolutionary search
    spends minutes per round before measuring anything, which only pays off past ~32 trials per task.
    Time-outs are deliberate: on two busy
    cores LLVM builds of a fused conv take tens of seconds and defaults (30 s) fail whole batches.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import relax_integration as ri

    preload_tensor_intrinsics()
    target = make_target(target)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prepared = prepare_for_tuning(mod, target)
    tasks = ri.extract_tasks(prepared, target)
    per_task_cap = max_trials_per_task or total_trials

    # Map existing records to tasks by committing each task's module to the same database.
    db = ms.database.JSONDatabase(work_dir=str(work_dir), module_equality="structural")
    done: list[int] = []
    for t in tasks:
        n = len(db.get_top_k(db.commit_workload(t.dispatched[0]), per_task_cap)) if db.has_workload(
            t.dispatched[0]) else 0
        done.append(n)
    before = sum(done)
    remaining = max(0, total_trials - before)
    selected = [t for t, n in zip(tasks, done) if n < per_task_cap]
    if top_tasks is not None:
        selected = sorted(selected, key=_task_cost, reverse=True)[:top_tasks]
    report = TuneReport(tasks=len(tasks), tasks_tuned=len(selected), trials_run=0, trials_before=before, seconds=0.0)
    report.round_size = len(selected) * max(1, min(num_trials_per_iter, remaining))
    print(f"[tune] {len(tasks)} tasks, {before} records already in {work_dir}; {len(selected)} tasks to tune, "
          f"budget {remaining} trials (max {per_task_cap} per task)", file=out, flush=True)
    if remaining == 0 or not selected:
        report.seconds = time.time() - t0
        return report
    # The budget per task left for this run is the cap minus what it already has; MetaSchedule takes one
    # cap for all tasks, so the tasks already part-way use the global remainder to stop early.
    num_trials_per_iter = max(1, min(num_trials_per_iter, remaining))  # a batch must not overshoot the budget
    if strategy == "evolutionary":
        strat = ms.search_strategy.EvolutionarySearch(population_size=population_size, init_min_unmeasured=32)
        cost_model = "xgb"
    elif strategy == "replay-trace":
        strat, cost_model = ms.search_strategy.ReplayTrace(), "random"
    else:
        raise ValueError(f"unknown strategy {strategy!r}; accepted: evolutionary, replay-trace")
    contexts, weights = ri.extracted_tasks_to_tune_contexts(
        extracted_tasks=selected, work_dir=str(work_dir), strategy=strat, seed=seed)
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [
        _progress_callback(remaining, [t.task_name for t in selected], out, report,
                           None if time_limit is None else t0 + time_limit)]
    try:
        _tune_tasks(ms, contexts, weights, work_dir, remaining, per_task_cap, num_trials_per_iter, builder_timeout,
                    runner_timeout, builder_workers, db, callbacks, cost_model)
    except Exception:
        # The callback's stop signal comes back wrapped by the FFI; anything else is a real failure.
        if not report.timed_out:
            raise
        print(f"[tune] time limit of {time_limit:.0f} s reached; records so far are kept", file=out, flush=True)
    report.seconds = time.time() - t0
    return report


def _task_cost(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0])) * task.weight
    except Exception:  # tasks TVM cannot count (no loops) are cheap ones
        return 0.0


def _tune_tasks(ms, contexts, weights, work_dir, remaining, per_task_cap, num_trials_per_iter, builder_timeout,
                runner_timeout, builder_workers, db, callbacks, cost_model) -> None:
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir),
        max_trials_global=remaining, max_trials_per_task=per_task_cap, num_trials_per_iter=num_trials_per_iter,
        builder=ms.builder.LocalBuilder(timeout_sec=builder_timeout, max_workers=builder_workers,
                                        initializer=_worker_init),
        runner=ms.runner.LocalRunner(timeout_sec=runner_timeout, evaluator_config=ms.runner.EvaluatorConfig(
            number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False), initializer=_worker_init),
        database=db, measure_callbacks=callbacks, cost_model=cost_model, module_equality="structural")


def prune_database(src: Path | str, dst: Path | str, keep: int = 1) -> int:
    """Copy `src` to `dst` keeping only the best `keep` valid records per workload; returns records kept.

    Shipped databases stay small this way, and workloads without a valid record are dropped (they
    would only make the apply step look them up for nothing). Workload indices are renumbered.
    """
    src, dst = Path(src), Path(dst)
    workloads = [ln for ln in (src / WORKLOAD_FILE).read_text().splitlines() if ln.strip()]
    best: dict[int, list[tuple[float, str]]] = {}
    for line in (src / RECORD_FILE).read_text().splitlines():
        if not line.strip():
            continue
        idx, rec = json.loads(line)
        secs = rec[1] if len(rec) > 1 else None
        if not secs or any(float(s) >= 1e9 for s in secs):  # failed builds/runs are stored as 1e10 s
            continue
        mean = sum(float(s) for s in secs) / len(secs)
        best.setdefault(idx, []).append((mean, json.dumps(rec)))
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    new_idx: dict[int, int] = {}
    with open(tmp / WORKLOAD_FILE, "w") as fw:
        for old in sorted(best):
            new_idx[old] = len(new_idx)
            fw.write(workloads[old] + "\n")
    kept = 0
    with open(tmp / RECORD_FILE, "w") as fr:
        for old in sorted(best):
            for _, rec in sorted(best[old])[:keep]:
                fr.write(f"[{new_idx[old]}, {rec}]\n")
                kept += 1
    if (src / META_FILE).is_file():
        shutil.copy(src / META_FILE, tmp / META_FILE)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return kept


def write_meta(db: Path | str, **fields: Any) -> None:
    """Merge `fields` into the database's meta.json."""
    meta = read_meta(Path(db))
    meta.update(fields)
    (Path(db) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def time_callable(fn: Callable[[], Any], *, warmup: int = 2, min_runs: int = 5, min_seconds: float = 1.0,
                  max_runs: int = 200) -> list[float]:
    """Latencies in seconds of repeated fn() calls (after warm-up), at least min_runs / min_seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_seconds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times
