"""The weight download path end to end against a local Hub stand-in (HF_ENDPOINT on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from safetensors.torch import save

import hub
from hub.errors import ChecksumError, OfflineError, WeightsError
from tests.hub.hf_server import FakeHub

REPO, FILE = "timm/resnet18.tv_in1k", "model.safetensors"
ROOT = Path(__file__).resolve().parents[2]


def resnet18_bytes(seed: int) -> bytes:
    torch.manual_seed(seed)
    return save(torchvision.models.resnet18(weights=None).state_dict())


@pytest.fixture(scope="module")
def weights_a() -> bytes:
    return resnet18_bytes(1)


@pytest.fixture(scope="module")
def weights_b() -> bytes:
    return resnet18_bytes(2)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    fh = FakeHub()
    url = fh.start()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("CONVHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVHUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fh.endpoint = url
    yield fh
    fh.stop()


def write_registry(tmp_path: Path, sources: list[dict], name: str = "resnet18") -> Path:
    """A registry holding models.yaml's real resnet18 entry with other weight sources."""
    doc = yaml.safe_load((ROOT / "models.yaml").read_text())
    entry = doc["models"]["resnet18"]
    entry["weights"] = sources
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": {name: entry}}))
    return path


def conv1(model) -> torch.Tensor:
    return model.body[0].weight


def expected_conv1(data: bytes) -> torch.Tensor:
    from safetensors.torch import load

    return load(data)["conv1.weight"]


def test_fresh_download_then_cache_hit_with_real_registry(fake_hub, weights_a):
    fake_hub.add(REPO, FILE, weights_a)  # the real models.yaml entry's first source
    m = hub.load("resnet18", stages=["layer1"])
    assert torch.equal(conv1(m), expected_conv1(weights_a))
    assert m.weights_sha256 == hashlib.sha256(weights_a).hexdigest()
    lock = json.loads((Path(os.environ["CONVHUB_CACHE"]) / "weights.lock.json").read_text())
    assert lock["sha256"][f"hf://{REPO}/{FILE}@main"] == m.weights_sha256  # trust on first use, recorded
    assert any(method == "GET" for method, _ in fake_hub.requests)
    fake_hub.requests.clear()
    m2 = hub.load("resnet18", stages=["layer1"])
    assert fake_hub.requests == []  # cache hit: no network at all
    assert torch.equal(conv1(m2), conv1(m))


def test_revision_pin_selects_that_revision(fake_hub, weights_a, weights_b, tmp_path, monkeypatch):
    fake_hub.add(REPO, FILE, weights_a, revision="main")
    fake_hub.add(REPO, FILE, weights_b, revision="v2")
    reg = write_registry(tmp_path, [{"type": "hf", "repo": REPO, "filename": FILE, "revision": "v2"}])
    monkeypatch.setenv("CONVHUB_REGISTRY", str(reg))
    m = hub.load("resnet18", stages=["layer1"])
    assert torch.equal(conv1(m), expected_conv1(weights_b))
    assert not torch.equal(conv1(m), expected_conv1(weights_a))


def test_offline_cached_model_loads_and_uncached_fails_fast(fake_hub, weights_a, tmp_path, monkeypatch):
    fake_hub.add(REPO, FILE, weights_a)
    hub.load("resnet18", stages=["layer1"])  # cached now
    fake_hub.stop()
    monkeypatch.setenv("CONVHUB_OFFLINE", "1")
    m = hub.load("resnet18", stages=["layer1"])
    assert torch.equal(conv1(m), expected_conv1(weights_a))
    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        hub.load("resnet34")
    assert time.perf_counter() - t0 < 10
    assert "convhub pull resnet34" in str(err.value) and "weights=PATH" in str(err.value)


def test_unreachable_hub_fails_within_seconds(fake_hub, tmp_path, monkeypatch):
    fake_hub.stop()  # the endpoint now refuses connections
    closed = fake_hub.endpoint
    reg = write_registry(tmp_path, [{"type": "hf", "repo": REPO, "filename": FILE},
                                    {"type": "url", "url": f"{closed}/{REPO}/resolve/main/{FILE}"}])
    monkeypatch.setenv("CONVHUB_REGISTRY", str(reg))
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="convhub pull resnet18"):
        hub.load("resnet18")
    assert time.perf_counter() - t0 < 20


