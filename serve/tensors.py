"""Open Inference Protocol (KServe v2) tensors: parse infer requests, encode responses.

Supports JSON `data` and the binary tensor data extension (`Inference-Header-Content-Length`,
`parameters.binary_data_size` on inputs, `binary_data` / `binary_data_output` for outputs).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from . import jsonio
from .errors import BadRequest, InvalidTensor
from .limits import check_count

DTYPES = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2"), "UINT8": np.dtype("u1")}
ACCEPTED_DTYPES = ", ".join(DTYPES)


@dataclass(frozen=True)
class InputSpec:
    """What a model accepts: tensor name, CHW shape, and the normalization applied to UINT8 pixels."""

    name: str
    chw: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    outputs: tuple[str, ...]
    default_output: str = "pooled"


@dataclass
class InferRequest:
    id: str | None
    x: np.ndarray  # float32 NCHW, normalized
    outputs: list[str]
    binary: set[str] = field(default_factory=set)


def _reject_constant(name: str):
    raise InvalidTensor(f"{name} is not a valid JSON number; NaN and Infinity are not accepted in inputs",
                        code="nan_or_inf")


def parse_json(raw: bytes, what: str = "request body") -> object:
    """Strict JSON: clear 400 for syntax errors and for NaN/Infinity tokens."""
    try:
        return jsonio.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not UTF-8 JSON", code="malformed_json") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON in {what}: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                         'expected {"inputs": [{"name", "shape", "datatype", "data"}]}', code="malformed_json") from None


def header_length(value: str | None, body_len: int) -> int | None:
    """The Inference-Header-Content-Length value as an int (None: a plain JSON request); BadRequest if malformed."""
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) > body_len:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer <= the body size ({body_len}), "
                         f"got {value!r}", code="malformed_binary")
    return int(value)


def parse_infer(body: bytes, header_value: str | None, spec: InputSpec, max_images: int) -> InferRequest:
    """Parse and validate a v2 infer request for a model with input `spec`."""
    hlen = header_length(header_value, len(body))
    # a memoryview: slicing the tensor bytes off the body must not copy them (600 KB per 224x224 image)
    view = memoryview(body)
    head, binary = (body, view[:0]) if hlen is None else (bytes(view[:hlen]), view[hlen:])
    req = parse_json(head, "the inference header" if hlen is not None else "request body")
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise BadRequest('the request must be a JSON object with an "inputs" list', code="malformed_request")
    inputs = req["inputs"]
    if len(inputs) != 1:
        raise BadRequest(f'expected exactly one input named "{spec.name}", got {len(inputs)}', code="malformed_request")
    x = _parse_input(inputs[0], binary, spec, max_images)
    outputs, bin_outputs = _parse_outputs(req, spec)
    rid = req.get("id")
    return InferRequest(id=str(rid) if rid is not None else None, x=x, outputs=outputs, binary=bin_outputs)


def _parse_input(inp: object, binary: memoryview, spec: InputSpec, max_images: int) -> np.ndarray:
    if not isinstance(inp, dict):
        raise BadRequest("each input must be an object with name, shape, datatype and data", code="malformed_request")
    if inp.get("name") != spec.name:
        raise InvalidTensor(f'unknown input {inp.get("name")!r}; this model has one input named "{spec.name}"',
                            code="wrong_input")
    dt_name = inp.get("datatype")
    if dt_name not in DTYPES:
        raise InvalidTensor(f"datatype {dt_name!r} is not supported; accepted: {ACCEPTED_DTYPES}", code="wrong_datatype")
    shape = inp.get("shape")
    expected = f"[N, {', '.join(map(str, spec.chw))}]"
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise InvalidTensor(f"shape {shape!r} does not match the model: expected {expected} with N >= 1",
                            code="wrong_shape")
    if tuple(shape[1:]) != spec.chw:
        raise InvalidTensor(f"shape {shape} does not match the model: expected {expected} (preprocessed NCHW; "
                            "use /v1/models/{name}/embed for raw images)", code="wrong_shape")
    check_count(shape[0], max_images, "batch rows")
    count = math.prod(shape)  # np.prod on a list costs ~8 us per request on the event loop
    dtype = DTYPES[dt_name]
    params = inp.get("parameters") or {}
    if "binary_data_size" in params:
        arr = _from_binary(params["binary_data_size"], binary, dtype, count, shape)
    else:
        if binary:
            raise BadRequest("binary data was sent but the input has no parameters.binary_data_size",
                             code="malformed_binary")
        arr = _from_json(inp.get("data"), dtype, count, shape)
    return _to_model_input(arr.reshape(shape), dt_name, spec)


def _from_binary(size: object, binary: memoryview, dtype: np.dtype, count: int, shape: list[int]) -> np.ndarray:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"binary_data_size must be a non-negative integer, got {size!r}", code="malformed_binary")
    if size != len(binary):
        raise InvalidTensor(f"binary_data_size is {size} but {len(binary)} bytes follow the inference header",
                            code="data_length")
    if size != count * dtype.itemsize:
        raise InvalidTensor(f"binary data is {size} bytes; shape {shape} of {dtype.name} needs "
                            f"{count * dtype.itemsize} bytes ({count} elements)", code="data_length")
    return np.frombuffer(binary, dtype=dtype)


def _from_json(data: object, dtype: np.dtype, count: int, shape: list[int]) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidTensor('"data" must be a list of numbers (flat, row-major, or nested)', code="malformed_request")
    try:
        arr = np.asarray(data)
    except ValueError:
        raise InvalidTensor('"data" is a ragged nested list; send a flat list in row-major order',
                            code="data_length") from None
    if arr.size and arr.dtype.kind not in "iuf":
        raise InvalidTensor(f'"data" must hold only numbers, found {arr.dtype.kind!r}-kind values '
                            "(strings, booleans or nulls)", code="wrong_datatype")
    if arr.size != count:
        raise InvalidTensor(f'"data" has {arr.size} elements; shape {shape} needs {count}', code="data_length")
    if dtype.kind == "u":
        if arr.dtype.kind == "f" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise InvalidTensor("UINT8 data must be integers from 0 to 255", code="wrong_datatype")
    with np.errstate(over="ignore"):  # FP16 overflow becomes inf, reported below
        return arr.astype(dtype)


def _to_model_input(arr: np.ndarray, dt_name: str, spec: InputSpec) -> np.ndarray:
    if dt_name == "UINT8":
        # UINT8 inputs are unnormalized RGB pixels: apply the model's own scale and mean/std, as one
        # multiply-add per pixel ((p / 255 - mean) / std = p * scale + offset)
        std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
        scale = 1.0 / (255.0 * std)
        offset = -np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1) / std
        x = arr.astype(np.float32)
        x *= scale
        x += offset
        return x
    x = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(x.size - np.isfinite(x).sum())
        raise InvalidTensor(f"input holds {bad} NaN/Inf values (after conversion from {dt_name}); "
                            "only finite numbers are accepted", code="nan_or_inf")
    return x


def _parse_outputs(req: dict, spec: InputSpec) -> tuple[list[str], set[str]]:
    all_binary = bool((req.get("parameters") or {}).get("binary_data_output", False))
    wanted = req.get("outputs")
    if wanted is None:
        names = [spec.default_output]
        return names, set(names) if all_binary else set()
    if not isinstance(wanted, list) or not wanted:
        raise BadRequest('"outputs" must be a non-empty list of {"name": ...}', code="malformed_request")
    names, binary = [], set()
    for o in wanted:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in spec.outputs:
            raise InvalidTensor(f"unknown output {name!r}; this model's outputs are {list(spec.outputs)}",
                                code="unknown_output")
        names.append(name)
        if all_binary or (o.get("parameters") or {}).get("binary_data", False):
            binary.add(name)
    return list(dict.fromkeys(names)), binary


def encode_response(model: str, rid: str | None, outputs: dict[str, np.ndarray], binary: set[str]
                    ) -> tuple[bytes, dict[str, str]]:
    """A v2 infer response; binary outputs follow the JSON header (returns body, extra headers)."""
    out_meta, blobs = [], []
    for name, arr in outputs.items():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        meta = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
        if name in binary:
            blob = arr.tobytes()
            meta["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            meta["data"] = arr.ravel()
        out_meta.append(meta)
    resp = {"model_name": model, "model_version": "1", "outputs": out_meta}
    if rid is not None:
        resp["id"] = rid
    head = jsonio.dumps(resp)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(len(head))}
