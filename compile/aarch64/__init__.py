"""Run aarch64 artifacts here under qemu-aarch64, through a small C++ runner (runner.cc).

The runner is cross-compiled with Debian's aarch64-linux-gnu-g++ against the aarch64 TVM runtime
(`libtvm_runtime.so` + `libtvm_ffi.so`), taken from the apache-tvm / apache-tvm-ffi aarch64 wheels on
PyPI. Both are prepared once into the toolchain cache ($CONVHUB_TOOLCHAINS, else ~/.cache/convhub/toolchains;
kept apart from $CONVHUB_CACHE, the weights cache, so throw-away weight caches do not re-download it).
`python -m compile.aarch64` prepares it ahead of time; $CONVHUB_AARCH64_RUNTIME may point at a folder
holding the two libraries instead (offline machines).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from ..errors import CompileError, ToolchainMissingError
from ..targets import AARCH64_SYSROOT, CROSS_CXX, CROSS_PACKAGE, QEMU, QEMU_PACKAGE

RUNNER_SOURCE = Path(__file__).with_name("runner.cc")
RUNTIME_ENV = "CONVHUB_AARCH64_RUNTIME"
_LIBS = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


def require_cross_compiler() -> str:
    """Path of aarch64-linux-gnu-g++, or ToolchainMissingError naming the Debian package."""
    path = shutil.which(CROSS_CXX)
    if path is None:
        raise ToolchainMissingError(CROSS_CXX, CROSS_PACKAGE, "cross-compile aarch64 libraries")
    return path


def require_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise ToolchainMissingError(QEMU, QEMU_PACKAGE, "run aarch64 artifacts on this machine for verification")
    return path


def toolchain_dir() -> Path:
    """$CONVHUB_TOOLCHAINS, else $XDG_CACHE_HOME/convhub/toolchains, else ~/.cache/convhub/toolchains."""
    if os.environ.get("CONVHUB_TOOLCHAINS"):
        return Path(os.environ["CONVHUB_TOOLCHAINS"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convhub" / "toolchains"


def _cache_root() -> Path:
    return toolchain_dir() / f"aarch64-tvm-{version('apache-tvm')}-ffi-{version('apache-tvm-ffi')}"


def runtime_dir(*, log=print) -> Path:
    """Folder with the aarch64 libtvm_runtime.so and libtvm_ffi.so, downloading the wheels on first use."""
    if os.environ.get(RUNTIME_ENV):
        d = Path(os.environ[RUNTIME_ENV])
        missing = [n for n in ("libtvm_runtime.so", "libtvm_ffi.so") if not (d / n).is_file()]
        if missing:
            raise CompileError(f"${RUNTIME_ENV}={d} lacks {', '.join(missing)} (aarch64 builds from the wheels)")
        return d
    d = _cache_root()
    if all((d / Path(p).name).is_file() for p in _LIBS.values()):
        return d
    pins = [f"{pkg}=={version(pkg)}" for pkg in _LIBS]
    log(f"aarch64 runtime: downloading the aarch64 wheels {' '.join(pins)} from PyPI (once, into {d})")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--platform", "manylinux_2_28_aarch64",
               "--only-binary=:all:", *pins, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"could not download the aarch64 TVM runtime ({' '.join(pins)}): "
                               f"{proc.stderr.strip()[-300:]}. Without network, unpack libtvm_runtime.so and "
                               f"libtvm_ffi.so from those aarch64 wheels into a folder and set ${RUNTIME_ENV} to it")
        d.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=d.parent))
        for pkg, member in _LIBS.items():
            wheel = next(Path(tmp).glob(pkg.replace("-", "_") + "-*.whl"))
            with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(staging / Path(member).name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        if d.exists():
            shutil.rmtree(staging)
        else:
            os.replace(staging, d)
    return d


def runner_path(*, log=print) -> Path:
    """The cross-compiled runner (rebuilt when runner.cc changes), next to the aarch64 runtime libraries."""
    rt = runtime_dir(log=log)
    src = RUNNER_SOURCE.read_bytes()
    exe = rt / f"convhub_runner-{hashlib.sha256(src).hexdigest()[:12]}"
    if exe.is_file():
        return exe
    cxx = require_cross_compiler()
    import tvm_ffi
    ffi_root = Path(tvm_ffi.__file__).parent  # headers are architecture-independent: the host wheel's will do
    log(f"aarch64 runtime: building the runner with {CROSS_CXX}")
    tmp = exe.with_suffix(".tmp")
    cmd = [cxx, "-std=c++17", "-O2", "-o", str(tmp), str(RUNNER_SOURCE), f"-I{ffi_root / 'include'}",
           f"-I{ffi_root / '3rdparty' / 'dlpack' / 'include'}", f"-L{rt}", "-ltvm_runtime", "-ltvm_ffi",
           "-Wl,-rpath,$ORIGIN"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompileError(f"building the aarch64 runner failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, exe)
    return exe


def link_objects(tar_path: Path, out_so: Path) -> Path:
    """Link an object archive (android-arm64 .tar) into a glibc shared library, only to test it under qemu.

    On the phone the same objects are linked with the NDK (docs/compile.md); the generated code is the same.
    """
    import tarfile
    cxx = require_cross_compiler()
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        objs = sorted(str(p) for p in Path(tmp).rglob("*.o"))
        proc = subprocess.run([cxx, "-shared", "-fPIC", "-o", str(out_so), *objs], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"linking {tar_path.name} for qemu failed:\n{proc.stderr[-2000:]}")
    return out_so


def run_under_qemu(artifact_dir: Path, x: np.ndarray, *, library: str = "model.so", timeout: float = 1800,
                   log=print) -> tuple[list[np.ndarray], float]:
    """Run the artifact's `main` on `x` under qemu-aarch64: (outputs in manifest order, ms per run)."""
    qemu = require_qemu()
    exe = runner_path(log=log)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        staged = work / "artifact"
        staged.mkdir()
        # The runner reads DIR/model.so + DIR/params.safetensors; link rather than copy the large params.
        os.symlink((artifact_dir / "params.safetensors").resolve(), staged / "params.safetensors")
        if library.endswith(".tar"):
            link_objects(artifact_dir / library, staged / "model.so")
        else:
            os.symlink((artifact_dir / library).resolve(), staged / "model.so")
        np.save(work / "input.npy", np.ascontiguousarray(x, dtype=np.float32))
        out = work / "out"
        out.mkdir()
        env = dict(os.environ, QEMU_LD_PREFIX=AARCH64_SYSROOT)
        cmd = [qemu, "-cpu", "max", "-L", AARCH64_SYSROOT, str(exe), str(staged), str(work / "input.npy"), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise CompileError(f"the aarch64 runner under qemu took longer than {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise CompileError(f"the aarch64 runner failed under qemu (exit {proc.returncode}):\n"
                               f"{(proc.stderr or proc.stdout)[-2000:]}")
        outputs = [np.load(p) for p in sorted(out.glob("output_*.npy"), key=lambda p: int(p.stem.split("_")[1]))]
        ms = float("nan")
        for line in proc.stderr.splitlines():
            if line.startswith("convhub_runner:") and "ms per run" in line:
                ms = float(line.split(",")[-1].split("ms")[0])
        return outputs, ms
