"""The TVM backend on a real compiled artifact (compile.load). Building one takes minutes on 2 cores, so
this runs only when CONVHUB_TEST_TVM_ARTIFACT names an efficientnet-lite0 host artifact
(`convhub compile efficientnet-lite0 --target host --out DIR`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from serve.backends import select
from serve.errors import BackendError

from .helpers import MODEL, cosine_rows, photos

ARTIFACT = os.environ.get("CONVHUB_TEST_TVM_ARTIFACT")


def test_tvm_without_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError) as e:
        select.build(MODEL, "tvm", threads=1, max_batch=2, artifact=tmp_path / "missing")
    assert "not a directory" in str(e.value) and "convhub compile" in str(e.value)


@pytest.mark.skipif(not ARTIFACT, reason="set CONVHUB_TEST_TVM_ARTIFACT to a compiled efficientnet-lite0 artifact")
def test_tvm_artifact_is_verified_and_matches_torch(reference):
    pytest.importorskip("compile.artifact")
    backend, report = select.build(MODEL, "tvm", threads=os.cpu_count() or 1, max_batch=8, artifact=Path(ARTIFACT))
    assert backend.kind == "tvm" and "verified against PyTorch" in report
    assert backend.max_batch == backend.fn.max_batch  # the batcher never goes above the compiled maximum
    x = reference.inputs(photos(1))
    got = backend.run(x, ["pooled", "stage3"])
    want = reference.run(x)
    assert cosine_rows(got["pooled"], want["pooled"]).min() >= 0.9999
    assert cosine_rows(got["stage3"], want["stage3"]).min() >= 0.9999
    other = backend.instance()  # serve's compute_instances: a VM of its own, same numbers
    try:
        assert other is not backend and other.fn is not backend.fn
        np.testing.assert_allclose(other.run(x, ["pooled"])["pooled"], got["pooled"], rtol=1e-5, atol=1e-6)
    finally:
        other.close()
