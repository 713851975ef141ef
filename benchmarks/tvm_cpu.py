"""TVM on this CPU against ONNX Runtime and PyTorch: one table per run, side by side, with ratios.

    .venv/bin/python benchmarks/tvm_cpu.py [--models efficientnet-lite0,mobilenet_v3_large,resnet-conv]
        [--batch 1,8] [--untuned-batches 1] [--plot perf.png] [--json perf.json]

Per model and batch: ORT / PyTorch / TVM (convhub schedule rules: what `convhub compile` builds, no
tuning) p50 latency, ratio to ORT and PyTorch, and the fraction of this CPU's FP32 peak; optionally
TVM's stock pipeline (--untuned-batches) and the shipped MetaSchedule databases (--tuned); on CPUs with AVX512_BF16
also the bf16 build (`convhub compile --precision bf16`, skip with --no-bf16). The peak is computed from
/proc/cpuinfo (cores x FMA units x SIMD lanes x 2 flops x clock) and also measured (torch sgemm).
All backends of one model/batch run interleaved in one process: the 2 cores are shared with other
work, so absolute numbers move between runs while the ratios hold much better.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def conv_flops(module, size: int) -> float:
    """FLOPs (2 per multiply-add) of one image through `module`'s Conv2d/Linear layers."""
    import torch

    total = [0.0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += 2.0 * out.numel() / out.shape[0] * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, torch.nn.Linear):
            total[0] += 2.0 * out.numel() / out.shape[0] * m.in_features

    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        module(torch.zeros(1, 3, size, size))
    for h in hs:
        h.remove()
    return total[0]


def theoretical_peak(cpuinfo: str | None = None, cores: int | None = None) -> tuple[float, str]:
    """(GFLOP/s, how) from /proc/cpuinfo (or `cpuinfo` text): cores x 2 FMA units x lanes (8 AVX2 / 16 AVX-512)
    x 2 x MHz. AMD Zen 4 (family 25 with AVX-512) runs 512-bit FMAs on its two 256-bit units in two halves, so its
    FMA units are 8 lanes wide even for AVX-512 code."""
    from compile.targets import cpuinfo_fields

    info = cpuinfo_fields(cpuinfo)
    flags = info.get("flags", "").split()
    mhz = float(info.get("cpu MHz") or 0)
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    note = ""
    if lanes == 16 and info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25":
        lanes, note = 8, " (Zen 4: AVX-512 on 256-bit FMA units)"
    cores = cores or os.cpu_count() or 1
    peak = cores * 2 * lanes * 2 * mhz / 1e3
    return peak, (f"{cores} cores x 2 FMA units x {lanes} fp32 lanes{note} x 2 flops x {mhz:.0f} MHz "
                  f"= {peak:.0f} GFLOP/s")


def measured_peak(threads: int) -> float:
    """GFLOP/s of torch's fp32 sgemm (1024^3), best of a few: the practical ceiling on this machine."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 1024 ** 3 / best / 1e9


def main(argv: list[str] | None = None) -> int:
    """Run the table; prints markdown to stdout."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet-lite0,mobilenet_v3_large,resnet-conv")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--untuned-batches", default="",
                    help="batches at which TVM's stock pipeline (no schedules) also runs; it is very slow")
    ap.add_argument("--tuned", action="store_true", help="also run the shipped MetaSchedule databases (tvm-tuned)")
    ap.add_argument("--no-bf16", action="store_true",
                    help="skip the bf16 build (TVM bf16, `convhub compile --precision bf16`; only on AVX512_BF16 CPUs)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=0.25)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from compile import bench, targets
    from compile.bench_cli import _load_model
    from compile.schedules.bf16 import supports_bf16

    threads = os.cpu_count() or 1
    peak, how = theoretical_peak()
    mpeak = measured_peak(threads)
    print(f"# TVM CPU table: {bench.machine_line()}")
    print(f"FP32 peak: {how}; torch sgemm 1024^3 measured {mpeak:.0f} GFLOP/s\n")
    batches = [int(b) for b in args.batch.split(",")]
    untuned_b = {int(b) for b in args.untuned_batches.split(",") if b}
    bf16 = not args.no_bf16 and supports_bf16(targets.get_preset("host").tvm_target())
    all_rows = []
    print("| model | batch | GFLOP/img | ORT ms | PyTorch ms | TVM ms | TVM/ORT | TVM/PyTorch | TVM % of peak "
          "| ORT % of peak | TVM stock ms | TVM tuned-db ms | TVM bf16 ms | bf16/ORT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        module = _load_model(name)
        import hub

        size = int(hub.info(name).preprocess.input_size)
        gflop = conv_flops(module, size) / 1e9
        cache: dict = {}  # exports and TVM builds shared by the batch sizes of this model
        for batch in batches:
            backends = (["onnxruntime", "torch", "tvm"] + (["tvm-untuned"] if batch in untuned_b else [])
                        + (["tvm-tuned"] if args.tuned else []) + (["tvm-bf16"] if bf16 else []))
            res = bench.benchmark(name, backends, [batch], module=module, size=size, rounds=args.rounds,
                                  seconds=args.seconds, threads=threads, cache=cache)
            by = {r.backend: r for r in res}
            all_rows += [dict(r.__dict__, model=name, gflop=gflop) for r in res]

            def ms(b):
                r = by.get(b)
                return "n/a" if r is None or r.error else f"{r.p50_ms:.1f}" if r.p50_ms >= 100 else f"{r.p50_ms:.2f}"

            def ratio(a, b):
                ra, rb = by.get(a), by.get(b)
                if not ra or not rb or ra.error or rb.error:
                    return "n/a"
                return f"{ra.p50_ms / rb.p50_ms:.2f}"

            def frac(b):
                r = by.get(b)
                if not r or r.error:
                    return "n/a"
                return f"{100 * gflop * batch / (r.p50_ms / 1e3) / peak:.1f} %"

            print(f"| {name} | {batch} | {gflop:.2f} | {ms('onnxruntime')} | {ms('torch')} | {ms('tvm')} | "
                  f"{ratio('tvm', 'onnxruntime')} | {ratio('tvm', 'torch')} | {frac('tvm')} | {frac('onnxruntime')} | "
                  f"{ms('tvm-untuned')} | {ms('tvm-tuned')} | {ms('tvm-bf16')} | {ratio('tvm-bf16', 'onnxruntime')} |",
                  flush=True)
        del module
    # This VM switches between a fast and a slow state for minutes at a time (docs/performance.md): a ceiling
    # that moved between start and end says the run straddled both, and its ratios are less comparable
    mpeak_end = measured_peak(threads)
    print(f"\ntorch sgemm 1024^3 at the end: {mpeak_end:.0f} GFLOP/s (start: {mpeak:.0f})")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=bench.machine_line(), peak=how, measured_peak=mpeak,
                                                   measured_peak_end=mpeak_end, rows=all_rows), indent=2))
    if args.plot:
        res = [bench.Result(**{k: v for k, v in r.items() if k not in ("model", "gflop")}) for r in all_rows]
        for r, row in zip(res, all_rows):
            r.backend = f"{row['model']}/{r.backend}"
        bench.plot(res, args.plot, "TVM vs ORT vs PyTorch on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
