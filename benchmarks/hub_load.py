"""Cold and warm `hub.load` times, side by side in one run (prints a table).

cold: a fresh Python process: `import hub`, `import torch`, then the first hub.load (registry parse, architecture build,
checkpoint read + sha256, key mapping, freezing). warm: later hub.load calls in the same process.
Usage: python benchmarks/hub_load.py [--model efficientnet-lite0] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import hub
t1 = time.perf_counter()
import torch, torchvision.models, layers.builder  # noqa: E401 - framework import, timed on its own
t1b = time.perf_counter()
hub.load(sys.argv[1], progress=False)
t2 = time.perf_counter()
warm = []
for _ in range(5):
    s = time.perf_counter(); hub.load(sys.argv[1], progress=False); warm.append(time.perf_counter() - s)
print(json.dumps({"import": t1 - t0, "frameworks": t1b - t1, "cold": t2 - t1b, "warm": warm}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rows = []
    for _ in range(a.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, a.model], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    imp = statistics.median(r["import"] for r in rows)
    fw = statistics.median(r["frameworks"] for r in rows)
    cold = statistics.median(r["cold"] for r in rows)
    warm = statistics.median(w for r in rows for w in r["warm"])
    print(f"hub.load({a.model!r}), {a.runs} fresh processes, median")
    print(f"| {'phase':<28} | {'seconds':>8} | {'vs warm':>8} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|")
    for label, v in [("import hub", imp), ("import torch + torchvision", fw), ("cold hub.load (first call)", cold), ("warm hub.load (later calls)", warm)]:
        print(f"| {label:<28} | {v:8.3f} | {v / warm:7.1f}x |")


if __name__ == "__main__":
    main()
