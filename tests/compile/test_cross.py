"""Cross targets: aarch64 under qemu, Android objects, CUDA and OpenCL builds, a GPU run when present."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest

import compile
from compile.errors import WrongPlatformError
from compile.targets import gpu_present
from compile.verify import verify_artifact

from .conftest import MODEL, build, require_aarch64_tools


def test_aarch64_artifact_runs_under_qemu_and_matches_pytorch(aarch64_artifact):
    m = aarch64_artifact.manifest
    v = m["verification"]
    assert v["status"] == "passed" and v["method"] == "qemu-aarch64"
    # 2 photos as one batch of 2 (main), then the first alone (main_batch1, the static batch-1 copy)
    assert v["outputs"]["stage1"]["cosine"] >= 0.9999 and v["batches"] == [2, 1]
    assert m["batch1_entry"] == "main_batch1" and m["params_transform"] == "transform_params"
    assert m["target"]["tvm_target"]["mcpu"] == "cortex-a53" and m["target"]["arch"] == "aarch64"
    so = (aarch64_artifact.path / "model.so").read_bytes()
    assert so[:4] == b"\x7fELF" and int.from_bytes(so[18:20], "little") == 183  # e_machine = EM_AARCH64


def test_aarch64_artifact_is_refused_here_with_a_pointer_to_verify(aarch64_artifact):
    with pytest.raises(WrongPlatformError, match=r"built for aarch64.*this machine is x86_64.*convhub verify"):
        compile.load(aarch64_artifact.path)


def test_verify_reruns_aarch64_parity_under_qemu(aarch64_artifact):
    report = verify_artifact(aarch64_artifact.path, photos=1, log=lambda s: None)
    assert report.status == "passed" and report.method == "qemu-aarch64" and report.batches == [1]


def test_android_object_archive_links_and_runs_under_qemu(tmp_path_factory):
    require_aarch64_tools()
    res = build(tmp_path_factory, "android-arm64", stages=["stage1"], max_batch=2, photos=1)
    lib = res.path / "model.tar"
    with tarfile.open(lib) as tar:
        names = tar.getnames()
    assert names and all(n.endswith(".o") for n in names)
    assert res.manifest["target"]["tvm_target"]["mtriple"] == "aarch64-linux-android"
    assert res.manifest["verification"]["status"] == "passed"
    assert "NDK" in (res.path / "DEPLOY.md").read_text()
    with pytest.raises(WrongPlatformError):
        compile.load(res.path)


def test_cuda_build_embeds_cuda_kernels(tmp_path_factory):
    res = build(tmp_path_factory, "cuda-sm80", stages=["stage1"], max_batch=2, photos=1)
    so = (res.path / "model.so").read_bytes()
    assert b"__global__" in so  # the CUDA C of the kernels is in the library (NVRTC compiles it at load)
    m = res.manifest
    assert m["target"]["device"] == "cuda" and m["target"]["tvm_target"] == {"kind": "cuda", "arch": "sm_80"}
    if not gpu_present():
        assert m["verification"]["status"] == "built, not verified here"
        assert "no NVIDIA GPU" in m["verification"]["reason"]
        with pytest.raises(WrongPlatformError, match="NVIDIA GPU"):
            compile.load(res.path)


def test_opencl_builds_are_labelled_not_verified(tmp_path_factory):
    res = build(tmp_path_factory, "adreno-opencl", stages=["stage1"], max_batch=2, photos=1)
    m = res.manifest
    assert m["verification"]["status"] == "built, not verified here"
    with tarfile.open(res.path / "model.tar") as tar:
        blobs = b"".join(tar.extractfile(n).read() for n in tar.getnames())
    assert b"__kernel" in blobs  # OpenCL C kernels travel inside the objects
    assert "USE_OPENCL=ON" in (res.path / "DEPLOY.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason="no NVIDIA GPU on this machine")
def test_cuda_artifact_runs_on_the_gpu_and_matches_pytorch(tmp_path_factory):
    from compile._tvm import tvm
    major, minor = tvm.cuda(0).compute_version.split(".")
    preset = {"8.0": "cuda-sm80", "8.6": "cuda-sm86", "8.9": "cuda-sm89", "9.0": "cuda-sm90"}.get(f"{major}.{minor}")
    if preset is None:
        pytest.skip(f"no preset for compute capability {major}.{minor}")
    res = build(tmp_path_factory, preset, stages=["stage1", "stage2"], max_batch=4)
    assert res.manifest["verification"]["status"] == "passed" and res.manifest["verification"]["method"] == "gpu"
    out = compile.load(res.path)(np.zeros((4, 3, 224, 224), np.float32))
    assert out["stage2"].shape == (4, 24, 56, 56)


@pytest.mark.slow
def test_resnet_conv_full_model_for_host(tmp_path_factory):
    """The ResNet-50 trunk, all four stages (random seeded weights: no network here)."""
    res = build(tmp_path_factory, "host", model="resnet-conv", max_batch=2, photos=2, pretrained=False)
    m = res.manifest
    assert m["model"]["name"] == "resnet-conv" and m["model"]["pretrained"] is False
    assert [o["name"] for o in m["outputs"]] == ["layer1", "layer2", "layer3", "layer4"]
    assert m["verification"]["status"] == "passed"
    assert verify_artifact(res.path, photos=1, log=lambda s: None).status == "passed"  # seeded weights rebuild
