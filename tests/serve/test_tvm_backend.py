"""The TVM backend on real compiled artifacts (compile.load): an fp32 one and, where this CPU has AVX512_BF16, a
`--precision bf16` one, each compiled once for the module (~20 s each on 2 cores; CONVHUB_TEST_TVM_ARTIFACT may name
a ready fp32 efficientnet-lite0 host artifact instead)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from serve.backends import select
from serve.errors import BackendError

from .helpers import MODEL, cosine_rows, photos

ARTIFACT = os.environ.get("CONVHUB_TEST_TVM_ARTIFACT")


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def artifact(request, tmp_path_factory) -> Path:
    pytest.importorskip("compile.artifact")
    from compile.targets import missing_cpu_flags
    if request.param == "fp32" and ARTIFACT:
        return Path(ARTIFACT)
    if request.param == "bf16" and missing_cpu_flags(["avx512_bf16"]):
        pytest.skip("this CPU has no AVX512_BF16")
    from compile.build import compile_model
    out = tmp_path_factory.mktemp("artifact") / request.param
    compile_model(MODEL, out=out, max_batch=4, precision=request.param, log=lambda m: None)
    return out


def test_tvm_without_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError) as e:
        select.build(MODEL, "tvm", threads=1, max_batch=2, artifact=tmp_path / "missing")
    assert "not a directory" in str(e.value) and "convhub compile" in str(e.value)


def test_tvm_artifact_is_verified_and_matches_torch(reference, artifact):
    backend, report = select.build(MODEL, "tvm", threads=os.cpu_count() or 1, max_batch=8, artifact=artifact)
    bf16 = backend.precision == "bf16"
    assert backend.kind == "tvm" and "verified against PyTorch" in report and ("bf16" in report) == bf16
    assert backend.max_batch == backend.fn.max_batch  # the batcher never goes above the compiled maximum
    x = reference.inputs(photos(1))
    got = backend.run(x, ["pooled", "stage3"])
    want = reference.run(x)
    bar = 0.999 if bf16 else 0.9999  # bf16 conv inputs and weights: the artifact's own verification bar
    assert cosine_rows(got["pooled"], want["pooled"]).min() >= bar
    assert cosine_rows(got["stage3"], want["stage3"]).min() >= bar
    other = backend.instance()  # serve's compute_instances: a VM of its own, same numbers
    try:
        assert other is not backend and other.fn is not backend.fn
        np.testing.assert_allclose(other.run(x, ["pooled"])["pooled"], got["pooled"], rtol=1e-5, atol=1e-6)
    finally:
        other.close()
