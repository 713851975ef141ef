"""benchmarks/tvm_cpu.py: the README's CPU table (smoke run on one small model) and the FP32 peak it is quoted
against."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "tvm_cpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("tvm_cpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cpuinfo(vendor: str, family: int, flags: str, mhz: float = 2600.0) -> str:
    return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 17\n"
            f"cpu MHz\t\t: {mhz}\nflags\t\t: fpu sse2 {flags}\n")


@pytest.mark.parametrize("vendor, family, flags, lanes", [
    ("GenuineIntel", 6, "avx2 fma avx512f avx512vl", 16),  # Sapphire Rapids: two 512-bit FMA units
    ("AuthenticAMD", 25, "avx2 fma avx512f avx512vl", 8),  # Zen 4: AVX-512 on 256-bit units
    ("AuthenticAMD", 26, "avx2 fma avx512f avx512vl", 16),  # Zen 5: full-width AVX-512
    ("AuthenticAMD", 25, "avx2 fma", 8),  # Zen 3
])
def test_fp32_peak_counts_the_fma_units_this_cpu_really_has(vendor, family, flags, lanes):
    peak, how = _script().theoretical_peak(_cpuinfo(vendor, family, flags), cores=2)
    assert peak == pytest.approx(2 * 2 * lanes * 2 * 2600.0 / 1e3)
    assert f"{lanes} fp32 lanes" in how and ("Zen 4" in how) == (family == 25 and "avx512f" in flags)


def test_table_smoke_one_model(tmp_path):
    out = tmp_path / "table.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--models", "mobilenet_v3_large", "--batch", "1", "--rounds", "1",
                        "--seconds", "0.05", "--json", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rep = json.loads(out.read_text())
    rows = {row["backend"]: row for row in rep["rows"]}
    from compile.schedules.bf16 import supports_bf16
    from compile.targets import get_preset
    bf16 = supports_bf16(get_preset("host").tvm_target())  # the bf16 build runs where the CPU has AVX512_BF16
    assert set(rows) == {"onnxruntime", "torch", "tvm"} | ({"tvm-bf16"} if bf16 else set())
    for row in rows.values():
        assert row["error"] is None and row["p50_ms"] > 0 and row["model"] == "mobilenet_v3_large"
    assert rep["measured_peak"] > 0 and rep["measured_peak_end"] > 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("| mobilenet_v3_large | 1 |"))
    ratio = float(line.split("|")[7])  # the TVM/ORT column, from the same p50s
    assert ratio == pytest.approx(rows["tvm"]["p50_ms"] / rows["onnxruntime"]["p50_ms"], abs=0.006)
