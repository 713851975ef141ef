"""Run the app under uvicorn with graceful shutdown; log where it listens and which backend it chose."""
from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .config import ServeConfig

log = logging.getLogger("serve")


def serve(config: ServeConfig) -> int:
    """Blocks until SIGINT/SIGTERM; in-flight requests finish (up to graceful_timeout_s)."""
    # our own start-up report at INFO; libraries (the ONNX exporter narrates every pass) only at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("serve").setLevel(config.log_level.upper())
    app = create_app(config)
    ucfg = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                          timeout_graceful_shutdown=config.graceful_timeout_s, access_log=False,
                          limit_concurrency=None, server_header=False)
    server = uvicorn.Server(ucfg)
    svc = app.state.service

    def fatal(msg: str) -> None:
        server.should_exit = True

    svc.on_fatal = fatal
    if config.api_key:
        log.info("API key required on inference and admin routes (X-API-Key or Bearer)")
    server.run()
    return 1 if svc.failed else 0
