"""convhub's inference service: FastAPI app, dynamic batching, torch / ONNX Runtime / TVM backends.

    from serve.app import create_app
    from serve.config import ServeConfig
    app = create_app(ServeConfig(models=["efficientnet-lite0"]))
"""
from __future__ import annotations

__all__ = ["create_app", "ServeConfig", "load_config"]


def __getattr__(name: str):
    # lazy: `import serve` must not pull in torch/fastapi for `convhub --help`
    if name == "create_app":
        from .app import create_app
        return create_app
    if name in ("ServeConfig", "load_config"):
        from . import config
        return getattr(config, name)
    raise AttributeError(name)
