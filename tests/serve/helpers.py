"""A real `python -m serve` process on 127.0.0.1 for tests, and image/tensor helpers."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from PIL import Image

import hub
import hub.samples

ROOT = Path(__file__).resolve().parents[2]
MODEL = "efficientnet-lite0"
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m serve --config FILE --port P` in a subprocess (on `cpus` when given); waits until
    /v2/health/ready is 200."""

    def __init__(self, config: dict, workdir: Path, *, extra_args: tuple[str, ...] = (),
                 cpus: set[int] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "serve.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "serve", "--config", str(cfg), "--host", "127.0.0.1",
                                      "--port", str(self.port), *extra_args],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     # set before exec: every thread the server starts inherits it
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 600) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def base_config(**over) -> dict:
    cfg = {
        "models": [MODEL],
        "backend": "torch",
        "api_key": API_KEY,
        "batching": {"max_batch_size": 4, "max_delay_ms": 20, "max_queue": 16},
        "limits": {"max_body_bytes": 8 * 1024 * 1024, "max_images": 4, "max_pixels": 4_000_000,
                   "request_timeout_s": 120},
        # one intra-op thread: on 2 shared cores torch with 2 threads spends its time spinning
        "workers": {"decode_threads": 2, "compute_threads": 1},
    }
    cfg.update(over)
    return cfg


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photos(n: int | None = None) -> list[Image.Image]:
    ims = [p.open() for p in hub.samples.sample_photos()]
    return ims[:n] if n else ims


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class Reference:
    """The in-process hub module and preprocessing the server must agree with."""

    def __init__(self) -> None:
        self.module = hub.load(MODEL, output="features").eval()
        self.tf = hub.transforms(MODEL)

    def inputs(self, images: list[Image.Image]) -> np.ndarray:
        return torch.stack([self.tf(im) for im in images]).numpy()

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            feats = self.module(torch.from_numpy(np.ascontiguousarray(x)))
        out = {k: v.numpy() for k, v in feats.items()}
        out["pooled"] = out["stage5"].mean((2, 3))
        return out

    def embed_bytes(self, blobs: list[bytes]) -> np.ndarray:
        """What the server should answer for these encoded files: decode with PIL here, run in-process."""
        ims = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
        return self.run(self.inputs(ims))["pooled"]
