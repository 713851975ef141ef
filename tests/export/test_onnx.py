"""ONNX export: a checked file with named per-stage outputs and a dynamic batch, matching PyTorch on real photos."""
from __future__ import annotations

import os

import onnx
import onnxruntime as ort
import pytest
import torch

import hub
from compile.edge_errors import ExportError, UnsupportedOpError
from compile.onnx_export import export_onnx

from .conftest import MODEL, cosine


@pytest.fixture(scope="module")
def features_onnx(tmp_path_factory, features_model):
    return export_onnx(features_model, tmp_path_factory.mktemp("onnx") / "lite0.onnx")


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_features_file_is_checked_single_and_named(features_onnx, features_model):
    assert features_onnx.is_file()
    # one self-contained file: no external-data sidecar, no temp leftovers
    assert sorted(os.listdir(features_onnx.parent)) == ["lite0.onnx"]
    model = onnx.load(str(features_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == features_model.feature_info.names
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["convhub.model"] == MODEL
    assert meta["convhub.weights_sha256"] == features_model.weights_sha256


@pytest.mark.parametrize("batch", [1, 3])
def test_features_match_pytorch_on_photos(features_onnx, features_model, photo_batch, batch):
    x = photo_batch[:batch]
    with torch.no_grad():
        ref = features_model(x)
    sess = _session(features_onnx)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"input": x.numpy()})))
    assert names == list(ref)
    for stage, info in zip(names, features_model.feature_info):
        assert outs[stage].shape == tuple(ref[stage].shape)
        assert outs[stage].shape[1] == info.channels
        assert cosine(outs[stage], ref[stage].numpy()) >= 0.9999, stage


def test_pooled_export_matches(tmp_path, photo_batch):
    m = hub.load(MODEL, output="pooled", stages=["stage3"]).eval()
    path = export_onnx(m, tmp_path / "pooled.onnx", max_batch=8)
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == ["pooled"]
    x = photo_batch[:3]
    (got,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = m(x).numpy()
    assert got.shape == ref.shape == (3, m.feature_info[-1].channels)
    assert cosine(got, ref) >= 0.9999


def test_static_batch_export(tmp_path):
    m = hub.load(MODEL, output="pooled", stages=["stage2"]).eval()
    path = export_onnx(m, tmp_path / "static.onnx", dynamic_batch=False)
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1


def test_bad_requests_say_what_is_accepted(tmp_path, features_model):
    with pytest.raises(ExportError, match=r"must end in \.onnx"):
        export_onnx(features_model, tmp_path / "model.bin")
    with pytest.raises(ExportError, match="max_batch must be a positive integer"):
        export_onnx(features_model, tmp_path / "m.onnx", max_batch=0)
    with pytest.raises(ExportError, match="hub feature extractor"):
        export_onnx(torch.nn.Conv2d(3, 8, 3), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


# An operator with no ONNX translation: a real custom op registered with torch.library.
@torch.library.custom_op("convhub_test::onnx_twist", mutates_args=())
def _twist(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1) * 0.5


@_twist.register_fake
def _(x):
    return torch.empty_like(x)


class _Twist(torch.nn.Module):
    def forward(self, x):
        return _twist(x)


def test_op_onnx_cannot_express_is_named(tmp_path):
    m = hub.load(MODEL, output="pooled", stages=["stage1"]).eval()
    m.body.append(_Twist())  # after the last tap: keeps the graph tiny, still exported
    m.body.insert(1, _Twist())
    with pytest.raises(UnsupportedOpError) as err:
        export_onnx(m, tmp_path / "twist.onnx")
    assert "convhub_test" in str(err.value) and "onnx" in str(err.value)
    assert not (tmp_path / "twist.onnx").exists()
