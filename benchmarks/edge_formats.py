"""Edge formats side by side for one model: file size, batch-1 latency on this CPU, drift against fp32 PyTorch.

    .venv/bin/python benchmarks/edge_formats.py [--model efficientnet-lite0] [--threads 2] [--rounds 30]

Exports ONNX (fp32) and LiteRT (fp32, fp16, int8 calibrated on the sample photos) with `convhub export`'s
code, then times PyTorch, onnxruntime and the LiteRT interpreter in interleaved rounds in one process and
prints a Markdown table. Cosine is the worst over photos and stages against fp32 PyTorch; top-1 agreement
uses the checkpoint's own ImageNet classifier (efficientnet-lite0) on the sample photos.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hub  # noqa: E402
from compile.edge_bench import backends, interleaved_latency  # noqa: E402
from compile.edge_export import export_model  # noqa: E402
from compile.quantize import classifier_head, top1_agreement  # noqa: E402
from compile.verify import compare, photo_batch, torch_outputs  # noqa: E402
from hub.samples import sample_photos  # noqa: E402

VARIANTS = [("onnx", None), ("tflite", None), ("tflite", "fp16"), ("tflite", "int8")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--keep", help="keep the exported files in this folder")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse files exported by an earlier run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(args.keep or tempfile.mkdtemp(prefix="edge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calibration"
    calib.mkdir(exist_ok=True)
    for p in sample_photos():
        p.open().save(calib / f"{p.name}.jpg", quality=92)

    module = hub.load(args.model).eval()
    names, x = photo_batch(args.model, len(sample_photos()))
    reference = torch_outputs(module, x, module.feature_info.names)
    head = classifier_head(args.model)
    params_mb = sum(p.numel() * 4 for p in module.parameters()) / 1e6

    files, exports = {}, {}
    for fmt, q in VARIANTS:
        label = f"{'ONNX' if fmt == 'onnx' else 'LiteRT'} {q or 'fp32'}"
        out = work / f"{args.model}{'-' + q if q else ''}.{fmt}"
        files[label] = out
        if args.reuse and out.is_file() and Path(str(out) + ".manifest.json").is_file():
            continue
        t0 = time.perf_counter()
        # fp16/int8 quantize the fp32 .tflite (as `convhub export` would after converting it)
        export_model(args.model, fmt, out, quantize=q, calibration=calib if q == "int8" else None,
                     float_model=files.get("LiteRT fp32") if q else None, log=lambda s: None)
        exports[label] = time.perf_counter() - t0
        files[label] = out
        print(f"exported {label}: {out.stat().st_size / 1e6:.2f} MB in {exports[label]:.0f} s", file=sys.stderr)

    make = backends()

    def torch_run(a: np.ndarray):
        with torch.inference_mode():
            return {k: v.numpy() for k, v in module(torch.from_numpy(a)).items()}

    def torch_run_1(a: np.ndarray):
        # one thread: OpenMP's barriers suffer most when other processes share the cores
        torch.set_num_threads(1)
        try:
            return torch_run(a)
        finally:
            torch.set_num_threads(args.threads)

    runners = {"PyTorch fp32 (eager)": torch_run, "PyTorch fp32 (eager, 1 thread)": torch_run_1}
    for label, path in files.items():
        runners[label] = make["onnxruntime" if path.suffix == ".onnx" else "litert"](path, num_threads=args.threads)
    lat = interleaved_latency(runners, x[:1], rounds=args.rounds)

    rows = []
    for label, run in runners.items():
        got = run(x)
        fig = compare(reference, got)
        worst = min(f["cosine"] for f in fig.values())
        last = fig[module.feature_info.names[-1]]["cosine"]
        agree = top1_agreement(reference, got, module, head) if head else None
        size = files[label].stat().st_size / 1e6 if label in files else params_mb
        rows.append((label, size, lat[label]["p50"], lat[label]["p90"], worst, last, agree))

    # the faster PyTorch row is the baseline: with 2 threads on busy cores eager PyTorch can be far slower
    base = min(lat[k]["p50"] for k in lat if k.startswith("PyTorch"))
    print(f"\n{args.model}, output=features (5 stages), input 1x3x224x224; {date.today().isoformat()}, "
          f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads, {args.rounds} interleaved rounds; "
          f"{len(names)} sample photos ({', '.join(names)})\n")
    print("| format | size (MB) | latency p50 batch 1 (ms) | p90 (ms) | speed vs faster PyTorch "
          "| cosine vs fp32, worst stage | cosine, last stage | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for label, size, p50, p90, worst, last, agree in rows:
        a = "n/a" if agree is None else f"{agree:.0%} ({round(agree * len(names))}/{len(names)})"
        sz = f"{size:.2f}" + (" (params)" if label not in files else "")
        print(f"| {label} | {sz} | {p50:.1f} | {p90:.1f} | {base / p50:.2f}x | {worst:.6f} | {last:.6f} | {a} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
