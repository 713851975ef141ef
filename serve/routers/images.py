"""Image routes: raw image bytes or multipart files -> embeddings (or stage maps), JSON or binary."""
from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .. import jsonio
from ..errors import BadRequest, InvalidTensor, UnsupportedMediaType
from ..images import IMAGE_TYPES, check_content_type, decode, to_input
from ..limits import check_count, read_body
from ..service import LoadedModel
from .deps import require_key, service

router = APIRouter(tags=["images"], dependencies=[Depends(require_key)])

_EMBED_BODY = {"requestBody": {"required": True, "content": {
    **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


async def _once(body: bytes):
    yield body


async def _files(request: Request, body: bytes, max_images: int) -> list[tuple[str, bytes]]:
    # one past the limit, so "too many images" gets our own message and limit
    parser = MultiPartParser(request.headers, _once(body), max_files=max_images + 1, max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in str(exc):
            check_count(max_images + 1, max_images)
        raise BadRequest(f"malformed multipart body: {exc}", code="malformed_multipart") from None
    files = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename or key, await value.read()))
            await value.close()
    if not files:
        raise BadRequest("the multipart body holds no files; upload images as file fields "
                         "(curl -F file=@cat.jpg)", code="no_images")
    return files


def _decode_all(files: list[tuple[str, bytes]], m: LoadedModel, max_pixels: int) -> np.ndarray:
    arrays = []
    for i, (label, data) in enumerate(files):
        im = decode(data, max_pixels=max_pixels, label=f"image {i + 1} ({label})" if len(files) > 1 else "the image")
        arrays.append(to_input(im, m.preprocess))
    return np.stack(arrays)


def _outputs(stages: str | None, m: LoadedModel) -> list[str]:
    if not stages:
        return ["pooled"]
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    valid = [o for o in m.backend.outputs if o != "pooled"]
    bad = [s for s in wanted if s not in valid]
    if bad or not wanted:
        raise InvalidTensor(f"unknown stage(s) {bad or stages!r}; {m.name} offers stages {valid}",
                            code="unknown_stage")
    return list(dict.fromkeys(wanted))


@router.post("/v1/models/{name}/embed", summary="Embed images (JPEG, PNG, WebP) with the model's own preprocessing",
             openapi_extra=_EMBED_BODY)
async def embed(name: str, request: Request,
                stages: str | None = Query(None, description="comma-separated stage names: return feature maps"),
                dtype: str = Query("float32", description="binary responses: float32 or float16")) -> Response:
    svc = service(request)
    m = svc.get(name)
    limits = svc.config.limits
    ctype = request.headers.get("content-type", "")
    multipart = ctype.lower().startswith("multipart/form-data")
    if not multipart:
        check_content_type(ctype)  # 415 before reading a body we cannot use
    if dtype not in ("float32", "float16"):
        raise BadRequest(f"dtype {dtype!r} is not supported; accepted: float32, float16", code="bad_dtype")
    outputs = _outputs(stages, m)
    body = await read_body(request, limits.max_body_bytes)
    files = await _files(request, body, limits.max_images) if multipart else [("image", body)]
    del body
    check_count(len(files), limits.max_images)
    t0 = time.perf_counter()
    x = await asyncio.get_running_loop().run_in_executor(svc.decode_pool, _decode_all, files, m, limits.max_pixels)
    svc.metrics.decode.labels(name, "image").observe(time.perf_counter() - t0)
    res = await m.batcher.submit(x, outputs, limits.request_timeout_s)
    if "application/octet-stream" in request.headers.get("accept", ""):
        arrays = [np.ascontiguousarray(res[o], dtype=dtype) for o in outputs]
        desc = ", ".join(f"{o} {'x'.join(map(str, a.shape))}" for o, a in zip(outputs, arrays))
        headers = {"X-Model": name, "X-Dtype": dtype, "X-Outputs": desc,
                   "X-Shape": ",".join(map(str, arrays[0].shape))}
        return Response(b"".join(a.tobytes() for a in arrays), media_type="application/octet-stream",
                        headers=headers)
    f32 = {o: np.ascontiguousarray(res[o], dtype=np.float32) for o in outputs}  # what orjson writes without copying
    if outputs == ["pooled"]:
        payload = {"model": name, "embeddings": f32["pooled"]}
    else:
        payload = {"model": name, "features": {o: {"shape": list(a.shape), "data": a} for o, a in f32.items()}}
    return Response(jsonio.dumps(payload), media_type="application/json")
