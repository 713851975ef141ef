"""benchmarks/serve_overhead.py (smoke): a real server and the in-process backend side by side, two compute
instances, every input kind measured with no errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .helpers import ROOT


def test_serve_overhead_smoke(tmp_path):
    out = tmp_path / "overhead.json"
    cpus = sorted(os.sched_getaffinity(0))
    # the load generator on a CPU of its own when there are two (CI has two)
    split = ["--server-cpus", str(cpus[0]), "--client-cpus", str(cpus[-1])] if len(cpus) > 1 else []
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_overhead.py"), "--backend", "torch",
                        "--clients", "2", "--batch", "2", "--instances", "2", "--seconds", "1.5", "--rounds", "1",
                        *split, "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["instances"] == 2 and rep["threads"] >= 1
    if split:
        assert rep["server_cpus"] == cpus[:1] and rep["client_cpus"] == cpus[-1:]
        assert f"load generator on CPUs {cpus[-1]}" in r.stdout
    rows = {row["mode"]: row for row in rep["rows"]}
    assert set(rows) == {"binary", "binary-u8", "jpeg"}
    for row in rows.values():
        assert row["errors"] == 0 and row["http_img_s"] > 0 and row["in_process_img_s"] > 0
        assert row["ratio"] == row["http_img_s"] / row["in_process_img_s"]
        assert len(row["paired_ratios"]) == 1 and row["paired_median"] == row["paired_ratios"][0] > 0
        assert row["server_cpu_ms_per_img"] > 0
    assert rows["jpeg"]["in_process_with_decode_img_s"] > 0
    assert "compute instance(s)" in r.stdout  # the printed table says how the server ran


def test_serve_overhead_refuses_cpus_it_cannot_use():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_overhead.py"), "--server-cpus", "0",
                        "--client-cpus", "4096"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "--client-cpus: CPUs [4096] are not available" in r.stderr
    for bad in ("zero", "1-0"):
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_overhead.py"), "--server-cpus", bad],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2 and "expected lists like 0 or 0,1 or 0-3" in r.stderr
