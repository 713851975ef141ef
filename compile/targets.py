"""Named target presets: what TVM builds for, how the library is exported, how it is verified here."""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from .errors import UnknownTargetError

Export = Literal["cc", "cross-g++", "tar"]
Verify = Literal["host", "qemu", "gpu", "none"]

CROSS_CXX = "aarch64-linux-gnu-g++"
CROSS_PACKAGE = "g++-aarch64-linux-gnu"
QEMU = "qemu-aarch64"
QEMU_PACKAGE = "qemu-user"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"

_X86_V3 = ("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm")  # LLVM's x86-64-v3 (abm = lzcnt)
_X86_V4 = _X86_V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")


@dataclass(frozen=True)
class Preset:
    """One --target choice. `target`/`host` are TVM target dicts (strings are refused by TVM 0.27)."""

    name: str
    target: dict
    host: dict | None
    arch: Literal["x86_64", "aarch64"]  # the CPU that runs the library's host code
    device: Literal["cpu", "cuda", "opencl"]
    export: Export
    verify: Verify
    description: str
    required_cpu_flags: tuple[str, ...] = field(default=())  # /proc/cpuinfo flags the code relies on (x86)

    @property
    def library_name(self) -> str:
        return "model.tar" if self.export == "tar" else "model.so"

    def tvm_target(self):
        """The tvm.target.Target (imports tvm)."""
        from . import _tvm  # noqa: F401 - sets TVM_NUM_THREADS before tvm loads
        from tvm.target import Target
        return Target(self.target, host=self.host) if self.host else Target(self.target)

    def verification_text(self) -> str:
        """How `convhub compile` checks numerics of this preset on this machine."""
        if self.verify == "host":
            missing = missing_cpu_flags(self.required_cpu_flags)
            if platform.machine() != "x86_64":
                return "not verified here (needs an x86-64 CPU)"
            return f"not verified here (CPU lacks {', '.join(missing)})" if missing else "run on this CPU"
        if self.verify == "qemu":
            return "run under qemu-aarch64"
        if self.verify == "gpu":
            return "run on the GPU" if gpu_present() else "run on a GPU when present (none here)"
        return "built, not verified here"


def cpuinfo_fields(text: str | None = None) -> dict[str, str]:
    """The first processor's `key: value` fields of /proc/cpuinfo (or of `text`); empty when unreadable."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_info() -> tuple[str, frozenset[str]]:
    info = cpuinfo_fields()
    return info.get("vendor_id", ""), frozenset(info.get("flags", "").split())


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags from /proc/cpuinfo (empty when unreadable)."""
    return _cpu_info()[1]


def missing_cpu_flags(required: tuple[str, ...] | list[str]) -> list[str]:
    """Flags of `required` this CPU does not report (all of them when /proc/cpuinfo is unreadable)."""
    have = cpu_flags()
    return [f for f in required if f not in have]


def detect_host_mcpu() -> tuple[str, tuple[str, ...]]:
    """(LLVM mcpu, flags it relies on) for this CPU, read from /proc/cpuinfo.

    Target.from_device() guesses wrong on VMs (it said rocketlake on a Sapphire Rapids guest), so the
    choice is made from the feature flags the kernel reports, falling back to a baseline that runs anywhere.
    """
    if platform.machine() != "x86_64":
        return "generic", ()
    vendor, flags = _cpu_info()
    amd = vendor == "AuthenticAMD"
    table: list[tuple[str, tuple[str, ...]]] = [
        ("sapphirerapids", _X86_V4 + ("avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8")),
        ("znver4", _X86_V4 + ("avx512_vnni", "avx512_bf16", "vaes")) if amd else ("icelake-server", _X86_V4 + (
            "avx512_vnni", "avx512_vbmi2", "avx512_bitalg", "vaes")),
        ("cascadelake", _X86_V4 + ("avx512_vnni",)),
        ("x86-64-v4", _X86_V4),
        ("znver3", _X86_V3 + ("vaes", "vpclmulqdq")) if amd else ("x86-64-v3", _X86_V3),
        ("x86-64-v3", _X86_V3),
        ("x86-64-v2", ("sse4_2", "ssse3", "popcnt", "cx16")),
    ]
    for mcpu, needed in table:
        if all(f in flags for f in needed):
            return mcpu, needed
    return "x86-64", ()


