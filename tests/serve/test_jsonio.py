"""serve/jsonio.py and the JSON the service writes: float32 outputs read back exactly, bad JSON keeps the
standard library's errors, and the error codes the infer route gives for them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from serve import jsonio
from serve.errors import BadRequest, InvalidTensor
from serve.tensors import encode_response, parse_json


def test_float32_arrays_read_back_exactly():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 1280)) * 10.0 ** rng.integers(-8, 8, (3, 1280))).astype(np.float32)
    a[0, :4] = [0.0, -0.0, np.float32(1e-45), np.finfo(np.float32).max]
    back = json.loads(jsonio.dumps({"embeddings": a}))["embeddings"]  # any JSON reader, not only orjson
    assert np.array_equal(np.asarray(back, np.float32), a)
    # nested arrays (feature maps) keep their shape
    m = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(json.loads(jsonio.dumps(m)), np.float32), m)


def test_loads_agrees_with_the_standard_library():
    for raw in (b'{"a": [1, 2.5, -3e-7, "x", null, true]}', '{"\\u00e9": 1}'.encode("utf-16"),
                b'"\\ud800"'):
        assert jsonio.loads(raw, parse_constant=float) == json.loads(raw)
    seen = []
    assert jsonio.loads(b"[NaN, 1]", parse_constant=lambda t: seen.append(t) or 0.0) == [0.0, 1]
    assert seen == ["NaN"]  # orjson refuses NaN; the fallback hands it to parse_constant
    with pytest.raises(json.JSONDecodeError) as e:
        jsonio.loads(b'{"inputs": [1, 2', parse_constant=float)
    assert e.value.lineno == 1 and e.value.colno == 17  # the standard library's position, not orjson's


def test_parse_json_errors_keep_their_codes():
    with pytest.raises(InvalidTensor) as e:
        parse_json(b'{"inputs": [{"data": [NaN]}]}')
    assert e.value.code == "nan_or_inf"
    with pytest.raises(BadRequest) as e:
        parse_json(b'{"inputs": ')
    assert e.value.code == "malformed_json" and "line 1 column 12" in e.value.message
    with pytest.raises(BadRequest) as e:
        parse_json(b"\xff\xfe\x00")
    assert e.value.code == "malformed_json"


def test_encode_response_json_and_binary_outputs():
    pooled = np.linspace(-1, 1, 2 * 1280, dtype=np.float32).reshape(2, 1280)
    stage = np.arange(2 * 4 * 2 * 2, dtype=np.float32).reshape(2, 4, 2, 2)
    body, headers = encode_response("m", "id-7", {"pooled": pooled, "stage1": stage}, binary={"stage1"})
    n = int(headers["inference-header-content-length"])
    head = json.loads(body[:n])
    assert head["id"] == "id-7" and [o["name"] for o in head["outputs"]] == ["pooled", "stage1"]
    assert np.array_equal(np.asarray(head["outputs"][0]["data"], np.float32).reshape(2, 1280), pooled)
    assert head["outputs"][1]["parameters"]["binary_data_size"] == stage.nbytes
    assert np.array_equal(np.frombuffer(body[n:], "<f4").reshape(stage.shape), stage)
