"""LiteRT export through litert-torch, run with the ai-edge-litert interpreter against PyTorch on real photos."""
from __future__ import annotations

import json

import pytest
import torch

import hub
from compile.edge_errors import CalibrationError, ExportError, UnsupportedOpError
from compile.edge_export import export_model
from compile.edge_manifest import manifest_path, read_manifest
from compile.edge_runtime import TFLiteRunner
from compile.tflite_export import converter_python, export_tflite, quantize_tflite

from .conftest import MODEL, cosine

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def lite0_tflite(tmp_path_factory):
    converter_python()  # a missing converter environment fails here with the set-up hint
    return export_model(MODEL, "tflite", tmp_path_factory.mktemp("tfl") / "lite0.tflite")


@pytest.fixture(scope="session")
def lite0_int8(tmp_path_factory, calibration_dir, lite0_tflite):
    # quantizes the fp32 file (what litert-torch produced) rather than converting from PyTorch a second time
    return export_model(MODEL, "tflite", tmp_path_factory.mktemp("tfl8") / "lite0-int8.tflite", quantize="int8",
                        calibration=calibration_dir, float_model=lite0_tflite.path)


def test_fp32_matches_pytorch_on_photos(lite0_tflite, features_model, photo_batch):
    runner = TFLiteRunner(lite0_tflite.path, num_threads=2)
    assert runner.input_name == "input" and runner.io_dtype == "float32"
    assert runner.output_names == features_model.feature_info.names
    x = photo_batch[:3]
    got = runner(x.numpy())
    with torch.no_grad():
        ref = features_model(x)
    for stage in ref:
        assert got[stage].shape == tuple(ref[stage].shape)
        assert cosine(got[stage], ref[stage].numpy()) >= 0.9999, stage


def test_fp32_manifest_records_source_and_parity(lite0_tflite, features_model):
    m = read_manifest(lite0_tflite.path)  # also checks the file's sha256
    assert m["model"]["name"] == MODEL and m["model"]["weights_sha256"] == features_model.weights_sha256
    assert m["file"]["precision"] == "fp32" and m["file"]["bytes"] == lite0_tflite.path.stat().st_size
    assert m["input"]["preprocessing"]["center_crop"] == 224 and m["input"]["shape"] == [1, 3, 224, 224]
    assert [o["name"] for o in m["outputs"]] == features_model.feature_info.names
    v = m["verification"]
    assert v["status"] == "passed" and len(v["photos"]) >= 3
    assert min(f["cosine"] for f in v["outputs"].values()) >= 0.9999
    assert v["top1_agreement"] == 1.0  # fp32: the checkpoint's classifier agrees on every photo
    # a tampered file no longer matches its manifest
    tampered = lite0_tflite.path.with_name("tampered.tflite")
    data = bytearray(lite0_tflite.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    manifest_path(tampered).write_text(manifest_path(lite0_tflite.path).read_text())
    with pytest.raises(ExportError, match="does not match its manifest"):
        read_manifest(tampered)


def test_int8_costs_are_measured_and_bounded(lite0_int8, lite0_tflite, features_model, photo_batch):
    m = lite0_int8.manifest
    assert m["quantization"]["mode"] == "int8"
    calib = m["quantization"]["calibration"]
    assert calib["images"] == len(photo_batch) and all(f.endswith(".jpg") for f in calib["files"])
    # a quarter of fp32's bytes, give or take the float boundary tensors
    assert m["file"]["bytes"] < 0.4 * lite0_tflite.manifest["file"]["bytes"]
    on_calib = m["verification"]["calibration_images"]
    assert on_calib["count"] == len(photo_batch)
    agreement = on_calib["top1_agreement"]
    assert agreement is not None and agreement >= 0.5
    # independent of the manifest: run the file and compare with PyTorch
    got = TFLiteRunner(lite0_int8.path, num_threads=2)(photo_batch.numpy())
    with torch.no_grad():
        ref = features_model(photo_batch)
    cos = {s: cosine(got[s], ref[s].numpy()) for s in ref}
    assert min(cos.values()) >= 0.9, cos
    assert max(cos.values()) < 0.99999  # it really is quantized, not a float copy
    assert abs(cos["stage5"] - m["verification"]["outputs"]["stage5"]["cosine"]) < 0.05


def test_fp16_is_smaller_and_close(tmp_path, lite0_tflite, features_model, photo_batch):
    fp16 = quantize_tflite(lite0_tflite.path, tmp_path / "lite0-fp16.tflite", quantize="fp16")
    assert fp16.stat().st_size < 0.6 * lite0_tflite.path.stat().st_size
    got = TFLiteRunner(fp16, num_threads=2)(photo_batch.numpy())
    with torch.no_grad():
        ref = features_model(photo_batch)
    cos = {s: cosine(got[s], ref[s].numpy()) for s in ref}
    assert min(cos.values()) >= 0.999, cos
    assert min(cos.values()) < 0.9999999  # weights really were rounded to float16


def test_int8_without_calibration_refuses(tmp_path, features_model):
    with pytest.raises(CalibrationError, match="needs calibration data"):
        export_tflite(features_model, tmp_path / "q.tflite", quantize="int8")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match="no readable image"):
        export_tflite(features_model, tmp_path / "q.tflite", quantize="int8", calibration=empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match="could not be read: photo.jpg"):
        export_tflite(features_model, tmp_path / "q.tflite", quantize="int8", calibration=broken)
    with pytest.raises(CalibrationError, match="does not exist"):
        export_tflite(features_model, tmp_path / "q.tflite", quantize="int8", calibration=tmp_path / "nope")
    with pytest.raises(ExportError, match="quantize must be one of fp16, int8"):
        export_tflite(features_model, tmp_path / "q.tflite", quantize="int4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty"]


