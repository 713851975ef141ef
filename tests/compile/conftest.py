"""Shared artifacts for the compile tests: each real TVM build runs once per session.

Builds use efficientnet-lite0 (real weights, offline) truncated to its first stages so an untuned
build takes seconds, not minutes; parity still runs on real photos.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compile.targets import CROSS_CXX, CROSS_PACKAGE, QEMU, QEMU_PACKAGE

MODEL = "efficientnet-lite0"


def _quiet(_msg: str) -> None:
    pass


def build(tmp_path_factory, target: str, *, model: str = MODEL, **kwargs):
    from compile.build import compile_model
    out = tmp_path_factory.mktemp(target.replace("-", "_")) / "artifact"
    return compile_model(model, target=target, out=out, log=_quiet, **kwargs)


def require_aarch64_tools() -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in ((CROSS_CXX, CROSS_PACKAGE), (QEMU, QEMU_PACKAGE))
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"aarch64 toolchain missing: {', '.join(missing)}; run scripts/setup_system.sh as root")


@pytest.fixture(scope="session")
def host_artifact(tmp_path_factory):
    """Two named stages, batch 1..4, for the host CPU."""
    return build(tmp_path_factory, "host", stages=["stage1", "stage2"], max_batch=4)


@pytest.fixture(scope="session")
def aarch64_artifact(tmp_path_factory):
    require_aarch64_tools()
    return build(tmp_path_factory, "aarch64-cortex-a53", stages=["stage1"], max_batch=2, photos=2)


@pytest.fixture
def copy_of(tmp_path):
    def _copy(src: Path) -> Path:
        dst = tmp_path / "copy"
        shutil.copytree(src, dst)
        return dst
    return _copy
