"""Service configuration: pydantic models, read from a YAML file and overridden by CLI flags."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hub.errors import HubError

BackendName = Literal["auto", "torch", "onnxruntime", "tvm"]
API_KEY_ENV = "CONVHUB_API_KEY"


class ConfigError(HubError, ValueError):
    """The serve configuration (YAML file or flags) is invalid; names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Batching(_Strict):
    """Dynamic batching of one model: rows per batch, how long to wait for more, queue bound (in images).

    max_delay_ms 0 (Triton's default too): a free compute thread runs whatever is queued at once, and the
    requests that arrive meanwhile form the next batch. At 8 clients x 1 image with batch 8, waiting 5 ms
    for a full batch left the cores idle while the event loop read the batch's requests one by one (mean
    batch 7.4, 86 img/s); without the wait batches averaged 4 rows at 89-97 img/s, p50 latency 82-87 ms
    instead of 91 (benchmarks/serve_overhead.py --delay-ms, 2026-11-30)."""

    max_batch_size: int = Field(8, ge=1, le=256)
    max_delay_ms: float = Field(0.0, ge=0, le=1000)
    max_queue: int = Field(64, ge=1)


class Limits(_Strict):
    """Request limits; anything over them is refused with a 4xx before it costs compute."""

    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_images: int = Field(16, ge=1, description="images (or batch rows) in one request")
    max_pixels: int = Field(40_000_000, ge=1, description="width*height of one decoded image")
    request_timeout_s: float = Field(30.0, gt=0)


class Workers(_Strict):
    """Threads: image decoding/JSON parsing off the event loop; per model, `compute_instances` batches run at
    once, each on `compute_threads` intra-op threads. Default: one batch on all cores (lowest latency); for
    throughput under HTTP load on a small CPU, `compute_instances: N, compute_threads: 1` (docs/serve.md)."""

    decode_threads: int = Field(2, ge=1, le=64)
    compute_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    compute_instances: int = Field(1, ge=1, le=64)


class ModelConfig(_Strict):
    """One served model: a registry name, its backend, and (for tvm) the compiled artifact directory."""

    name: str
    backend: BackendName | None = None  # None: the top-level `backend`
    artifact: Path | None = None
    batching: Batching | None = None  # None: the top-level `batching`

    @model_validator(mode="after")
    def _artifact_for_tvm(self) -> "ModelConfig":
        if self.backend == "tvm" and self.artifact is None:
            raise ValueError(f"model {self.name!r}: backend tvm needs `artifact: DIR` (made by `convhub compile`)")
        return self


class ServeConfig(_Strict):
    """Everything `convhub serve` needs; the YAML file has the same fields."""

    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig(name="efficientnet-lite0")])
    backend: BackendName = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    batching: Batching = Field(default_factory=Batching)
    limits: Limits = Field(default_factory=Limits)
    workers: Workers = Field(default_factory=Workers)
    graceful_timeout_s: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _names_as_models(cls, v):
        # `models: [efficientnet-lite0]` is the common case: allow bare names
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ServeConfig":
        if not self.models:
            raise ValueError("at least one model is needed (models: [NAME, ...] or --model NAME)")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models listed twice: {dup}")
        if self.api_key is None and os.environ.get(API_KEY_ENV):
            self.api_key = os.environ[API_KEY_ENV]
        return self

    def backend_of(self, model: ModelConfig) -> str:
        return model.backend or self.backend

    def batching_of(self, model: ModelConfig) -> Batching:
        return model.batching or self.batching


def _format(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{loc}: {e['msg']}")
    return f"invalid serve config {where}: " + "; ".join(parts)


def load_config(path: str | os.PathLike | None = None, **overrides) -> ServeConfig:
    """Read a YAML config (optional) and apply flag overrides (None values are ignored)."""
    data: dict = {}
    where = "(flags)"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            loaded = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping (models:, backend:, limits:, ...), "
                              f"got {type(loaded).__name__}")
        data = loaded or {}
    models = overrides.pop("models", None)
    if models:
        # --model replaces the file's list but keeps per-model settings of names it already has
        by_name = {(m if isinstance(m, str) else m.get("name")): m for m in data.get("models") or []}
        data["models"] = [by_name.get(n, n) for n in models]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, where)) from None
