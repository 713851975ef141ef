"""The service over real HTTP: endpoints, embeddings equal to in-process outputs, batching, metrics, auth."""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from .helpers import API_KEY, MODEL, cosine_rows, encode, photos

EMBED = f"/v1/models/{MODEL}/embed"
INFER = f"/v2/models/{MODEL}/infer"


def test_health_and_metadata(client, torch_server):
    open_client = httpx.Client(base_url=torch_server.url)  # no key: health stays open
    assert open_client.get("/v2/health/live").json() == {"live": True}
    assert open_client.get("/v2/health/ready").json()["ready"] is True
    assert open_client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert "binary_tensor_data" in open_client.get("/v2").json()["extensions"]
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 224, 224]
    outs = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert outs["pooled"] == [-1, 1280] and outs["stage3"] == [-1, 40, 28, 28]
    models = client.get("/v1/models").json()
    (m,) = models["models"]
    assert m["name"] == MODEL and m["backend"] == "torch" and m["max_batch"] == 4
    assert m["input"]["shape"] == [-1, 3, 224, 224]
    assert "openapi" in open_client.get("/openapi.json").json()
    assert open_client.get("/docs").status_code == 200


@pytest.mark.parametrize("fmt,ctype", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_embed_raw_image_matches_in_process(client, reference, fmt, ctype):
    blob = encode(photos(1)[0], fmt)
    r = client.post(EMBED, content=blob, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL
    got = np.array(body["embeddings"], np.float32)
    assert got.shape == (1, 1280)
    assert cosine_rows(got, reference.embed_bytes([blob])).min() >= 0.9999


def test_embed_multipart_keeps_order(client, reference):
    ims = photos(3)
    blobs = [encode(ims[0], "JPEG"), encode(ims[1], "PNG"), encode(ims[2], "WEBP", quality=90)]
    files = [("files", (f"p{i}", b, "application/octet-stream")) for i, b in enumerate(blobs)]
    r = client.post(EMBED, files=files)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"], np.float32)
    want = reference.embed_bytes(blobs)
    assert got.shape == (3, 1280)
    assert cosine_rows(got, want).min() >= 0.9999
    # different photos give clearly different embeddings (order matters)
    assert cosine_rows(got[[0]], want[[1]])[0] < 0.99


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embed_binary_response(client, reference, dtype):
    blob = encode(photos(2)[1], "PNG")
    r = client.post(f"{EMBED}?dtype={dtype}", content=blob,
                    headers={"content-type": "image/png", "accept": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-dtype"] == dtype and r.headers["x-shape"] == "1,1280"
    got = np.frombuffer(r.content, dtype=dtype).reshape(1, 1280)
    assert cosine_rows(got, reference.embed_bytes([blob])).min() >= 0.999


def test_embed_stages_returns_feature_maps(client, reference):
    blob = encode(photos(1)[0], "JPEG", quality=95)
    r = client.post(f"{EMBED}?stages=stage3,stage5", content=blob, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    feats = r.json()["features"]
    assert set(feats) == {"stage3", "stage5"}
    assert feats["stage3"]["shape"] == [1, 40, 28, 28] and feats["stage5"]["shape"] == [1, 1280, 7, 7]
    from PIL import Image
    import io
    want = reference.run(reference.inputs([Image.open(io.BytesIO(blob)).convert("RGB")]))
    for s in ("stage3", "stage5"):
        assert cosine_rows(np.array(feats[s]["data"]), want[s]).min() >= 0.9999


def _oip_json(x: np.ndarray, datatype: str = "FP32", **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                        "data": x.ravel().tolist()}], **extra}


def test_infer_json_fp32_and_fp16(client, reference):
    x = reference.inputs(photos(2))
    want = reference.run(x)["pooled"]
    r = client.post(INFER, json=_oip_json(x, id="req-1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == MODEL and body["id"] == "req-1"
    (out,) = body["outputs"]
    assert out["name"] == "pooled" and out["datatype"] == "FP32" and out["shape"] == [2, 1280]
    assert cosine_rows(np.array(out["data"]).reshape(2, 1280), want).min() >= 0.9999
    r16 = client.post(INFER, json=_oip_json(x.astype(np.float16), "FP16"))
    assert r16.status_code == 200, r16.text
    got16 = np.array(r16.json()["outputs"][0]["data"]).reshape(2, 1280)
    assert cosine_rows(got16, want).min() >= 0.999


def test_infer_uint8_pixels_are_normalized_by_the_server(client, reference):
    im = photos(1)[0]
    # the model's resize+crop without normalization, as uint8 pixels
    tf = reference.tf.spec
    side = im.resize((tf.resize, tf.resize))  # square test photo crop is not needed: compare same pixels
    left = (tf.resize - tf.input_size) // 2
    crop = side.crop((left, left, left + tf.input_size, left + tf.input_size))
    pix = np.asarray(crop, np.uint8).transpose(2, 0, 1)[None]
    mean = np.array(tf.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(tf.std, np.float32).reshape(1, 3, 1, 1)
    want = reference.run(((pix / 255.0 - mean) / std).astype(np.float32))["pooled"]
    r = client.post(INFER, json=_oip_json(pix, "UINT8"))
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"]).reshape(1, 1280)
    assert cosine_rows(got, want).min() >= 0.9999


def _binary_request(x: np.ndarray, datatype: str = "FP32", outputs=("pooled",), binary_out=True
                    ) -> tuple[bytes, dict]:
    raw = x.tobytes()
    head = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": o, "parameters": {"binary_data": binary_out}} for o in outputs]}
    h = json.dumps(head).encode()
    return h + raw, {"inference-header-content-length": str(len(h)), "content-type": "application/octet-stream"}


def _split_binary(r: httpx.Response) -> dict[str, np.ndarray]:
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    out, pos = {}, n
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(r.content[pos:pos + size], "<f4").reshape(o["shape"])
        pos += size
    assert pos == len(r.content)
    return out


def test_infer_binary_tensors_with_stage_outputs(client, reference):
    x = reference.inputs(photos(3))
    want = reference.run(x)
    body, headers = _binary_request(x, outputs=("stage2", "pooled"))
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    got = _split_binary(r)
    assert got["stage2"].shape == (3, 24, 56, 56) and got["pooled"].shape == (3, 1280)
    for k in ("stage2", "pooled"):
        assert cosine_rows(got[k], want[k]).min() >= 0.9999


def test_concurrent_requests_are_batched_and_correct(client, reference, torch_server):
    x = reference.inputs(photos(6))
    want = reference.run(x)["pooled"]

    def one(i: int) -> np.ndarray:
        body, headers = _binary_request(x[i:i + 1])
        r = client.post(INFER, content=body, headers=headers)
        assert r.status_code == 200, r.text
        return _split_binary(r)["pooled"][0]

    before = _batch_counts(client)
    with ThreadPoolExecutor(6) as pool:
        got = np.stack(list(pool.map(one, range(6))))
    assert cosine_rows(got, want).min() >= 0.9999  # each reply belongs to its own request
    after = _batch_counts(client)
    batches, rows = after[0] - before[0], after[1] - before[1]
    assert rows == 6 and batches < 6, f"6 concurrent requests ran as {batches} batches"


def _batch_counts(client) -> tuple[float, float]:
    """(batches, rows) run so far; (0, 0) before the first batch, when the labelled series does not exist yet."""
    text = client.get("/metrics").text
    found = [re.search(rf'convhub_batch_size_{k}{{model="{MODEL}"}} (\S+)', text) for k in ("count", "sum")]
    return tuple(float(m.group(1)) if m else 0.0 for m in found)


def test_metrics_exposes_routes_latency_split_batches_and_queue(client):
    client.post(EMBED, content=encode(photos(1)[0], "JPEG"), headers={"content-type": "image/jpeg"})
    client.post(EMBED, content=b"nope", headers={"content-type": "image/jpeg"})
    text = client.get("/metrics").text
    assert re.search(r'convhub_requests_total\{method="POST",route="/v1/models/\{name\}/embed",status="200"\} [1-9]',
                     text)
    assert re.search(r'convhub_requests_total\{method="POST",route="/v1/models/\{name\}/embed",status="400"\} [1-9]',
                     text)
    for name in ("convhub_decode_seconds_count", "convhub_queue_seconds_count", "convhub_compute_seconds_count",
                 "convhub_request_seconds_bucket", "convhub_batch_size_bucket", "convhub_queue_depth",
                 "process_resident_memory_bytes"):
        assert name in text, name


def test_api_key_guards_inference_and_admin_but_not_health(torch_server):
    blob = encode(photos(1)[0], "JPEG")
    with httpx.Client(base_url=torch_server.url, timeout=120) as c:
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", f"/v2/models/{MODEL}"),
                             ("POST", INFER), ("POST", EMBED)]:
            r = c.request(method, path)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", (path, r.text)
            assert "X-API-Key" in r.json()["error"]
        assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        r = c.post(EMBED, content=blob, headers={"content-type": "image/jpeg", "authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 200, r.text
        assert c.get("/v2/health/ready").status_code == 200


def test_full_queue_answers_503_with_retry_after(client, reference):
    # 16-image queue, 4 rows per request: 12 concurrent requests cannot all wait
    x = np.repeat(reference.inputs(photos(1)), 4, axis=0)
    body, headers = _binary_request(x)

    def one(_):
        return client.post(INFER, content=body, headers=headers)

    with ThreadPoolExecutor(12) as pool:
        rs = list(pool.map(one, range(12)))
    codes = sorted(r.status_code for r in rs)
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["code"] == "overloaded"
    assert "queue full" in busy.json()["error"]
    ok = client.post(INFER, content=body, headers=headers)  # the server recovers
    assert ok.status_code == 200


def test_load_script_smoke(torch_server):
    """The bounded load script (a few seconds here): every mode answers, no errors, RSS reported."""
    import subprocess
    import sys

    from .helpers import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "load_test.py"), "--url", torch_server.url,
                        "--duration", "4", "--concurrency", "3", "--api-key", API_KEY, "--rss-every", "1", "--json"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["errors"] == 0
    assert all(rep["modes"][m]["ok"] >= 1 for m in ("json", "binary", "binary-u8", "jpeg")), rep["modes"]
    assert rep["rss_before_mib"] > 100 and rep["rss_after_mib"] > 100
    times = [t for t, _ in rep["rss_samples"]]  # sampled during the run, in order
    assert len(times) >= 2 and times == sorted(times) and all(m > 100 for _, m in rep["rss_samples"])
    assert rep["p50_ms"] > 0 and rep["p99_ms"] >= rep["p50_ms"]
