"""Host CPU artifacts: compile, load, parity with PyTorch, bad input, tampering, atomic failure."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import compile
import hub
from compile.artifact import check_input
from compile.errors import (ArtifactChecksumError, ArtifactError, BatchRangeError, UnsupportedOpError,
                            VerificationError)
from compile.verify import photo_batch, verify_artifact
from hub.errors import HubError, InputShapeError

from .conftest import MODEL, build


def test_host_artifact_matches_pytorch_on_real_photos_with_named_outputs(host_artifact):
    m = host_artifact.manifest
    assert m["verification"]["status"] == "passed" and m["verification"]["method"] == "host"
    assert [o["name"] for o in m["outputs"]] == ["stage1", "stage2"]
    assert m["outputs"][0]["shape"] == ["batch", 16, 112, 112]
    assert m["input"]["batch"] == {"min": 1, "max": 4} and m["input"]["layout"] == "NCHW"
    assert m["model"]["weights_sha256"] == hub.load(MODEL, pretrained=True, progress=False).weights_sha256
    assert set(m["files"]) == {"model.so", "params.safetensors"}
    for figures in m["verification"]["outputs"].values():
        assert figures["cosine"] >= 0.9999

    art = compile.load(host_artifact.path)
    assert art.max_batch == 4 and art.manifest == json.loads((host_artifact.path / "manifest.json").read_text())
    names, x = photo_batch(MODEL, 3)
    out = art(x)  # batch 3: a size the parity run did not use
    ref = hub.load(MODEL, stages=["stage1", "stage2"], progress=False).eval()(torch.from_numpy(x))
    assert list(out) == list(ref) == ["stage1", "stage2"]
    for k in ref:
        r = ref[k].detach().numpy()
        assert out[k].shape == r.shape and out[k].dtype == np.float32
        cos = (out[k] * r).sum() / np.linalg.norm(out[k]) / np.linalg.norm(r)
        assert cos > 0.9999 and np.abs(out[k] - r).max() < 1e-2


def test_single_images_run_the_static_batch1_entry(host_artifact):
    """A dynamic-batch artifact also holds `main` with the batch bound to 1 (compile.cpu_pipeline): a single image
    runs it, and it gives what `main` gives for the same photo inside a batch."""
    assert host_artifact.manifest["batch1_entry"] == "main_batch1"
    assert host_artifact.manifest["verification"]["batches"] == [2, 1]  # parity covered both entries
    art = compile.load(host_artifact.path)
    assert art.entry(1) is not art.entry(2) and art.entry(2) is art.entry(4)
    _, x = photo_batch(MODEL, 2)
    pair, single = art(x), art(x[1:])
    for k in pair:
        np.testing.assert_allclose(single[k][0], pair[k][1], rtol=1e-4, atol=1e-4 * float(np.abs(pair[k]).max()))


def test_outputs_are_views_that_later_runs_never_overwrite(host_artifact):
    """Outputs come back as zero-copy views of the VM's tensors (compile.artifact.host_array): each run's stay
    what they were however many runs follow, and writing into one changes nothing else."""
    art = compile.load(host_artifact.path)
    _, x = photo_batch(MODEL, 2)
    first = art(x)
    kept = {k: v.copy() for k, v in first.items()}
    assert not first["stage1"].flags.owndata  # a view, not a copy
    for _ in range(3):
        other = art(x[::-1].copy())  # other photos into the same shapes
    for k in first:
        np.testing.assert_array_equal(first[k], kept[k])
        assert not np.array_equal(other[k], first[k])
    first["stage1"][:] = 0
    np.testing.assert_allclose(art(x)["stage1"], kept["stage1"], rtol=0, atol=0)


def test_batch_beyond_range_and_wrong_inputs_are_clear_errors(host_artifact):
    art = compile.load(host_artifact.path)
    with pytest.raises(BatchRangeError, match=r"batch 5 is outside the compiled range 1\.\.4.*--max-batch 5"):
        art(np.zeros((5, 3, 224, 224), np.float32))
    with pytest.raises(InputShapeError, match=r"dtype float64"):
        art(np.zeros((1, 3, 224, 224)))
    with pytest.raises(InputShapeError, match=r"shape \(3, 224, 224\).*x\[None\]"):
        art(np.zeros((3, 224, 224), np.float32))
    with pytest.raises(InputShapeError, match=r"\(N, 3, 224, 224\)"):
        art(np.zeros((1, 3, 160, 160), np.float32))
    with pytest.raises(InputShapeError, match="list"):
        art([[0.0]])
    assert isinstance(check_input(torch.zeros(2, 3, 224, 224), art.manifest), np.ndarray)  # tensors are accepted


def test_verify_reruns_parity(host_artifact):
    report = verify_artifact(host_artifact.path, photos=2, log=lambda s: None)
    assert report.ok and report.status == "passed" and report.photos == ["chelsea", "coffee"]
    assert "stage2" in report.format() and report.outputs["stage1"]["cosine"] >= 0.9999


def test_tampered_artifact_is_refused(host_artifact, copy_of):
    d = copy_of(host_artifact.path)
    p = d / "params.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF  # one weight changes: still a valid file, wrong numbers
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactChecksumError, match="params.safetensors.*refusing to load") as exc:
        compile.load(d)
    assert isinstance(exc.value, HubError)
    with pytest.raises(ArtifactChecksumError):
        verify_artifact(d)
    (d / "model.so").unlink()
    with pytest.raises(ArtifactError, match="model.so is missing"):
        compile.load(d)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        compile.load(tmp_path)
    with pytest.raises(ArtifactError, match="not a directory"):
        compile.load(tmp_path / "nope")


def test_pooled_output_is_one_array(tmp_path_factory):
    res = build(tmp_path_factory, "x86-64-avx2", stages=["stage1"], output="pooled", max_batch=2, photos=2)
    assert [o["name"] for o in res.manifest["outputs"]] == ["pooled"]
    assert res.manifest["outputs"][0]["shape"] == ["batch", 16]
    art = compile.load(res.path)
    _, x = photo_batch(MODEL, 1)
    y = art(x)
    ref = hub.load(MODEL, stages=["stage1"], output="pooled", progress=False).eval()(torch.from_numpy(x))
    assert isinstance(y, np.ndarray) and y.shape == (1, 16)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-3, atol=1e-4)


def test_failed_verification_leaves_nothing(tmp_path):
    from compile.build import compile_model
    out = tmp_path / "art"
    # An unreachable bar (cosine cannot exceed 1) makes the real parity check fail after the build.
    with pytest.raises(VerificationError, match="no artifact was written"):
        compile_model(MODEL, target="host", out=out, stages=["stage1"], max_batch=1, photos=1,
                      min_cosine=1.5, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten_without_force(host_artifact):
    from compile.build import compile_model
    with pytest.raises(HubError, match="already exists.*--force"):
        compile_model(MODEL, target="host", out=host_artifact.path, stages=["stage1"], log=lambda s: None)


def test_unsupported_op_names_op_and_model():
    from compile.export import export_program, import_program

    class Bessel(torch.nn.Module):
        def forward(self, x):
            return {"a": torch.special.bessel_j0(x)}

    ep, names, _, _ = export_program(Bessel(), model_name="bessel-net", input_shape=(3, 8, 8), max_batch=4)
    assert names == ["a"]
    with pytest.raises(UnsupportedOpError, match=r"'bessel-net'.*special_bessel_j0") as exc:
        import_program(ep, model_name="bessel-net")
    assert exc.value.ops == ["special_bessel_j0.default"]


def test_profile_times_every_kernel_in_sequence(host_artifact):
    from compile.profile import profile_artifact

    art = compile.load(host_artifact.path)
    kernels, wall_ms = profile_artifact(art, batch=2, runs=2)
    convs = [k for k in kernels if "conv2d" in k.name]
    assert convs and wall_ms > 0
    assert all(k.ms > 0 and k.calls >= 1 for k in kernels)
    assert [k.ms for k in kernels] == sorted((k.ms for k in kernels), reverse=True)
    # the shapes are those of this run: NHWC activations with the batch first
    assert all(k.shapes[0][0] == 2 for k in convs)
    # the instrument is removed afterwards: plain runs still match
    assert art.run(np.zeros((1, 3, 224, 224), np.float32))[0].shape[0] == 1
    with pytest.raises(ValueError, match="outside the artifact's range"):
        profile_artifact(art, batch=art.max_batch + 1)


def test_tvm_vs_ort_layers_pairs_every_conv(host_artifact):
    """benchmarks/tvm_vs_ort_layers.py (smoke): every conv of the artifact paired with ORT's, times > 0."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tvm_vs_ort_layers.py"
    out = subprocess.run([sys.executable, str(script), str(host_artifact.path), "--runs", "2"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.split() and ln.split()[0].isdigit()]
    total = next(ln.split() for ln in out.stdout.splitlines() if ln.startswith("sum"))
    assert len(rows) >= 3 and all("conv2d" in r[-1] for r in rows)
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert float(total[2]) == pytest.approx(sum(float(r[2]) for r in rows), abs=0.01 * len(rows))
