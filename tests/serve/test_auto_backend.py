"""`--backend auto` on a real server: ONNX Runtime gets exported, cached, verified and timed against torch;
the fastest verified backend serves; SIGTERM lets in-flight requests finish."""
from __future__ import annotations

import io
import json
import re
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from hub.cache import cache_dir

from .helpers import MODEL, Server, base_config, cosine_rows, encode, photos

EMBED = f"/v1/models/{MODEL}/embed"
INFER = f"/v2/models/{MODEL}/infer"

pytest.importorskip("compile.onnx_export", reason="ONNX export (compile.onnx_export) is not available")


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory):
    cfg = base_config(backend="auto", api_key=None)
    srv = Server(cfg, tmp_path_factory.mktemp("auto-server"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_auto_picks_the_fastest_verified_backend_and_says_why(auto_server):
    (m,) = httpx.get(f"{auto_server.url}/v1/models").json()["models"]
    report = m["selection"]
    times = {k: float(v) for k, v in re.findall(r"(torch|onnxruntime|tvm): ([\d.]+) ms", report)}
    assert {"torch", "onnxruntime"} <= set(times), report
    assert m["backend"] == min(times, key=times.get), report
    assert "cosine 1.0000" in report or "cosine 0.9999" in report, report
    assert "tvm: skipped (no artifact configured)" in report
    assert f"backend auto chose {m['backend']}" in auto_server.log()  # said at start-up, in the log
    # the exported graph is cached under the convhub cache, keyed by weights
    import hub

    sha = hub.load(MODEL, output="pooled").weights_sha256
    assert (cache_dir() / "onnx" / f"{MODEL}-{sha[:12]}-features.onnx").is_file()


def test_auto_backend_matches_in_process_torch(auto_server, reference):
    blobs = [encode(im, "JPEG") for im in photos(2)]
    r = httpx.post(auto_server.url + EMBED, files=[("f", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)],
                   timeout=120)
    assert r.status_code == 200, r.text
    assert cosine_rows(np.array(r.json()["embeddings"]), reference.embed_bytes(blobs)).min() >= 0.9999
    r = httpx.post(f"{auto_server.url}/v1/models/{MODEL}/embed?stages=stage4", content=blobs[0],
                   headers={"content-type": "image/jpeg"}, timeout=120)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["features"]["stage4"]["data"])
    want = reference.run(reference.inputs([Image.open(io.BytesIO(blobs[0])).convert("RGB")]))["stage4"]
    assert got.shape == (1, 112, 14, 14) and cosine_rows(got, want).min() >= 0.9999


def test_sigterm_lets_in_flight_requests_finish(auto_server, reference):
    """Runs last in this module: it stops the module's server."""
    x = np.repeat(reference.inputs(photos(1)), 4, axis=0)
    head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body = head + x.tobytes()
    headers = {"inference-header-content-length": str(len(head))}
    results: list[int] = []

    def send():
        r = httpx.post(auto_server.url + INFER, content=body, headers=headers, timeout=120)
        results.append(r.status_code)

    def parsed() -> float:
        text = httpx.get(auto_server.url + "/metrics").text
        m = re.search(rf'convhub_decode_seconds_count{{kind="tensor",model="{MODEL}"}} (\S+)', text)
        return float(m.group(1)) if m else 0.0

    base = parsed()
    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    end = time.monotonic() + 60
    while parsed() < base + 4 and time.monotonic() < end:  # all four accepted and queued
        time.sleep(0.01)
    assert parsed() >= base + 4
    auto_server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert results == [200] * 4, results
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status is "terminated by SIGTERM"
    assert auto_server.proc.wait(60) in (0, -signal.SIGTERM)
    assert "Finished server process" in auto_server.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(auto_server.url + "/v2/health/live", timeout=2)
