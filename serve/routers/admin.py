"""Admin routes: the loaded models and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from .deps import require_key, service

router = APIRouter(tags=["admin"], dependencies=[Depends(require_key)])


@router.get("/v1/models", summary="Loaded models: backend, target, input spec, outputs, why the backend")
async def list_models(request: Request) -> dict:
    svc = service(request)
    loading = [m.name for m in svc.config.models if m.name not in svc.models]
    return {"ready": svc.ready, "models": [m.describe() for m in svc.models.values()], "loading": loading}


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    data, ctype = service(request).metrics.render()
    return Response(data, media_type=ctype)
