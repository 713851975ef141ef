"""`convhub export` end to end through the real CLI entry point: files, manifests, refusals."""
from __future__ import annotations

import json

import onnx
import pytest

from hub.cli import main

from .conftest import MODEL


def test_export_onnx_pooled_writes_verified_file_and_manifest(tmp_path, capsys):
    out = tmp_path / "lite0-pooled.onnx"
    rc = main(["export", MODEL, "--format", "onnx", "--out", str(out), "--output", "pooled", "--stages", "stage2",
               "--photos", "3"])
    assert rc == 0, capsys.readouterr()
    assert capsys.readouterr().out.strip().endswith(str(out))
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["pooled"]
    manifest = json.loads((tmp_path / "lite0-pooled.onnx.manifest.json").read_text())
    assert manifest["model"]["stages"] == ["stage2"] and manifest["model"]["output"] == "pooled"
    assert manifest["outputs"] == [{"name": "pooled", "shape": ["batch", 24], "dtype": "float32"}]
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["outputs"]["pooled"]["cosine"] >= 0.9999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lite0-pooled.onnx", "lite0-pooled.onnx.manifest.json"]


@pytest.mark.parametrize("argv, expected", [
    (["--format", "tflite", "--out", "q.tflite", "--quantize", "int8"], "int8 quantization needs calibration data"),
    (["--format", "onnx", "--out", "q.onnx", "--quantize", "int8"], "offered for --format tflite"),
    (["--format", "tflite", "--out", "q.onnx"], "must end in .tflite"),
    (["--format", "tflite", "--out", "q.tflite", "--calibration", "."], "used only with --quantize int8"),
    (["--format", "tflite", "--out", "q.tflite", "--quantize", "int8", "--calibration", "no/such/dir"],
     "does not exist or is not a directory"),
])
def test_bad_requests_exit_2_with_a_clear_message(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    rc = main(["export", MODEL, *argv])
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines at the terminal width
    assert rc == 2
    assert expected in err and err.startswith("convhub: error:") and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_unknown_stage_is_a_clear_error(tmp_path, capsys):
    rc = main(["export", MODEL, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--stages", "stage9"])
    err = capsys.readouterr().err
    assert rc == 2 and "stage9" in err and "Traceback" not in err
