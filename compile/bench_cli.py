"""`convhub bench` and `convhub tune` (hub/cli.py registers them through add_commands)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the `bench` and `tune` subcommands."""
    b = sub.add_parser("bench", help="latency / throughput / memory of one model on several backends, side by side",
                       description="Runs every backend on the same inputs, interleaved round by round, and prints "
                                   "p50/p99 latency, images/s, peak memory and ratios against the fastest.")
    b.add_argument("name", help="registry model name, e.g. efficientnet-lite0")
    b.add_argument("--backends", default="torch,onnxruntime,tvm",
                   help="comma-separated backends (default: torch,onnxruntime,tvm)")
    b.add_argument("--batch", type=_int_list, default=[1], help="comma-separated batch sizes (default: 1)")
    b.add_argument("--size", type=int, default=None, help="input side (default: the model's input size)")
    b.add_argument("--target", default=None, help="TVM target preset (default: this host)")
    b.add_argument("--tvm-db", default=None,
                   help="MetaSchedule database for the tvm-tuned backend (default: the shipped one)")
    b.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default: 15)")
    b.add_argument("--seconds", type=float, default=0.25, help="time per backend per round (default: 0.25)")
    b.add_argument("--threads", type=int, default=None, help="threads per backend (default: all cores)")
    b.add_argument("--random-init", action="store_true", help="random weights (speed only; no download)")
    b.add_argument("--plot", default=None, help="write a PNG chart to this path")
    b.add_argument("--json", default=None, help="write the results as JSON to this path")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("tune", help="MetaSchedule-tune a model for a CPU target into a resumable database",
                       description="Tunes every fused operator of the model with MetaSchedule; records go to --db "
                                   "(append-only JSON, resumable: rerun the same command to continue). Long runs: "
                                   "nohup convhub tune ... > tune.log 2>&1 &")
    t.add_argument("name", help="registry model name")
    t.add_argument("--target", default=None, help="target preset (default: this host's x86 target)")
    t.add_argument("--trials", type=int, required=True, help="total trials (records already in --db count)")
    t.add_argument("--db", required=True, help="database directory (created or resumed)")
    t.add_argument("--max-trials-per-task", type=int, default=None, help="cap per task (default: --trials)")
    t.add_argument("--batch", type=int, default=1, help="static batch size (default: 1)")
    t.add_argument("--size", type=int, default=None, help="input side (default: the model's input size)")
    t.add_argument("--trials-per-iter", type=int, default=16, help="candidates measured per round (default: 16)")
    t.add_argument("--builder-timeout", type=float, default=120.0, help="seconds per candidate build (default: 120)")
    t.add_argument("--runner-timeout", type=float, default=60.0, help="seconds per candidate run (default: 60)")
    t.add_argument("--strategy", choices=["evolutionary", "replay-trace"], default="evolutionary",
                   help="search strategy; replay-trace (random sampling, no cost model) is far cheaper per "
                        "round on a small busy machine and as good for <= ~32 trials per task")
    t.add_argument("--top-tasks", type=int, default=None,
                   help="tune only the K kernels with the most FLOPs (results arrive after each full round)")
    t.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (records kept)")
    t.add_argument("--ship", action="store_true",
                   help="also write the pruned best records into compile/databases/ for this model/preset/shape")
    t.add_argument("--measure", action="store_true", help="measure untuned vs tuned latency at the end")
    t.set_defaults(func=_cmd_tune)


def _resolve_target(preset: str | None):
    """(preset name, target dict) from compile.targets; the default is this machine ("host")."""
    from compile import targets

    p = targets.get_preset(preset or "host")
    return p.name, p.target


def _load_model(name: str, random_init: bool = False):
    import hub

    if not random_init:
        try:
            return hub.load(name, progress=False).eval()
        except Exception as exc:  # no network here: fall back to random weights, speed is the same
            print(f"note: {name}: pretrained weights unavailable ({type(exc).__name__}); using random init",
                  file=sys.stderr)
    return hub.load(name, pretrained=False, progress=False).eval()


def _input_size(name: str, size: int | None) -> int:
    if size:
        return size
    import hub

    return int(hub.info(name).preprocess.input_size)


def _cmd_tune(args: argparse.Namespace) -> int:
    from compile import tuning

    preset, target = _resolve_target(args.target)
    size = _input_size(args.name, args.size)
    shape = (args.batch, 3, size, size)
    model = _load_model(args.name)
    print(f"[tune] {args.name} {shape} target {target} -> {args.db}", flush=True)
    mod, params = tuning.export_relax(model, shape, args.name)
    rep = tuning.tune(mod, target, args.db, total_trials=args.trials, max_trials_per_task=args.max_trials_per_task,
                      num_trials_per_iter=args.trials_per_iter, builder_timeout=args.builder_timeout,
                      runner_timeout=args.runner_timeout, time_limit=args.time_limit,
                      strategy=args.strategy, top_tasks=args.top_tasks)
    print(f"[tune] done: {rep.trials_run} trials this run ({rep.failures} failed), {rep.trials_before} before, "
          f"{rep.tasks} tasks, {rep.seconds:.0f} s", flush=True)
    fields = {"model": args.name, "input_shape": list(shape), "target": dict(target) if isinstance(target, dict)
              else str(target), "presets": [preset], "tvm": _tvm_version(),
              "trials": rep.trials_before + rep.trials_run, "tasks": rep.tasks}
    if args.measure:
        import numpy as np

        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        tuned = tuning.build(mod, params, target, args.db)
        t_ms = float(np.median(tuning.time_callable(lambda: tuned(x)))) * 1e3
        untuned = tuning.build(mod, params, target, schedule="stock")  # TVM with no schedules at all
        u_ms = float(np.median(tuning.time_callable(lambda: untuned(x), warmup=1, min_runs=3, min_seconds=0)))
        u_ms *= 1e3
        print(f"[tune] latency untuned {u_ms:.1f} ms, tuned {t_ms:.2f} ms ({u_ms / t_ms:.1f}x)", flush=True)
        fields.update(untuned_ms=round(u_ms, 2), tuned_ms=round(t_ms, 3),
                      measured=time.strftime("%Y-%m-%d %H:%M"))
    tuning.write_meta(Path(args.db), **fields)
    if args.ship:
        dst = tuning.database_dir_for(args.name, preset, shape)
        kept = tuning.prune_database(args.db, dst)
        print(f"[tune] shipped {kept} records to {dst}", flush=True)
    return 0


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def _cmd_bench(args: argparse.Namespace) -> int:
    from compile import bench

    return bench.main_from_args(args)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m compile.bench_cli tune ...`) for when hub/cli.py is not wired yet."""
    parser = argparse.ArgumentParser(prog="convhub")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"convhub: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
