"""Health and server metadata (KServe v2); always open, never behind the API key."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .deps import service

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="Liveness: the process answers")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready", summary="Readiness: all models loaded, verified and warmed")
async def ready(request: Request) -> JSONResponse:
    svc = service(request)
    body = {"ready": svc.ready}
    if svc.failed:
        body["error"] = svc.failed
    return JSONResponse(body, status_code=200 if svc.ready else 503)


@router.get("/v2/models/{name}/ready", summary="Readiness of one model")
async def model_ready(name: str, request: Request) -> JSONResponse:
    m = service(request).get(name)  # 404 unknown, 503 loading
    return JSONResponse({"name": m.name, "ready": True})


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> dict:
    from hub import __version__

    return {"name": "convhub", "version": __version__, "extensions": ["binary_tensor_data"]}
