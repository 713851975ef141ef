"""Presets: the table, unknown names, host CPU detection."""
from __future__ import annotations

import subprocess
import sys

import pytest

from compile.errors import UnknownTargetError
from compile.targets import cpu_flags, detect_host_mcpu, get_preset, missing_cpu_flags, preset_names

EXPECTED = {"host", "x86-64-avx2", "x86-64-avx512", "aarch64-generic", "aarch64-cortex-a53", "aarch64-cortex-a55",
            "aarch64-cortex-a76", "aarch64-cortex-a78", "android-arm64", "cuda-sm80", "cuda-sm86", "cuda-sm89",
            "cuda-sm90", "adreno-opencl", "mali-opencl"}


def test_every_preset_of_the_issue_exists_and_makes_a_tvm_target():
    assert set(preset_names()) == EXPECTED
    for name in EXPECTED:
        p = get_preset(name)
        t = p.tvm_target()
        assert t.kind.name == p.target["kind"]
        assert p.description and p.verify in ("host", "qemu", "gpu", "none")
    assert get_preset("cuda-sm86").tvm_target().attrs["arch"] == "sm_86"
    assert "arm_cpu" in get_preset("aarch64-cortex-a76").tvm_target().keys


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UnknownTargetError) as exc:
        get_preset("cortex-a76")
    msg = str(exc.value)
    assert "'cortex-a76'" in msg and "aarch64-cortex-a76" in msg and "mali-opencl" in msg
    assert isinstance(exc.value, ValueError)


def test_host_mcpu_only_relies_on_flags_this_cpu_has():
    mcpu, needed = detect_host_mcpu()
    flags = cpu_flags()
    assert missing_cpu_flags(needed) == []  # never an mcpu whose instructions this CPU lacks (SIGILL)
    if {"avx512f", "amx_tile", "avx512_fp16"} <= flags:
        assert mcpu == "sapphirerapids"
    elif "avx2" in flags and "avx512f" not in flags:
        assert mcpu in ("znver3", "x86-64-v3")
    assert get_preset("host").target["mcpu"] == mcpu


def test_cli_targets_table_says_how_each_is_verified():
    out = subprocess.run([sys.executable, "-m", "hub.cli", "targets"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = {l.split()[0]: l for l in out.stdout.splitlines() if l.strip() and l.split()[0] in EXPECTED}
    assert set(lines) == EXPECTED
    assert "qemu-aarch64" in lines["aarch64-cortex-a53"]
    assert "built, not verified here" in lines["adreno-opencl"] and "built, not verified here" in lines["mali-opencl"]
    assert "GPU" in lines["cuda-sm90"]
    assert "run on this CPU" in lines["host"]


def test_cli_unknown_preset_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hub.cli", "compile", "efficientnet-lite0", "--target", "tpu",
                          "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "unknown target preset 'tpu'" in out.stderr and "aarch64-cortex-a53" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "a").exists()


def test_missing_cross_toolchain_names_the_debian_package(tmp_path, monkeypatch):
    from compile.build import compile_model
    from compile.errors import ToolchainMissingError
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without aarch64-linux-gnu-g++ / qemu-aarch64
    with pytest.raises(ToolchainMissingError, match=r"aarch64-linux-gnu-g\+\+ not found.*g\+\+-aarch64-linux-gnu"):
        compile_model("efficientnet-lite0", target="aarch64-cortex-a76", out=tmp_path / "a", log=lambda s: None)
    assert not (tmp_path / "a").exists()