def test_corrupted_file_is_refused_and_not_cached(fake_hub, weights_a, tmp_path, monkeypatch):
    good = hashlib.sha256(weights_a).hexdigest()
    bad = bytearray(weights_a)
    bad[-100] ^= 0xFF  # one flipped byte inside a tensor
    fake_hub.add(REPO, FILE, bytes(bad))
    reg = write_registry(tmp_path, [{"type": "hf", "repo": REPO, "filename": FILE, "sha256": good}])
    monkeypatch.setenv("CONVHUB_REGISTRY", str(reg))
    with pytest.raises(ChecksumError) as err:
        hub.load("resnet18")
    msg = str(err.value)
    assert good in msg and hashlib.sha256(bad).hexdigest() in msg and FILE in msg
    cache = Path(os.environ["CONVHUB_CACHE"])
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 1000]  # nothing corrupt kept
    fake_hub.add(REPO, FILE, weights_a)  # upstream fixed: the same call now succeeds
    assert hub.load("resnet18", stages=["layer1"]).weights_sha256 == good


def test_lock_file_catches_upstream_change(fake_hub, weights_a, weights_b, tmp_path):
    fake_hub.add(REPO, FILE, weights_a)
    hub.load("resnet18", stages=["layer1"])  # records sha256(a)
    cache = Path(os.environ["CONVHUB_CACHE"])
    import shutil

    shutil.rmtree(cache / "hf")  # a fresh cache, the same lock file
    fake_hub.add(REPO, FILE, weights_b)  # the file changed upstream under the same name
    with pytest.raises(ChecksumError, match=hashlib.sha256(weights_a).hexdigest()):
        hub.load("resnet18")


def test_truncated_transfer_leaves_no_partial_file(fake_hub, weights_a, tmp_path, monkeypatch):
    url = f"{fake_hub.endpoint}/{REPO}/resolve/main/{FILE}"
    reg = write_registry(tmp_path, [{"type": "url", "url": url}])
    monkeypatch.setenv("CONVHUB_REGISTRY", str(reg))
    fake_hub.add(REPO, FILE, weights_a)
    fake_hub.truncate.add((REPO, "main", FILE))
    with pytest.raises(WeightsError, match="truncated|download failed"):
        hub.load("resnet18")
    cache = Path(os.environ["CONVHUB_CACHE"])
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    fake_hub.truncate.clear()
    assert hub.load("resnet18", stages=["layer1"]).weights_sha256 == hashlib.sha256(weights_a).hexdigest()


def test_truncated_hub_transfer_is_an_error_not_a_bad_cache(fake_hub, weights_a):
    fake_hub.add(REPO, FILE, weights_a)
    fake_hub.truncate.add((REPO, "main", FILE))
    with pytest.raises(WeightsError):
        hub.load("resnet18")
    fake_hub.truncate.clear()
    assert hub.load("resnet18", stages=["layer1"]).weights_sha256 == hashlib.sha256(weights_a).hexdigest()


@pytest.mark.parametrize("kind", ["hf", "url"])
def test_two_concurrent_pulls_both_succeed(fake_hub, weights_a, tmp_path, kind):
    fake_hub.add(REPO, FILE, weights_a)
    fake_hub.chunk_delay_s = 0.02  # ~0.9 s per transfer, so the two pulls overlap
    src = ({"type": "hf", "repo": REPO, "filename": FILE} if kind == "hf"
           else {"type": "url", "url": f"{fake_hub.endpoint}/{REPO}/resolve/main/{FILE}"})
    reg = write_registry(tmp_path, [src])
    env = {**os.environ, "CONVHUB_REGISTRY": str(reg)}
    cmd = [sys.executable, "-m", "hub.cli", "pull", "resnet18", "--quiet"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    digest = hashlib.sha256(weights_a).hexdigest()
    assert all(digest[:16] in o for o in outs)
    cache = Path(env["CONVHUB_CACHE"])
    big = [p for p in cache.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size > 1000]
    assert len(big) == 1 and hashlib.sha256(big[0].read_bytes()).hexdigest() == digest
