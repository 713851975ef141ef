#!/usr/bin/env python
"""Conv by conv: a TVM artifact against ONNX Runtime on the same model, measured in sequence, interleaved.

    python benchmarks/tvm_vs_ort_layers.py build/lite0-host --runs 20

Each conv's time inside a whole-model run (TVM: the VM instrument hook, compile.profile.timed_calls; ORT: its
node profiler), medians over runs that alternate ORT and TVM call by call. This machine's speed swings over
seconds, so kernels timed one by one at another moment mislead (an earlier session concluded that kernels in
sequence were 5x slower than alone; interleaved, the slow layers were simply slower than ORT's, and the loop
order was why). Each timed run follows an untimed one of the same backend: the other backend's worker threads
are still spinning right after a switch. Convs are paired by position: both runtimes run them in model order.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _onnx_for(manifest: dict, path: Path) -> Path:
    """The artifact's model exported to ONNX (random weights: timings do not depend on the values)."""
    import hub
    from compile.onnx_export import export_onnx

    model = manifest["model"]
    module = hub.load(model["name"], pretrained=False, progress=False, stages=model.get("stages"),
                      output=model.get("output", "features")).eval()
    export_onnx(module, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="artifact directory (convhub compile --out)")
    p.add_argument("--onnx", help="ONNX file of the same model (default: exported from the artifact's model)")
    p.add_argument("--batch", type=int, default=None, help="default: the artifact's smallest batch")
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args(argv)

    import onnxruntime as ort

    import compile
    from compile.profile import sample_input, timed_calls

    art = compile.load(a.artifact)
    try:
        x, xt = sample_input(art, a.batch)
    except ValueError as exc:
        p.error(str(exc))
    batch = len(x)
    with tempfile.TemporaryDirectory(prefix="convhub-layers-") as tmp:
        onnx_path = Path(a.onnx) if a.onnx else _onnx_for(art.manifest, Path(tmp) / "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        tvm_runs = []
        for i in range(a.runs + 3):  # 3 warm-up pairs
            sess.run(None, feed)  # settle
            sess.run(None, feed)  # timed (every ORT run is profiled; the odd ones are kept)
            timed_calls(art, xt)  # settle
            calls = [c for c in timed_calls(art, xt) if "conv2d" in c.name]
            if i >= 3:
                tvm_runs.append(calls)
        events = json.loads(Path(sess.end_profiling()).read_text())
    convs = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and e["args"].get("op_name") in ("Conv", "FusedConv")]
    per_run = len(convs) // (2 * (a.runs + 3))
    ort_runs = [convs[k * per_run:(k + 1) * per_run] for k in range(7, 2 * (a.runs + 3), 2)]
    if per_run != len(tvm_runs[0]):
        print(f"ORT runs {per_run} convs, TVM {len(tvm_runs[0])}: cannot pair them", file=sys.stderr)
        return 1
    print(f"{a.artifact} vs ONNX Runtime, batch {batch}, medians of {a.runs} interleaved runs")
    print(f"{'#':>3} {'ORT ms':>7} {'TVM ms':>7} {'TVM/ORT':>7}  output shape  TVM kernel")
    tot_o = tot_t = 0.0
    for k in range(per_run):
        o = float(np.median([r[k]["dur"] for r in ort_runs])) / 1e3
        t = float(np.median([r[k].seconds for r in tvm_runs])) * 1e3
        tot_o, tot_t = tot_o + o, tot_t + t
        out = ort_runs[0][k]["args"].get("output_type_shape", [{}])[0]
        print(f"{k:3d} {o:7.3f} {t:7.3f} {t / o:7.2f}  {list(out.values())[0] if out else '?'}  {tvm_runs[0][k].name}")
    print(f"sum {tot_o:7.2f} {tot_t:7.2f} {tot_t / tot_o:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
