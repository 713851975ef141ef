"""Every bad input from the issue gets a clear JSON 4xx, and the server keeps serving."""
from __future__ import annotations

import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from .helpers import MODEL, encode, photos

EMBED = f"/v1/models/{MODEL}/embed"
INFER = f"/v2/models/{MODEL}/infer"
SHAPE = [1, 3, 224, 224]
N = 3 * 224 * 224


def _inp(**kw) -> dict:
    base = {"name": "input", "shape": SHAPE, "datatype": "FP32", "data": [0.0] * N}
    base.update(kw)
    return {"inputs": [base]}


def _binary(head: dict, raw: bytes) -> tuple[bytes, dict]:
    h = json.dumps(head).encode()
    return h + raw, {"inference-header-content-length": str(len(h)), "content-type": "application/octet-stream"}


def _png_with_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header declares width x height (the classic pixel-flood file)."""
    raw = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def _bomb_png() -> bytes:
    """A real 4000x4000 PNG: 16 MP (over the 4 MP limit) in about 20 KB."""
    return encode(Image.new("L", (4000, 4000)), "PNG", optimize=True)


JPEG = encode(photos(1)[0], "JPEG")
PNG = encode(photos(1)[0], "PNG")
_fp32 = np.zeros(SHAPE, np.float32)
_nan = _fp32.copy()
_nan[0, 1, 2, 3] = np.nan
_inf = _fp32.copy()
_inf[0, 0, 0, 0] = np.inf
_bin_head = {"inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32",
                         "parameters": {"binary_data_size": _fp32.nbytes}}]}
_short_head = {"inputs": [{"name": "input", "shape": SHAPE, "datatype": "FP32",
                           "parameters": {"binary_data_size": _fp32.nbytes - 4}}]}


def _multipart(n: int) -> tuple[bytes, dict]:
    import httpx

    req = httpx.Request("POST", "http://x/", files=[("files", (f"{i}.jpg", JPEG, "image/jpeg")) for i in range(n)])
    return req.read(), {"content-type": req.headers["content-type"]}


# (id, method path, body, headers, status, code, words the message must contain)
CASES = [
    ("malformed-json", INFER, b'{"inputs": [', {"content-type": "application/json"}, 400, "malformed_json",
     ["malformed JSON"]),
    ("not-an-object", INFER, b"[1, 2]", {}, 400, "malformed_request", ['"inputs"']),
    ("wrong-datatype", INFER, json.dumps(_inp(datatype="FP64")).encode(), {}, 400, "wrong_datatype",
     ["FP64", "FP32, FP16, UINT8"]),
    ("strings-in-data", INFER, json.dumps(_inp(data=["a"] * N)).encode(), {}, 400, "wrong_datatype", ["numbers"]),
    ("shape-mismatch", INFER, json.dumps(_inp(shape=[1, 3, 32, 32], data=[0.0] * 3072)).encode(), {}, 400,
     "wrong_shape", ["[N, 3, 224, 224]"]),
    ("shape-rank", INFER, json.dumps(_inp(shape=[3, 224, 224])).encode(), {}, 400, "wrong_shape", ["expected"]),
    ("data-length-json", INFER, json.dumps(_inp(data=[0.0] * (N - 1))).encode(), {}, 400, "data_length",
     [str(N - 1), str(N)]),
    ("data-length-binary", INFER, *_binary(_short_head, _fp32.tobytes()[:-4]), 400, "data_length", ["bytes"]),
    ("binary-size-vs-body", INFER, *_binary(_bin_head, _fp32.tobytes()[:-8]), 400, "data_length", ["follow"]),
    ("nan-binary", INFER, *_binary(_bin_head, _nan.tobytes()), 400, "nan_or_inf", ["NaN/Inf"]),
    ("inf-binary", INFER, *_binary(_bin_head, _inf.tobytes()), 400, "nan_or_inf", ["finite"]),
    ("nan-json-token", INFER, json.dumps(_inp(data=[float("nan")] * N)).encode(), {}, 400, "nan_or_inf", ["NaN"]),
    ("fp16-overflow", INFER, json.dumps(_inp(datatype="FP16", data=[1e6] * N)).encode(), {}, 400, "nan_or_inf",
     ["FP16"]),
    ("uint8-range", INFER, json.dumps(_inp(datatype="UINT8", data=[300] * N)).encode(), {}, 400, "wrong_datatype",
     ["0 to 255"]),
    ("unknown-input", INFER, json.dumps(_inp(name="images")).encode(), {}, 400, "wrong_input", ['"input"']),
    ("unknown-output", INFER, json.dumps({**_inp(), "outputs": [{"name": "logits"}]}).encode(), {}, 400,
     "unknown_output", ["pooled", "stage5"]),
    ("bad-header-length", INFER, b"{}", {"inference-header-content-length": "999"}, 400, "malformed_binary",
     ["Inference-Header-Content-Length"]),
    ("too-many-rows", INFER, *_binary({"inputs": [{"name": "input", "shape": [5, 3, 224, 224], "datatype": "FP32",
                                                    "parameters": {"binary_data_size": 5 * _fp32.nbytes}}]},
                                      b"\0" * (5 * _fp32.nbytes)), 413, "too_many_images", ["at most 4"]),
    ("non-image-bytes", EMBED, b"this is not an image at all", {"content-type": "image/jpeg"}, 400, "not_an_image",
     ["JPEG, PNG or WebP"]),
    ("empty-image", EMBED, b"", {"content-type": "image/png"}, 400, "invalid_image", ["empty"]),
    ("truncated-jpeg", EMBED, JPEG[: len(JPEG) // 2], {"content-type": "image/jpeg"}, 400, "corrupt_image",
     ["truncated"]),
    ("truncated-png", EMBED, PNG[: len(PNG) // 3], {"content-type": "image/png"}, 400, "corrupt_image",
     ["truncated"]),
    ("bomb-header", EMBED, _png_with_size(100_000, 100_000), {"content-type": "image/png"}, 413, "image_too_large",
     ["pixels"]),
    ("bomb-real", EMBED, _bomb_png(), {"content-type": "image/png"}, 413, "image_too_large", ["4000x4000"]),
    ("body-too-large-image", EMBED, b"\xff" * (9 * 1024 * 1024), {"content-type": "image/jpeg"}, 413,
     "payload_too_large", ["limit"]),
    ("body-too-large-json", INFER, b" " * (9 * 1024 * 1024), {"content-type": "application/json"}, 413,
     "payload_too_large", ["max_body_bytes"]),
    ("unknown-model-embed", "/v1/models/resnet-conv/embed", JPEG, {"content-type": "image/jpeg"}, 404,
     "unknown_model", ["efficientnet-lite0"]),
    ("unknown-model-infer", "/v2/models/nope/infer", json.dumps(_inp()).encode(), {}, 404, "unknown_model",
     ["served models"]),
    ("unsupported-content-type", EMBED, JPEG, {"content-type": "image/gif"}, 415, "unsupported_media_type",
     ["image/jpeg", "multipart"]),
    ("no-content-type", EMBED, JPEG, {"content-type": ""}, 415, "unsupported_media_type", ["multipart"]),
    ("too-many-images", EMBED, *_multipart(5), 413, "too_many_images", ["5", "at most 4"]),
    ("multipart-without-files", EMBED, b"--xx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--xx--\r\n",
     {"content-type": "multipart/form-data; boundary=xx"}, 400, "no_images", ["files"]),
    ("unknown-stage", EMBED + "?stages=stage9", JPEG, {"content-type": "image/jpeg"}, 400, "unknown_stage",
     ["stage1"]),
    ("bad-dtype", EMBED + "?dtype=int8", JPEG, {"content-type": "image/jpeg"}, 400, "bad_dtype", ["float16"]),
]


@pytest.mark.parametrize("path,body,headers,status,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_clear_json_error(client, path, body, headers, status, code, words):
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()
    assert err["code"] == code, err
    for w in words:
        assert w in err["error"], (w, err["error"])
    assert "Traceback" not in r.text
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200


def test_server_keeps_serving_good_requests_among_bad_ones(client):
    good = encode(photos(2)[1], "JPEG")

    def send(case):
        _, path, body, headers, status, *_ = case
        return status, client.post(path, content=body, headers=headers).status_code

    def send_good(_):
        r = client.post(EMBED, content=good, headers={"content-type": "image/jpeg"})
        return 200, r.status_code

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, CASES[:12])) + list(pool.map(send_good, range(3)))
        results += list(pool.map(send, CASES[12:]))
    assert all(want == got for want, got in results), results
