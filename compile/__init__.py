"""convhub's compile package: frozen hub backbones -> verified Apache TVM artifacts.

    import compile
    art = compile.compile_model("efficientnet-lite0", target="host", out="lite0-host")
    run = compile.load("lite0-host")          # numpy in -> dict of numpy out
    feats = run(x)                             # x: float32 (N, 3, 224, 224), preprocessed

Heavy imports (torch, tvm) happen on first use so that `convhub --help` stays fast.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Before any import of tvm anywhere in the process (DESIGN.md: one thread otherwise); a user's value wins.
# Every module of this package (and the benchmarks, serve and tests, which import it) relies on this one place.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
# TVM pins its threads to cores by default. On these 2-vCPU VMs that made lite0 batch 1 take 20-21 ms p50 instead
# of 13.7-14.1 ms unpinned (same artifact, separate processes, measured 3x each way): a pinned worker cannot move
# off a vCPU the hypervisor or another process is using.
os.environ.setdefault("TVM_BIND_THREADS", "0")

if TYPE_CHECKING:
    from .artifact import CompiledArtifact
    from .build import BuildResult

__all__ = ["load", "compile_model", "verify_artifact"]


def load(path: "str | os.PathLike[str]", *, device_id: int = 0) -> "CompiledArtifact":
    """Load a compiled artifact directory: a callable numpy -> numpy / dict of numpy (see compile.artifact)."""
    from .artifact import load_artifact
    return load_artifact(path, device_id=device_id)


def compile_model(name: str, *, target: str = "host", out: "str | os.PathLike[str]", **kwargs) -> "BuildResult":
    """Compile hub model `name` for preset `target` into directory `out` (see compile.build.compile_model)."""
    from .build import compile_model as _compile
    return _compile(name, target=target, out=out, **kwargs)


def verify_artifact(path: "str | os.PathLike[str]", **kwargs):
    """Re-run an artifact's parity check against PyTorch (see compile.verify.verify_artifact)."""
    from .verify import verify_artifact as _verify
    return _verify(path, **kwargs)
