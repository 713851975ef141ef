"""Close the loop: an exported .tflite imports into TVM, builds for a compile preset, matches PyTorch."""
from __future__ import annotations

import shutil

import pytest
import torch

import compile
import hub
from compile.tflite_export import export_tflite
from compile.tflite_tvm import compile_tflite

from .conftest import MODEL, cosine

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def small():
    # two stages keep TVM's untuned build and qemu's emulation short; the path is the same for the full trunk
    module = hub.load(MODEL, output="pooled", stages=["stage2"]).eval()
    return module


@pytest.fixture(scope="module")
def small_tflite(tmp_path_factory, small):
    return export_tflite(small, tmp_path_factory.mktemp("loop") / "stage2.tflite")


def test_tflite_to_tvm_host_artifact(tmp_path, small, small_tflite, photo_batch):
    manifest = compile_tflite(small_tflite, small, target="host", out=tmp_path / "art", photos=2, log=lambda s: None)
    assert manifest["source"]["kind"] == "tflite" and manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["outputs"]["pooled"]["cosine"] >= 0.9999
    art = compile.load(tmp_path / "art")  # the compile package's own loader accepts it
    got = art(photo_batch[:1].numpy())
    with torch.no_grad():
        ref = small(photo_batch[:1]).numpy()
    assert cosine(got, ref) >= 0.9999


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs qemu-user and g++-aarch64-linux-gnu (scripts/setup_system.sh)")
def test_tflite_to_tvm_aarch64_under_qemu(tmp_path, small, small_tflite):
    manifest = compile_tflite(small_tflite, small, target="aarch64-cortex-a76", out=tmp_path / "a76", photos=1,
                              log=lambda s: None)
    v = manifest["verification"]
    assert v["method"] == "qemu-aarch64" and v["status"] == "passed"
    assert v["outputs"]["pooled"]["cosine"] >= 0.9999
    elf = (tmp_path / "a76" / "model.so").read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and elf[18:20] == b"\xb7\x00"  # EM_AARCH64
    assert manifest["target"]["arch"] == "aarch64"