def _host_preset() -> Preset:
    mcpu, flags = detect_host_mcpu()
    target = {"kind": "llvm", "mcpu": mcpu, "num-cores": os.cpu_count() or 1}
    arch = "aarch64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    return Preset("host", target, None, arch, "cpu", "cc", "host",
                  f"this machine's CPU ({mcpu}, detected from /proc/cpuinfo)", flags)


def _aarch64(name: str, mcpu: str, mattr: list[str], what: str) -> Preset:
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr}
    return Preset(name, target, None, "aarch64", "cpu", "cross-g++", "qemu", what)


def _cuda(sm: int, what: str) -> Preset:
    return Preset(f"cuda-sm{sm}", {"kind": "cuda", "arch": f"sm_{sm}"},
                  {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, "x86_64", "cuda", "cc", "gpu", what)


_STATIC: list[Preset] = [
    Preset("x86-64-avx2", {"kind": "llvm", "mcpu": "x86-64-v3"}, None, "x86_64", "cpu", "cc", "host",
           "any x86-64 CPU with AVX2+FMA (Haswell/Zen and later)", _X86_V3),
    Preset("x86-64-avx512", {"kind": "llvm", "mcpu": "x86-64-v4"}, None, "x86_64", "cpu", "cc", "host",
           "x86-64 CPUs with AVX-512 (Skylake-SP/Zen4 and later)", _X86_V4),
    _aarch64("aarch64-generic", "generic", ["+neon"], "any 64-bit ARM Linux board (ARMv8-A, NEON)"),
    _aarch64("aarch64-cortex-a53", "cortex-a53", ["+neon"], "Cortex-A53 boards (Raspberry Pi 3, many SBCs)"),
    _aarch64("aarch64-cortex-a55", "cortex-a55", ["+neon", "+dotprod"], "Cortex-A55 (ARMv8.2 little cores, RK3566)"),
    _aarch64("aarch64-cortex-a76", "cortex-a76", ["+neon", "+dotprod"], "Cortex-A76 (Raspberry Pi 5, RK3588)"),
    _aarch64("aarch64-cortex-a78", "cortex-a78", ["+neon", "+dotprod"], "Cortex-A78 (Jetson Orin CPU, phones)"),
    Preset("android-arm64", {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "generic",
                             "mattr": ["+neon"]}, None, "aarch64", "cpu", "tar", "qemu",
           "Android phones (arm64-v8a): object archive, linked on the build host with the NDK"),
    _cuda(80, "NVIDIA Ampere datacenter (A100, A30)"),
    _cuda(86, "NVIDIA Ampere consumer/workstation (RTX 30xx, A10, A40)"),
    _cuda(89, "NVIDIA Ada (RTX 40xx, L4, L40)"),
    _cuda(90, "NVIDIA Hopper (H100, H200, GH200)"),
    Preset("adreno-opencl", {"kind": "opencl", "device": "adreno"},
           {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon"]}, "aarch64", "opencl", "tar",
           "none", "Qualcomm Adreno GPUs via OpenCL (Android; needs a TVM runtime built with OpenCL)"),
    Preset("mali-opencl", {"kind": "opencl", "device": "mali"},
           {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, "aarch64", "opencl", "cross-g++",
           "none", "ARM Mali GPUs via OpenCL (Linux boards; needs a TVM runtime built with OpenCL)"),
]


def presets() -> list[Preset]:
    """All presets, `host` first."""
    return [_host_preset(), *_STATIC]


def preset_names() -> list[str]:
    return [p.name for p in presets()]


def get_preset(name: str) -> Preset:
    """The preset called `name`; UnknownTargetError lists the valid names."""
    for p in presets():
        if p.name == name:
            return p
    raise UnknownTargetError(name, preset_names())


def gpu_present() -> bool:
    """True when an NVIDIA GPU is usable here (asks the driver through TVM, no CUDA toolkit needed)."""
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        return False
    from . import _tvm  # noqa: F401
    import tvm
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # a driver without devices raises here; that is "no GPU"
        return False


def format_table(rows: list[Preset] | None = None) -> str:
    """The `convhub targets` table."""
    rows = rows if rows is not None else presets()
    header = ("preset", "device", "library", "verified here", "description")
    body = [(p.name, p.device if p.device != "cpu" else f"cpu/{p.arch}", p.library_name,
             p.verification_text(), p.description) for p in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in [header, *body]]
    lines.insert(1, "-" * min(len(lines[0]), 160))
    return "\n".join(lines)
