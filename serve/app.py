"""The FastAPI application factory."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ServeConfig
from .errors import ServeError
from .metrics import MetricsMiddleware
from .routers import admin, health, images, oip
from .service import Service

log = logging.getLogger("serve")


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def create_app(config: ServeConfig) -> FastAPI:
    """An app serving `config.models`; models load in the background after start-up (see /v2/health/ready)."""
    svc = Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(svc.load_all(), name="load-models")
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            await svc.close()

    app = FastAPI(title="convhub serve", version="0.1.0", lifespan=lifespan,
                  description="Hub backbones over HTTP: Open Inference Protocol (v2) and image embedding.")
    app.state.service = svc
    for r in (health.router, oip.router, images.router, admin.router):
        app.include_router(r)
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "invalid_parameters", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = str(exc.detail)
        if exc.status_code == 404:
            msg = f"no route {request.url.path}; see /docs for the API"
        return _error(exc.status_code, code, msg, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # never a traceback to the client; the log keeps it
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")

    return app
