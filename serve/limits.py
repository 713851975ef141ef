"""Request limits: body size (413), images per request, and the optional API key."""
from __future__ import annotations

import hmac

from starlette.requests import Request

from .errors import PayloadTooLarge, Unauthorized


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole request body, refusing (413) before reading past `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {int(declared)} bytes; the limit is {max_bytes} bytes "
                              "(limits.max_body_bytes): send fewer or smaller images per request")
    chunks, size = [], 0
    async for chunk in request.stream():  # also bounds chunked uploads that send no Content-Length
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes (limits.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def check_count(n: int, max_images: int, what: str = "images") -> None:
    """Refuse requests with more images (batch rows) than limits.max_images."""
    if n > max_images:
        raise PayloadTooLarge(f"too many {what} in one request: {n}; at most {max_images} are accepted "
                              "(limits.max_images): split the request", code="too_many_images")


def check_api_key(request: Request, api_key: str | None) -> None:
    """Accept `X-API-Key: KEY` or `Authorization: Bearer KEY` when a key is configured."""
    if not api_key:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    # constant-time compare so the key cannot be guessed byte by byte from timings
    if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
        raise Unauthorized("missing or wrong API key: send `X-API-Key: KEY` or `Authorization: Bearer KEY`",
                           headers={"WWW-Authenticate": "Bearer"})