class _CumProd(torch.nn.Module):
    def forward(self, x):
        return torch.cumprod(x, -1)


def test_op_litert_cannot_express_is_named(tmp_path):
    m = hub.load(MODEL, output="pooled", stages=["stage1"]).eval()
    m.body.insert(1, _CumProd())
    with pytest.raises(UnsupportedOpError) as err:
        export_tflite(m, tmp_path / "cumprod.tflite")
    msg = str(err.value)
    assert "aten.cumprod" in msg and "tflite" in msg
    assert not list(tmp_path.iterdir())


def test_manifest_is_json_next_to_file(lite0_tflite):
    text = manifest_path(lite0_tflite.path).read_text()
    assert json.loads(text)["file"]["name"] == "lite0.tflite"


def test_int8_file_into_tvm_names_the_ops_its_frontend_lacks(lite0_int8):
    from compile.tflite_tvm import import_tflite
    with pytest.raises(UnsupportedOpError) as err:
        import_tflite(lite0_int8.path)
    msg = str(err.value)
    assert "quantized" in msg and "PAD" in msg and "TFLite frontend" in msg and "fp32 .tflite" in msg


def test_bench_backends_run_the_files(tmp_path, lite0_tflite, features_model, photo_batch):
    from compile import bench
    from compile.edge_bench import backends

    bench._load_plugins()
    assert {"litert", "litert-fp16", "litert-int8", "onnxruntime"} <= set(bench.BACKENDS)
    assert set(backends()) == {"onnxruntime", "litert"}
    ctx = bench.BenchContext(name=MODEL, module=features_model, size=224, threads=2, workdir=tmp_path,
                             cache={"tflite": lite0_tflite.path})  # reuse the session's export
    x = photo_batch[:2].numpy()
    with torch.no_grad():
        ref = features_model(photo_batch[:2])
    for name, floor in (("litert", 0.9999), ("litert-fp16", 0.999)):
        runner = bench.BACKENDS[name](ctx, 2)
        got = runner.run(x)
        assert "looped x2" in runner.note
        assert cosine(got["stage5"], ref["stage5"].numpy()) >= floor, name
