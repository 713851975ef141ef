"""Open Inference Protocol (KServe v2) model routes: metadata and infer (JSON and binary tensors)."""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..limits import read_body
from ..tensors import encode_response, header_length, parse_infer
from .deps import require_key, service

router = APIRouter(tags=["v2 (Open Inference Protocol)"], dependencies=[Depends(require_key)])

_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"}, "example": {"inputs": [
        {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": ["... 150528 numbers ..."]}],
        "outputs": [{"name": "pooled"}]}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "JSON header of Inference-Header-Content-Length bytes, then tensors"}}}}


# a binary request parses in O(its JSON header) plus one finiteness pass over the tensor; up to this size
# that pass (~1 ms) costs less than handing the request to a thread and back
_INLINE_BINARY_BYTES = 4 << 20
_INLINE_HEADER_BYTES = 16 << 10


def _cheap_to_parse(hlen: str | None, body_len: int) -> bool:
    """Binary-tensor requests with a small JSON header and a few MB of tensor data: parse on the event loop."""
    n = header_length(hlen, body_len)  # a malformed value is the same BadRequest parse_infer would raise
    return n is not None and n <= _INLINE_HEADER_BYTES and body_len <= _INLINE_BINARY_BYTES


@router.get("/v2/models/{name}", summary="Model metadata: input and named outputs")
async def model_metadata(name: str, request: Request) -> dict:
    m = service(request).get(name)
    return {"name": m.name, "versions": ["1"], "platform": f"convhub-{m.backend.kind}",
            "inputs": [{"name": m.spec.name, "datatype": "FP32", "shape": [-1, *m.spec.chw],
                        "parameters": {"accepted_datatypes": ["FP32", "FP16", "UINT8"],
                                       "max_batch": m.batcher.max_batch}}],
            "outputs": [{"name": k, "datatype": "FP32", "shape": v} for k, v in m.shapes.items()
                        if k in m.backend.outputs]}


@router.post("/v2/models/{name}/infer", summary="Run the model on a preprocessed NCHW tensor",
             openapi_extra=_INFER_BODY)
async def infer(name: str, request: Request) -> Response:
    svc = service(request)
    m = svc.get(name)
    limits = svc.config.limits
    body = await read_body(request, limits.max_body_bytes)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    hlen = request.headers.get("inference-header-content-length")
    args = (body, hlen, m.spec, limits.max_images)
    # large JSON tensors take tens of ms to parse: keep them off the event loop; binary tensors need only
    # a small JSON header and a view of the body, cheaper than the hop to a thread (~0.1 ms per image)
    if _cheap_to_parse(hlen, len(body)):
        req = parse_infer(*args)
    else:
        req = await loop.run_in_executor(svc.decode_pool, parse_infer, *args)
    del body
    svc.metrics.decode.labels(name, "tensor").observe(time.perf_counter() - t0)
    outs = await m.batcher.submit(req.x, req.outputs, limits.request_timeout_s)
    ordered = {k: outs[k] for k in req.outputs}
    if sum(v.size for k, v in ordered.items() if k not in req.binary) > 100_000:
        content, headers = await loop.run_in_executor(svc.decode_pool, encode_response, name, req.id, ordered,
                                                      req.binary)
    else:
        content, headers = encode_response(name, req.id, ordered, req.binary)
    return Response(content, headers=headers, media_type=headers.pop("content-type"))
