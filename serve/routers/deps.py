"""Shared route dependencies: the service object and the API-key guard."""
from __future__ import annotations

from fastapi import Request

from ..limits import check_api_key
from ..service import Service


def service(request: Request) -> Service:
    return request.app.state.service


async def require_key(request: Request) -> None:
    """Inference and admin routes need the API key when one is configured."""
    # async on purpose: FastAPI runs sync dependencies in a worker thread, a thread hop on every request
    check_api_key(request, request.app.state.service.config.api_key)
